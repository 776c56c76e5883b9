"""A corpus of broken model inputs, made here, through every entry point that takes a model: ``pass-hub convert``,
``embed``, ``eval``, ``export-onnx``, ``search``, ``load_reid_model`` and the training scripts' ``--init`` readers.
Each case must end with one line naming the input (exit status 2 from the CLI, ``pass_hub.CheckpointError`` or
``FileNotFoundError`` from Python), no traceback, and nothing written."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from script_runs import ROOT, run_script

import pass_hub
from pass_hub import cli
from training.engine.reid_start import load_finetuning_start, load_usl_start
from training.pretraining.checkpoints import load_pretraining_start


def _cut(source: Path, target: Path, size: int) -> Path:
    target.write_bytes(source.read_bytes()[:size])
    return target


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("broken")
    good = pass_hub.save_hub_folder(
        pass_hub.PassViTModel(pass_hub.PassViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=1,
                                                     image_size=(64, 32))), root / "good")
    weights = good / "model.safetensors"
    pickled = root / "good.pth"
    torch.save(pass_hub.PassViTModel.from_pretrained(good).state_dict(), pickled)
    cases = {"missing file": root / "missing.pth"}
    (cases.setdefault("empty .pth", root / "empty.pth")).write_bytes(b"")
    (cases.setdefault("empty .safetensors", root / "empty.safetensors")).write_bytes(b"")
    for size in (7, 100, 5000):
        cases[f".safetensors cut at {size} bytes"] = _cut(weights, root / f"cut{size}.safetensors", size)
    for size in (100, 5000):
        cases[f".pth cut at {size} bytes"] = _cut(pickled, root / f"cut{size}.pth", size)
    cases[".pth cut at half"] = _cut(pickled, root / "cut_half.pth", pickled.stat().st_size // 2)
    (cases.setdefault("text named .pth", root / "notes.pth")).write_text("not a checkpoint\n")
    (cases.setdefault("random bytes .safetensors", root / "noise.safetensors")).write_bytes(bytes(range(256)) * 4)
    (cases.setdefault("unknown format", root / "model.h5")).write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    (cases.setdefault("empty folder", root / "empty_folder")).mkdir()
    cases["JSON file for a folder"] = good / "config.json"
    bad_json = cases.setdefault("config.json not JSON", root / "bad_json")
    shutil.copytree(good, bad_json)
    (bad_json / "config.json").write_text("{not json")
    no_weights = cases.setdefault("config without weights", root / "no_weights")
    no_weights.mkdir()
    shutil.copy(good / "config.json", no_weights / "config.json")
    misfit = cases.setdefault("weights not fitting the config", root / "misfit")
    shutil.copytree(good, misfit)
    config = json.loads((misfit / "config.json").read_text())
    config["hidden_size"] = 64
    (misfit / "config.json").write_text(json.dumps(config))
    image = root / "person.png"
    Image.new("RGB", (32, 64), (120, 80, 40)).save(image)
    return {**cases, "_image": image, "_root": root}


CASES = ["missing file", "empty .pth", "empty .safetensors", ".safetensors cut at 7 bytes",
         ".safetensors cut at 100 bytes", ".safetensors cut at 5000 bytes", ".pth cut at 100 bytes",
         ".pth cut at 5000 bytes", ".pth cut at half", "text named .pth", "random bytes .safetensors",
         "unknown format", "empty folder", "JSON file for a folder", "config.json not JSON",
         "config without weights", "weights not fitting the config"]


COMMANDS = {
    "convert": lambda model, out, image: ["convert", str(model), str(out / "converted")],
    "embed": lambda model, out, image: ["embed", str(model), str(image), "--out", str(out / "e.npy")],
    "eval": lambda model, out, image: ["eval", "--model", str(model), "--output", str(out / "r.json")],
    "export-onnx": lambda model, out, image: ["export-onnx", str(model), str(out / "m.onnx")],
    "search": lambda model, out, image: ["search", str(model), "--gallery", str(image), "--query", str(image),
                                         "--index", str(out / "index")],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("case", CASES)
def test_the_cli_says_what_is_wrong_in_one_line_and_writes_nothing(corpus, case, command, capsys, tmp_path):
    model = corpus[case]
    out = tmp_path / "outputs"
    out.mkdir()
    assert cli.main(COMMANDS[command](model, out, corpus["_image"])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(model) in err and "Traceback" not in err, err
    assert not any(out.iterdir()), sorted(out.iterdir())


@pytest.mark.parametrize("case", CASES)
def test_python_loaders_raise_a_checkpoint_error_naming_the_input(corpus, case):
    model = corpus[case]
    expected = FileNotFoundError if case == "missing file" else pass_hub.CheckpointError
    for load in (pass_hub.load_reid_model, load_finetuning_start, load_usl_start, load_pretraining_start):
        with pytest.raises(expected) as raised:
            load(str(model))
        assert str(model) in str(raised.value) and "\n" not in str(raised.value), (load.__name__, raised.value)


@pytest.mark.parametrize(("script", "argv", "message"), [
    ("finetune", ["--global_batch_size", "0"], "--global_batch_size must be >= 1, got 0"),
    ("finetune", ["--global_batch_size", "-4"], "--global_batch_size must be >= 1, got -4"),
    ("usl", ["--global_batch_size", "0", "--init", "pass_vit_tiny"], "--global_batch_size must be >= 1, got 0"),
    ("pretrain", ["--epochs", "0"], "--epochs must be >= 1, got 0"),
    ("finetune", ["--lr", "0"], "--lr must be > 0"),
    ("finetune", ["--max_steps", "0"], "--max_steps: must be >= 1, got 0"),
    ("usl", ["--gradient_accumulation_steps", "-1"], "--gradient_accumulation_steps: must be >= 1, got -1"),
    ("pretrain", ["--num_workers", "-2"], "--num_workers: must be >= 0, got -2"),
    ("finetune", ["--eval_batch_size", "0"], "--eval_batch_size: must be >= 1, got 0"),
])
def test_numeric_flags_are_checked_where_they_are_parsed(script, argv, message, capsys):
    module = importlib.import_module(f"training.{script}")
    with pytest.raises(SystemExit) as exited:
        module.parse_args(argv)
    assert exited.value.code == 2 or message in str(exited.value)
    assert message in capsys.readouterr().err + str(exited.value)


@pytest.mark.parametrize("argv", [["eval", "--model", "m", "--batch-size", "0"],
                                  ["embed", "m", "--out", "x.npy", "--batch-size", "-1"],
                                  ["search", "m", "--gallery", "g", "--query", "q", "--top-k", "0"],
                                  ["convert", "a", "b", "--num-heads", "0"]])
def test_pass_hub_numeric_flags_are_checked_where_they_are_parsed(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2 and "must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["pretrain", "finetune", "usl"])
def test_scripts_refuse_a_broken_init_in_one_line_and_write_nothing(corpus, script, tmp_path):
    broken = corpus[".safetensors cut at 100 bytes"]
    result = run_script(ROOT / "training" / f"{script}.py", ["--init", str(broken), "--output_dir",
                                                             str(tmp_path / "out"), "--report_to", "none"],
                        check=False)
    lines = [line for line in result.stderr.splitlines() if str(broken) in line]
    assert result.returncode != 0 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "not a readable .safetensors file" in lines[0] and not (tmp_path / "out").exists()


def test_a_text_file_is_not_called_a_dangerous_pickle(corpus):
    with pytest.raises(pass_hub.CheckpointError, match="not a PyTorch checkpoint") as raised:
        pass_hub.load_checkpoint_file(corpus["text named .pth"])
    assert "arbitrary code" not in str(raised.value)
