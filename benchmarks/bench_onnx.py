"""ReID embedding throughput on the CPU: PyTorch float32, onnxruntime float32 and onnxruntime int8, measured in one
run, and what int8 costs in mAP on SynthPerson.

Speed: a ViT-S/16 ReID model (``PassViTForReID``, random weights: speed does not depend on them) at 256x128, its
L2-normalised deployment embedding (after the necks), exported with :func:`pass_hub.export_onnx` (opset 23, fused
attention), also at opset 18 (attention in primitives) to show what the fused operator buys, and with
``quantize="int8"``. Runners are timed in rounds, each in a new random order, on a batch (throughput) and on single
images (latency); a ratio is the median over rounds of the two runners' times in the same round, so machine noise
hits both alike. Every runtime gets the same number of threads.

Accuracy: the mAP of ``--model`` (default: the demo's fine-tuned PASS model, a ViT-tiny at 128x64, when
``make demo`` has run) in PyTorch and as an int8 file, on ``--data``'s query / gallery, deployment feature.

    python benchmarks/bench_onnx.py [--model FOLDER] [--data synthetic] [--batch-size 32] [--rounds 7]

Targets (issue 21): onnxruntime float32 >= 1.0x PyTorch, int8 >= 1.8x PyTorch, at most 1 mAP point lost.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import pass_hub
from pass_hub.deployment.images import load_dataset_split
from pass_hub.evaluation.metrics import evaluate_reid

DEMO_MODEL = Path("outputs/demo/finetune-pass/pass-vit-reid")
PYTORCH = "PyTorch float32"
INT8 = "onnxruntime int8"


def build_runners(embedder: pass_hub.ReIDEmbedder, folder: Path, threads: int) -> dict[str, Callable]:
    exports = {
        "onnxruntime float32": pass_hub.export_onnx(embedder, folder / "fp32.onnx"),
        "onnxruntime float32, opset 18": pass_hub.export_onnx(embedder, folder / "fp32-opset18.onnx", opset=18),
        INT8: pass_hub.export_onnx(embedder, folder / "int8.onnx", quantize="int8"),
    }
    for name, result in exports.items():
        check = (f"lowest cosine to PyTorch {min(result.min_cosine.values()):.5f}" if result.min_cosine else
                 f"max abs diff to PyTorch {max(result.max_abs_diff.values()):.2e}")
        print(f"{name}: {result.path.stat().st_size / 2**20:.1f} MiB, {check}")
    return {PYTORCH: embedder} | {
        name: pass_hub.OnnxReIDModel(result.path, threads=threads) for name, result in exports.items()
    }


def time_runners(runners: dict[str, Callable], batch: torch.Tensor, rounds: int, repeats: int):
    """Seconds per call of each runner in each round, on ``batch`` and on its first image."""
    single = batch[:1]
    times: dict[str, dict[str, list[float]]] = {"batch": {n: [] for n in runners}, "single": {n: [] for n in runners}}
    order = random.Random(0)
    names = list(runners)
    with torch.inference_mode():
        for run in runners.values():  # warm-up: allocators, kernel selection, onnxruntime's first-run planning
            run(batch)
            run(single)
        for _ in range(rounds):
            order.shuffle(names)
            for name in names:
                start = time.perf_counter()
                runners[name](batch)
                times["batch"][name].append(time.perf_counter() - start)
                start = time.perf_counter()
                for _ in range(repeats):
                    runners[name](single)
                times["single"][name].append((time.perf_counter() - start) / repeats)
    return times


def paired_speedup(times: dict[str, list[float]], name: str) -> float:
    return statistics.median(base / other for base, other in zip(times[PYTORCH], times[name], strict=True))


def mean_average_precision(runner: Callable, data: str, batch_size: int) -> float:
    query, gallery = (load_dataset_split(data, split) for split in ("query", "gallery"))
    features = [pass_hub.embed_files(split, runner, batch_size=batch_size, progress=False).embeddings
                for split in (query, gallery)]
    return evaluate_reid(features[0], features[1], query["pid"], gallery["pid"], query["camid"],
                         gallery["camid"])["mAP"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEMO_MODEL) if DEMO_MODEL.is_dir() else None,
                        help="weights for the mAP change (default: the demo's fine-tuned model when present)")
    parser.add_argument("--data", default="synthetic", help="dataset spec with query / gallery splits")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--latency-repeats", type=int, default=10, help="single-image calls timed per round")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    speed_model = pass_hub.load_reid_model(pass_hub.PassViTForReID(pass_hub.PassViTConfig.from_preset("small")))
    with tempfile.TemporaryDirectory() as scratch:
        runners = build_runners(speed_model, Path(scratch), args.threads)
        times = time_runners(runners, torch.randn(args.batch_size, 3, 256, 128), args.rounds, args.latency_repeats)
        if args.model:
            trained = pass_hub.load_reid_model(args.model)
            int8 = pass_hub.export_onnx(trained, Path(scratch) / "trained-int8.onnx", quantize="int8")
            scores = {name: mean_average_precision(runner, args.data, args.batch_size)
                      for name, runner in ((PYTORCH, trained), (INT8, pass_hub.OnnxReIDModel(int8.path)))}

    print(
        f"\nViT-S/16 256x128 PassViTForReID, {speed_model.feature.replace('_', '-')} embedding, {args.threads} "
        f"threads, median of {args.rounds} rounds (torch {torch.__version__}, onnxruntime "
        f"{__import__('onnxruntime').__version__})"
    )
    print(f"| runner | batch {args.batch_size} img/s | x PyTorch | batch 1 ms | x PyTorch |\n|---|---:|---:|---:|---:|")
    for name in runners:
        throughput = args.batch_size / statistics.median(times["batch"][name])
        latency = 1000 * statistics.median(times["single"][name])
        print(f"| {name} | {throughput:.1f} | {paired_speedup(times['batch'], name):.2f} | {latency:.1f} | "
              f"{paired_speedup(times['single'], name):.2f} |")
    if not args.model:
        print("\nno --model (and no demo model): mAP change not measured")
        return
    change = 100 * (scores[INT8] - scores[PYTORCH])
    print(f"\nmAP of {args.model} ({trained.feature.replace('_', '-')} feature) on {args.data}: PyTorch "
          f"{100 * scores[PYTORCH]:.2f}, int8 {100 * scores[INT8]:.2f} ({change:+.2f} points)")


if __name__ == "__main__":
    main()
