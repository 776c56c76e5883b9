"""A seeded run gives the same model twice on one machine: the three training scripts run twice on several threads
(where a kernel that adds with atomics orders its sums by thread timing), and the kernel that did that."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from script_runs import ROOT, run_script, two_processes

from pass_hub.models.backbone import PassVisionTransformer
from training.engine.runtime import THROUGHPUT_FILE, use_deterministic_kernels

THREADS = 4  # more threads than this machine's 2 cores: the scheduler interleaves them differently each run

PRETRAIN_ARGS = [  # ViT-tiny's width and 3 x 1 x 64 = 192 local views: the [PART] gather's backward runs threaded
    "--data", "synthetic:train_ids=2,test_ids=1,unlabelled=128,distractors=0,image_size=64x32",
    "--image_size", "64", "32", "--local_image_size", "32", "16", "--local_crops_per_stripe", "1",
    "--global_batch_size", "64", "--out_dim", "64", "--head_hidden_dim", "32", "--head_bottleneck_dim", "16",
    "--num_workers", "0", "--report_to", "none", "--max_steps", "6", "--skip_frozen_eval",
]
REID_DATA = "synthetic:train_ids=8,test_ids=4,cameras=2,distractors=0,unlabelled=0,image_size=64x32"


def _file_digests(folder: Path) -> dict[str, str]:
    """Every file of the run's checkpoints and published model folders, by its path in the run folder; left out:
    each checkpoint's throughput.json (wall-clock) and the logs beside them (metrics.jsonl, results.json, ...)."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != THROUGHPUT_FILE and path.parent != folder and "logs" not in path.parts
    }


def _run_twice(tmp_path: Path, script: str, args: list[str], launcher: list[str] | None = None) -> list[dict]:
    digests = []
    for run in ("first", "second"):
        output_dir = tmp_path / run
        run_script(ROOT / "training" / script, [*args, "--output_dir", str(output_dir)], launcher, threads=THREADS)
        digests.append(_file_digests(output_dir))
    return digests


def test_pretraining_twice_gives_the_same_bits(tmp_path):
    first, second = _run_twice(tmp_path, "pretrain.py", PRETRAIN_ARGS)
    assert "pass-vit-pretrained/model.safetensors" in first and any("checkpoints" in name for name in first)
    assert first == second


def test_fine_tuning_twice_gives_the_same_bits(tmp_path):
    first, second = _run_twice(tmp_path, "finetune.py", [
        "--dataset", REID_DATA, "--image_size", "64", "32", "--global_batch_size", "32", "--num_instances", "4",
        "--max_steps", "6", "--eval_every", "0", "--num_workers", "0", "--report_to", "none",
    ])
    assert "pass-vit-reid/model.safetensors" in first
    assert first == second


def test_cluster_contrast_twice_on_two_processes_gives_the_same_bits(tmp_path):
    first, second = _run_twice(tmp_path, "usl.py", [
        "--dataset", REID_DATA, "--image_size", "64", "32", "--global_batch_size", "16", "--num_instances", "2",
        "--k1", "6", "--k2", "2", "--min_samples", "2", "--epochs", "2", "--iters_per_epoch", "3", "--eval_every", "0",
        "--num_workers", "0", "--report_to", "none",
    ], launcher=two_processes(29531))
    assert any(name.endswith("model.safetensors") for name in first)
    assert first == second


@pytest.fixture
def many_threads():
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(threads)
    use_deterministic_kernels(deterministic)


def test_the_part_token_gather_backward_repeats_with_deterministic_kernels(many_threads):
    """The kernel that made pre-training runs part: the backward of forward_local's per-stripe [PART] gather
    adds 192 rows into 3 with atomic adds when torch may pick any kernel (30 repeats on 4 threads gave 16
    different gradients here without deterministic kernels, docs/reproducibility.md)."""
    use_deterministic_kernels(True)
    torch.manual_seed(0)
    model = PassVisionTransformer(img_size=(32, 16), embed_dim=192, depth=1, num_heads=3, num_classes=0)
    crops = torch.randn(192, 3, 32, 16)
    stripes = torch.arange(3).repeat_interleave(64)
    gradients = set()
    for _ in range(8):
        model.zero_grad()
        model.forward_local(crops, stripes)[:, 1].square().sum().backward()
        gradients.add(model.reg_token.grad.numpy().tobytes())
    assert len(gradients) == 1
