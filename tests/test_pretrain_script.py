"""training/pretrain.py end to end at toy size: outputs, SIGKILL + resume bit-identity, two processes (gloo),
gradient accumulation."""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from script_runs import (
    ROOT,
    assert_same_weights,
    kill_then_resume,
    run_script,
    signal_after_checkpoint,
    two_processes,
)
from transformers import AutoModel

import pass_hub  # noqa: F401  (registers the Auto classes used below)

SCRIPT = ROOT / "training" / "pretrain.py"
TOY = [
    "--data", "synthetic:train_ids=2,test_ids=1,unlabelled=48,distractors=0,image_size=64x32",
    "--image_size", "64", "32", "--local_image_size", "32", "16",
    "--out_dim", "64", "--head_hidden_dim", "32", "--head_bottleneck_dim", "16",
    "--num_workers", "0", "--report_to", "none", "--epochs", "3",
]


def _run(args: list[str], launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    return run_script(SCRIPT, [*TOY, *args], launcher)


def _history(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(expected: Path, actual: Path) -> None:
    """Two runs of the same global batch logged the same losses and exported the same teacher, to tolerance."""
    assert [e["loss"] for e in _history(expected)] == pytest.approx([e["loss"] for e in _history(actual)], abs=2e-4)
    first, second = (load_file(run / "pass-vit-pretrained" / "model.safetensors") for run in (expected, actual))
    assert max((first[k] - second[k]).abs().max().item() for k in first) < 1e-4


def test_outputs_of_a_run(tmp_path):
    out = tmp_path / "run"
    _run(["--output_dir", str(out), "--global_batch_size", "8", "--max_steps", "4", "--save_every_steps", "2"])
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 4 and results["replicas_in_sync"] and results["images"] == 48
    assert set(results["frozen_eval"]) == {"PASS pre-trained (frozen)", "random init (frozen)"}
    history = _history(out)
    assert [entry["step"] for entry in history] == [1, 2, 3, 4]
    assert history[0]["lr"] == 0.0 and history[1]["lr"] > 0  # linear warm-up from zero
    for entropy in ("teacher_entropy", "teacher_batch_entropy"):  # the collapse monitor, in [0, ln out_dim]
        assert 0 <= history[-1][entropy] <= math.log(64) + 1e-6
    assert (out / "loss_curves.png").stat().st_size > 1000
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]
    folder = out / "pass-vit-pretrained"
    model = AutoModel.from_pretrained(folder)
    assert model.config.image_size == (64, 32) and model.config.image_mean == (0.485, 0.456, 0.406)
    card = (folder / "README.md").read_text()
    assert "4 steps" in card and "synthetic" in card and "Frozen-feature ReID" in card and "EMA center" in card
    with pytest.raises(AssertionError, match="already holds checkpoints"):
        _run(["--output_dir", str(out), "--global_batch_size", "8", "--max_steps", "4"])


def test_sigkill_then_resume_gives_the_same_weights(tmp_path):
    common = ["--global_batch_size", "4", "--max_steps", "8", "--save_every_steps", "2"]
    _run(["--output_dir", str(tmp_path / "straight"), *common])

    killed = tmp_path / "killed"
    kill_then_resume(SCRIPT, [*TOY, *common], killed, step=2)  # 12 batches per epoch: mid-epoch too
    assert_same_weights(tmp_path / "straight" / "pass-vit-pretrained" / "model.safetensors",
                        killed / "pass-vit-pretrained" / "model.safetensors")
    assert [e["loss"] for e in _history(killed)] == [e["loss"] for e in _history(tmp_path / "straight")]


def test_ctrl_c_ends_with_one_line_saying_how_to_continue(tmp_path):
    out = tmp_path / "run"
    interrupted = signal_after_checkpoint(SCRIPT, [*TOY, "--global_batch_size", "4", "--save_every_steps", "1"],
                                          out, step=2, signum=signal.SIGINT)
    last_line = interrupted.stderr.strip().splitlines()[-1]
    assert interrupted.returncode == 130 and "Traceback" not in interrupted.stderr
    assert re.fullmatch(rf"interrupted at step \d+; the last checkpoint is {re.escape(str(out))}/checkpoints/"
                        r"step_\d{8}; continue with --resume", last_line), last_line
    refused = run_script(SCRIPT, [*TOY, "--output_dir", str(out), "--global_batch_size", "4"], check=False)
    assert refused.returncode != 0 and refused.stderr.strip().count("\n") == 0
    assert "already holds checkpoints; pass --resume to continue that run" in refused.stderr


def test_a_partial_checkpoint_is_ignored_on_resume(tmp_path):
    out = tmp_path / "run"
    _run(["--output_dir", str(out), "--global_batch_size", "8", "--max_steps", "2", "--save_every_steps", "1"])
    checkpoints = out / "checkpoints"
    shutil.copytree(checkpoints / "step_00000002", checkpoints / ".step_00000003.partial")
    result = _run(["--output_dir", str(out), "--global_batch_size", "8", "--max_steps", "3", "--resume"])
    assert "resumed from" in result.stdout and "step_00000002" in result.stdout
    assert json.loads((out / "results.json").read_text())["steps"] == 3


@pytest.mark.parametrize("centering", ["ema", "sinkhorn_knopp"])
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, centering):
    common = ["--max_steps", "3", "--drop_path_rate", "0", "--save_every_steps", "100", "--centering", centering]
    _run(["--output_dir", str(tmp_path / "one"), "--global_batch_size", "8", *common])
    _run(["--output_dir", str(tmp_path / "two"), "--global_batch_size", "8", *common], launcher=two_processes(29517))
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["num_processes"] == 2 and two["global_batch"] == 8 and two["replicas_in_sync"]
    _assert_same_run(tmp_path / "one", tmp_path / "two")


def test_gradient_accumulation_matches_the_whole_batch(tmp_path):
    # EMA centers: they must move once per optimiser step, on every micro-batch's teacher outputs.
    common = ["--max_steps", "3", "--drop_path_rate", "0", "--save_every_steps", "100"]
    _run(["--output_dir", str(tmp_path / "whole"), "--global_batch_size", "8", *common])
    _run(["--output_dir", str(tmp_path / "accumulated"), "--global_batch_size", "8", "--gradient_accumulation_steps",
          "2", *common])
    accumulated = json.loads((tmp_path / "accumulated" / "results.json").read_text())
    assert accumulated["global_batch"] == 8 and accumulated["steps"] == 3
    _assert_same_run(tmp_path / "whole", tmp_path / "accumulated")


def test_bf16_autocast_on_the_cpu_and_fp16_falls_back_to_fp32_with_a_message(tmp_path):
    common = ["--global_batch_size", "8", "--max_steps", "2", "--skip_frozen_eval"]
    losses, stdout = {}, {}
    for precision in ("no", "bf16", "fp16"):
        out = tmp_path / precision
        stdout[precision] = _run(["--output_dir", str(out), "--mixed_precision", precision, *common]).stdout
        losses[precision] = [e["loss"] for e in _history(out)]
        assert load_file(out / "pass-vit-pretrained" / "model.safetensors")["vit.cls_token"].dtype == torch.float32
    assert losses["bf16"] != losses["no"]  # autocast really ran (bf16 keeps 8 mantissa bits) ...
    assert losses["bf16"] == pytest.approx(losses["no"], rel=0.02)  # ... and changed little
    assert losses["fp16"] == losses["no"] and "runs in fp32 on a CPU" in stdout["fp16"]
