"""training/usl.py end to end at toy size: USL outputs and card, UDA from a fine-tuned folder, exact resume,
clear errors, and two processes keeping the cluster memory and the weights identical."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from script_runs import ROOT, run_script, two_processes

import pass_hub
from pass_hub.models.model_card import reid_card_data, render_model_card
from training import push, usl
from training.engine.reid_start import load_finetuning_start

SCRIPT = ROOT / "training" / "usl.py"
TOY_DATA = "synthetic:train_ids=8,test_ids=4,distractors=3,unlabelled=0,image_size=64x32"
# Tiny k1 / min_samples: 108 training images of 8 identities still give a dozen clusters.
TOY = ["--dataset", TOY_DATA, "--image_size", "64", "32", "--global_batch_size", "8", "--num_instances", "2",
       "--num_workers", "0", "--report_to", "none", "--eval_batch_size", "16", "--k1", "6", "--k2", "2",
       "--min_samples", "2", "--iters_per_epoch", "2", "--drop_path_rate", "0"]


def _run(args: list[str], launcher: list[str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return run_script(SCRIPT, [*TOY, *args], launcher, check)


def _history(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("usl") / "run"
    _run(["--output_dir", str(out), "--epochs", "2", "--eval_every", "1"])
    return out


# The published model has no identity classifier: a (0, 2D) weight, whose initialisation torch calls a no-op.
def test_usl_run_publishes_a_folder_with_results_and_card(toy_run):
    results = json.loads((toy_run / "results.json").read_text())
    assert results["setting"] == "USL" and results["source_dataset"] is None and results["steps"] == 4
    assert [entry["epoch"] for entry in results["clustering"]] == [0, 1]
    assert all(entry["clusters"] >= 4 and 0 <= entry["outlier_fraction"] < 1 for entry in results["clustering"])
    assert results["published"]["selection"] == "final" and results["published"]["metrics"] == results["final"]
    history = _history(toy_run)
    assert [entry["step"] for entry in history] == [1, 2, 3, 4] and "mAP" in history[1]
    assert "clusters" in history[0] and "clusters" in history[2]  # logged when each epoch's clustering is made
    folder = toy_run / "pass-vit-reid"
    reid_model = pass_hub.PassViTForReID.from_pretrained(folder).eval()
    assert reid_model.config.num_labels == 0 and reid_model.config.reid_feature == "after_neck"
    pixels = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        out = reid_model(pixels)
        timm_model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        assert torch.allclose(timm_model(pixels), out.features_before_neck, atol=1e-5)
        embedder = pass_hub.load_reid_model(str(folder))  # the evaluated feature: after the necks
        assert torch.allclose(embedder(pixels), out.embeddings, atol=1e-5)
    card = push.check_hub_folder(folder)
    assert {"unsupervised", "cluster-contrast"} <= set(card.data.tags)
    text = ModelCard.load(folder / "README.md").text
    assert "(unsupervised learning, USL)" in text and TOY_DATA in text and "DBSCAN (eps 0.6" in text
    assert (folder / "rank_list.png").stat().st_size > 1000
    assert "## Deployment" in text and (folder / "calibration.png").stat().st_size > 1000


def _reid_folder(path: Path) -> Path:
    """A PassViTForReID folder whose card names its (labelled) training data, as finetune.py writes it."""
    config = pass_hub.PassViTConfig.from_preset("tiny", image_size=(64, 32), num_labels=5)
    card = render_model_card(
        config, kind="reid", summary="A fine-tuned model.",
        card_data=reid_card_data(model_name="source", dataset_name="market1501", dataset_id="market1501",
                                 results={}),
    )
    return pass_hub.save_hub_folder(pass_hub.PassViTForReID(config), path, model_card=card)


def test_uda_from_a_fine_tuned_folder(tmp_path):
    source = _reid_folder(tmp_path / "source")
    start = load_finetuning_start(str(source))
    assert start.fine_tuned and start.base_model is None
    expected = pass_hub.PassViTForReID.from_pretrained(source).pass_vit.vit.state_dict()
    assert all(torch.equal(start.backbone[name], tensor) for name, tensor in expected.items())
    assert not load_finetuning_start("pass_vit_tiny").fine_tuned

    out = tmp_path / "uda"
    _run(["--output_dir", str(out), "--init", str(source), "--max_steps", "1", "--camera_centering",
          "--dataset", TOY_DATA.replace("synthetic:", "synthetic:domain=1,")])
    results = json.loads((out / "results.json").read_text())
    assert results["setting"] == "UDA" and results["source_dataset"] == "market1501"
    text = ModelCard.load(out / "pass-vit-reid" / "README.md").text
    assert "(unsupervised domain adaptation, UDA) from the labelled source dataset `market1501`" in text
    assert "UDA: source `market1501` (labelled) -> target `synthetic:domain=1," in text
    assert "after neck feature (per_token BatchNorm neck(s), cat fusion), minus the mean feature of its camera" in text


def test_resume_mid_epoch_gives_the_same_weights(tmp_path):
    common = ["--epochs", "2", "--save_every_steps", "1"]
    _run(["--output_dir", str(tmp_path / "straight"), *common])
    # Stop after 3 steps (mid-epoch: 2 steps per epoch), then resume: the checkpoint carries the clusters.
    _run(["--output_dir", str(tmp_path / "resumed"), *common, "--max_steps", "3"])
    _run(["--output_dir", str(tmp_path / "resumed"), *common, "--resume"])
    straight = load_file(tmp_path / "straight" / "pass-vit-reid" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "pass-vit-reid" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for name, tensor in straight.items():
        assert torch.equal(tensor, resumed[name]), name
    assert [e["loss"] for e in _history(tmp_path / "resumed")] == [e["loss"] for e in _history(tmp_path / "straight")]


def test_fewer_clusters_than_a_batch_needs_give_smaller_batches(tmp_path):
    result = _run(["--output_dir", str(tmp_path / "few"), "--global_batch_size", "128", "--max_steps", "1"])
    assert "fewer than --global_batch_size / --num_instances: this epoch's batches hold only" in result.stdout
    assert json.loads((tmp_path / "few" / "results.json").read_text())["steps"] == 1


def test_bad_inputs_give_clear_messages(tmp_path, capsys):
    result = _run(["--output_dir", str(tmp_path / "a"), "--min_samples", "200"], check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "DBSCAN (--eps 0.6, --min_samples 200) found 0 cluster(s)" in result.stderr
    assert "cluster-contrast needs 2 or more: raise --eps or lower --min_samples" in result.stderr
    with pytest.raises(SystemExit, match=r"the split 'unlabelled' \(--split\) is empty"):
        usl.load_data(usl.parse_args([*TOY, "--split", "unlabelled"]))
    with pytest.raises(SystemExit, match="no extra split"):
        usl.load_data(usl.parse_args([*TOY, "--split", "extra"]))
    with pytest.raises(SystemExit):
        usl.parse_args([*TOY, "--iters_per_epoch", "0"])
    assert "--iters_per_epoch must be >= 1" in capsys.readouterr().err


def test_two_processes_keep_memory_and_weights_identical(tmp_path):
    _run(["--output_dir", str(tmp_path / "two"), "--epochs", "2", "--global_batch_size", "16"],
         launcher=two_processes(29519))
    results = json.loads((tmp_path / "two" / "results.json").read_text())
    # replicas_in_sync compares the parameters, the BatchNorm statistics and the memory's buffers.
    assert results["num_processes"] == 2 and results["global_batch"] == 16 and results["replicas_in_sync"]
    assert results["steps"] == 4 and len(results["clustering"]) == 2
    assert results["final"]["num_valid_queries"] == 4 * 2
