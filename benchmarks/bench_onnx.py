"""ReID embedding throughput on the CPU: onnxruntime vs PyTorch, as ratios measured in one run.

ViT-S/16 at 256x128 (random weights: speed does not depend on them), L2-normalised embedding, exported with
:func:`pass_hub.export_onnx` at a fixed size and with ``dynamic_size=True``. Each round times every runner on a
batch of 32 (throughput) and on single images (latency), interleaved so that machine noise hits all of them
alike; the median per runner is reported. Both runtimes get the same number of threads.

    python benchmarks/bench_onnx.py [--batch-size 32] [--rounds 7] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import pass_hub


def build_runners(folder: Path, threads: int) -> dict[str, Callable[[torch.Tensor], object]]:
    config = pass_hub.PassViTConfig.from_preset("small")
    embedder = pass_hub.load_reid_model(pass_hub.PassViTModel(config))
    fixed = pass_hub.export_onnx(embedder, folder / "fixed.onnx")
    dynamic = pass_hub.export_onnx(embedder, folder / "dynamic.onnx", dynamic_size=True)
    for result in (fixed, dynamic):
        print(f"{result.path.name}: onnxruntime vs PyTorch max abs diff {max(result.max_abs_diff.values()):.2e}")
    return {
        "PyTorch (ReIDEmbedder)": embedder,
        "onnxruntime, fixed 256x128": pass_hub.OnnxReIDModel(fixed.path, threads=threads),
        "onnxruntime, dynamic size": pass_hub.OnnxReIDModel(dynamic.path, threads=threads),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--latency-repeats", type=int, default=10, help="single-image calls timed per round")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        runners = build_runners(Path(scratch), args.threads)
        batch = torch.randn(args.batch_size, 3, 256, 128)
        single = batch[:1]
        batch_seconds: dict[str, list[float]] = {name: [] for name in runners}
        single_seconds: dict[str, list[float]] = {name: [] for name in runners}
        with torch.inference_mode():
            for run in runners.values():  # warm-up: allocators, kernel selection, onnxruntime's first-run planning
                run(batch)
                run(single)
            for _ in range(args.rounds):
                for name, run in runners.items():
                    start = time.perf_counter()
                    run(batch)
                    batch_seconds[name].append(time.perf_counter() - start)
                    start = time.perf_counter()
                    for _ in range(args.latency_repeats):
                        run(single)
                    single_seconds[name].append((time.perf_counter() - start) / args.latency_repeats)

    throughput = {name: args.batch_size / statistics.median(times) for name, times in batch_seconds.items()}
    latency = {name: 1000 * statistics.median(times) for name, times in single_seconds.items()}
    print(
        f"ViT-S/16 256x128, L2-normalised embedding, {args.threads} threads, median of {args.rounds} rounds "
        f"(torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__})"
    )
    print(f"  {'':28s} {'batch ' + str(args.batch_size):>14s} {'batch 1':>12s}")
    for name in runners:
        print(f"  {name:28s} {throughput[name]:8.1f} img/s {latency[name]:9.1f} ms")
    reference = "PyTorch (ReIDEmbedder)"
    for name in list(runners)[1:]:
        print(
            f"  {name} / PyTorch: throughput {throughput[name] / throughput[reference]:.2f}x, "
            f"latency {latency[name] / latency[reference]:.2f}x"
        )


if __name__ == "__main__":
    main()
