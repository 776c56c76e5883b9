"""training/finetune.py end to end at toy size: outputs and card, init and resampling, errors, 2 processes,
gradient accumulation, push."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from unittest import mock

import pytest
import timm
import torch
from huggingface_hub import ModelCard
from script_runs import ROOT, assert_same_weights, kill_then_resume, run_script, two_processes
from transformers import AutoImageProcessor, AutoModel

import pass_hub
from pass_hub.data import load_dataset_spec, relabel_pids
from training import push
from training.engine.recipes import RECIPES
from training.engine.reid_start import load_finetuning_start
from training.engine.samplers import PKBatchSampler

SCRIPT = ROOT / "training" / "finetune.py"
TOY_DATA = "synthetic:train_ids=6,test_ids=4,distractors=3,unlabelled=0,image_size=64x32"
TOY = ["--dataset", TOY_DATA, "--image_size", "64", "32", "--global_batch_size", "8", "--num_instances", "2",
       "--num_workers", "0", "--report_to", "none", "--eval_batch_size", "16"]


def _run(args: list[str], launcher: list[str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return run_script(SCRIPT, [*TOY, *args], launcher, check)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finetune") / "run"
    _run(["--output_dir", str(out), "--epochs", "2", "--eval_every", "1", "--save_every_steps", "2"])
    return out


def test_run_outputs_results_and_a_loadable_folder(toy_run):
    results = json.loads((toy_run / "results.json").read_text())
    assert results["train_identities"] == 6 and results["steps"] > 0
    published = results["published"]
    assert published["selection"] == "final" and published["metrics"] == results["final"]  # not the best by test
    assert published["evaluations"] == 2 and published["step"] == results["steps"]
    assert results["recipe"] == "cpu_demo" and set(results["overridden"]) == {"image_size", "global_batch_size",
                                                                              "num_instances", "epochs", "eval_every"}
    history = [json.loads(line) for line in (toy_run / "metrics.jsonl").read_text().splitlines()]
    assert any("mAP" in entry for entry in history)  # the mid-run evaluation is logged
    assert history[0]["lr"] == pytest.approx(1e-3)  # cpu_demo has no warm-up: epoch 0 trains at the full rate
    folder = toy_run / "pass-vit-reid"
    reid = pass_hub.PassViTForReID.from_pretrained(folder).eval()
    assert reid.config.num_labels == 6 and reid.config.image_size == (64, 32)
    assert list(AutoImageProcessor.from_pretrained(folder).image_mean) == [0.5, 0.5, 0.5]
    pixels = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        before = reid(pixels).features_before_neck
        assert torch.allclose(AutoModel.from_pretrained(folder).eval()(pixels).pooler_output, before, atol=1e-5)
        timm_model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        assert torch.allclose(timm_model(pixels), before, atol=1e-5)
    assert (folder / "rank_list.png").stat().st_size > 1000


def test_model_card_is_valid_and_reports_the_results(toy_run):
    folder = toy_run / "pass-vit-reid"
    card = push.check_hub_folder(folder)
    assert card.data.pipeline_tag == "image-feature-extraction" and card.data.library_name == "transformers"
    metrics = {r.metric_type: r.metric_value for r in card.data.eval_results}
    published = json.loads((toy_run / "results.json").read_text())["published"]["metrics"]
    assert set(metrics) == {"mAP", "rank1", "rank5", "mINP"}
    assert metrics["mAP"] == pytest.approx(round(100 * published["mAP"], 2))
    text = ModelCard.load(folder / "README.md").text
    assert "recipe `cpu_demo` (none: sized for minutes on a CPU) with 5 setting(s) overridden: image_size 128x64 -> " \
           "64x32" in text
    assert "The published weights are the final ones" in text and "final weights" in text
    assert "import pass_hub" in text and "timm.create_model" in text and "AutoModel" in text
    assert "![rank lists](rank_list.png)" in text and "| model | mAP |" in text and "Limitations" in text
    # The deployment thresholds measured on the final weights, in the card and in results.json.
    calibration = json.loads((toy_run / "results.json").read_text())["calibration"]
    assert calibration["feature"] == "after_neck" and len(calibration["points"]) == 3
    assert "## Deployment" in text and "after-neck feature" in text and "| FPR | TPR | threshold (cosine) |" in text
    assert f"| {calibration['points'][0]['threshold']:.4f} |" in text
    assert (folder / "calibration.png").stat().st_size > 1000


def test_init_from_a_pretrained_folder_resamples_positions(tmp_path):
    config = pass_hub.PassViTConfig.from_preset("tiny", image_size=(64, 32))
    backbone = pass_hub.PassViTModel(config)
    pass_hub.save_hub_folder(backbone, tmp_path / "pre")
    start = load_finetuning_start(str(tmp_path / "pre"))
    settings = dataclasses.replace(RECIPES["finetune"]["cpu_demo"].settings, image_size=(96, 32))
    model = start.model(settings, num_labels=3)
    assert start.base_model is None and not start.fine_tuned and model.config.image_size == (96, 32)
    assert start.kept(settings, 3).endswith("backbone kept, new necks and classifier; its position table "
                                            "resampled from 4x2 to 6x2 patches")
    assert torch.equal(model.pass_vit.vit.blocks[3].mlp.fc1.weight, backbone.vit.blocks[3].mlp.fc1.weight)
    assert model.pass_vit.vit.pos_embed.shape[1] == 4 + 6 * 2
    assert torch.equal(model.pass_vit.vit.pos_embed[:, :4], backbone.vit.pos_embed[:, :4])  # CLS + PARTs kept


def test_bad_inputs_give_clear_messages(tmp_path):
    one_identity = "synthetic:train_ids=1,test_ids=2,distractors=0,unlabelled=0,image_size=64x32"
    result = _run(["--output_dir", str(tmp_path / "a"), "--dataset", one_identity], check=False)
    assert result.returncode != 0 and "has 1 identity; need >= 2" in result.stderr
    result = _run(["--output_dir", str(tmp_path / "b"), "--global_batch_size", "64", "--num_instances", "4"],
                  check=False)
    assert result.returncode != 0 and "a P x K batch needs 16 identities; the data has 6" in result.stderr
    result = _run(["--output_dir", str(tmp_path / "c"), "--image_size", "100", "32"], check=False)
    assert result.returncode != 0 and "multiples of 16" in result.stderr
    result = _run(["--output_dir", str(tmp_path / "d"), "--init", str(tmp_path / "missing")], check=False)
    assert result.returncode != 0 and "--init" in result.stderr and "Traceback" not in result.stderr


def test_k_larger_than_any_identity_is_resampled(tmp_path):
    result = _run(["--output_dir", str(tmp_path / "k"), "--num_instances", "8", "--global_batch_size", "16",
                   "--max_steps", "1"])
    assert json.loads((tmp_path / "k" / "results.json").read_text())["steps"] == 1, result.stdout


def test_sigkill_then_resume_gives_the_same_model(tmp_path):
    # AdamW, so the optimiser's moments must come back too; the kill at step 3 falls between two evaluations.
    common = ["--epochs", "2", "--eval_every", "1", "--save_every_steps", "3", "--optimizer", "adamw", "--lr", "1e-3"]
    _run(["--output_dir", str(tmp_path / "straight"), *common])
    killed = tmp_path / "killed"
    kill_then_resume(SCRIPT, [*TOY, *common], killed, step=3)

    assert_same_weights(tmp_path / "straight" / "pass-vit-reid" / "model.safetensors",
                        killed / "pass-vit-reid" / "model.safetensors")
    results = [json.loads((run / "results.json").read_text()) for run in (tmp_path / "straight", killed)]
    assert results[0]["published"] == results[1]["published"]
    logged = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert all("images_per_second" in entry for entry in logged)  # the steps before the kill kept their speed
    assert "AdamW, lr 0.001, weight decay 0.05" in (killed / "pass-vit-reid" / "README.md").read_text()


def test_two_processes(tmp_path):
    _run(["--output_dir", str(tmp_path / "two"), "--max_steps", "2", "--global_batch_size", "16"],
         launcher=two_processes(29518))
    results = json.loads((tmp_path / "two" / "results.json").read_text())
    assert results["num_processes"] == 2 and results["global_batch"] == 16 and results["replicas_in_sync"]
    assert results["final"]["num_valid_queries"] == 4 * 2  # every query counted once despite the sharding


def test_gradient_accumulation_takes_one_optimiser_step_per_two_batches(tmp_path):
    out = tmp_path / "accumulated"
    _run(["--output_dir", str(out), "--epochs", "1", "--gradient_accumulation_steps", "2"])
    results = json.loads((out / "results.json").read_text())
    # The global batch of 8 is two micro-batches of 2 identities x 2 images; the epoch ends with the sampler's.
    train = relabel_pids(load_dataset_spec(TOY_DATA)["train"])[0]
    micro_batches = PKBatchSampler(train["label"], 2, 2, seed=0).epoch_length(0)
    assert results["global_batch"] == 8 and results["steps"] == -(-micro_batches // 2) >= 2


def test_push_uploads_a_checked_folder(toy_run, tmp_path):
    folder = toy_run / "pass-vit-reid"
    with mock.patch.object(push, "HfApi") as api:
        api.return_value.upload_folder.return_value = mock.Mock(commit_url="https://hub/commit/1")
        assert push.main([str(folder), "someone/pass-vit-test", "--private"]) == 0
    api.return_value.create_repo.assert_called_once_with(
        "someone/pass-vit-test", repo_type="model", private=True, exist_ok=True
    )
    assert api.return_value.upload_folder.call_args.kwargs["folder_path"] == str(folder)
    (tmp_path / "empty").mkdir()
    assert push.main([str(tmp_path / "empty"), "someone/x"]) == 2


@pytest.mark.parametrize("script", ["finetune", "usl"])
def test_init_at_another_size_trains_and_publishes_at_the_runs_size(tmp_path, script):
    # A backbone laid out for 64x32 (4x2 patches) starts a run at 96x32 (6x2): resampled once where it is loaded.
    pass_hub.save_hub_folder(pass_hub.PassViTModel(pass_hub.PassViTConfig.from_preset("tiny", image_size=(64, 32))),
                             tmp_path / "pre")
    out = tmp_path / "run"
    options = ["--k1", "6", "--k2", "2", "--min_samples", "2", "--iters_per_epoch", "1"] if script == "usl" else []
    result = run_script(ROOT / "training" / f"{script}.py",
                        [*TOY, "--image_size", "96", "32", "--init", str(tmp_path / "pre"), "--max_steps", "1",
                         "--output_dir", str(out), *options])
    assert "its position table resampled from 4x2 to 6x2 patches" in result.stdout
    model = pass_hub.PassViTForReID.from_pretrained(out / "pass-vit-reid").eval()
    assert model.config.image_size == (96, 32) and model.pass_vit.vit.pos_embed.shape[1] == 4 + 6 * 2
    with torch.no_grad():
        assert model(torch.randn(2, 3, 96, 32)).embeddings.shape == (2, 2 * model.config.hidden_size)
