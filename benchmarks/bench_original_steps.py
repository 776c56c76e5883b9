"""One pre-training step and one fine-tuning step of the paper's ViT-S recipes on the CPU: pass-hub against the
original PASS code, run side by side in this process from the same weights and batches.

    pip install yacs
    python benchmarks/bench_original_steps.py --original /path/to/PASS-reID [--rounds 5] [--batch 8]

Pre-training: ViT-S/16, 2 global views at 256x128 and 9 local views at 128x64 per image, four 2048-256-65536
heads, drop path 0.1, per-tensor clipping at 3.0, fp32: the original ``train_one_epoch`` (one iteration) against
``PassPretrainer.step``. Fine-tuning: ViT-S/16 at 256x128, four BatchNorm necks, 751 identities (Market-1501), drop
path 0.1, fp32: the original ``do_train`` (one iteration) against ``ReidFinetuner.step``. Each round times both
sides once, in a new random order; a ratio is the median over rounds of (original time / pass-hub time) in the same
round, so machine noise hits both alike. One untimed round first warms both up. See ``original_code.py`` for the
run-time shims the original needs here.

Target (issue 26): pass-hub at least 1.1x the original's speed for both steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from original_code import OriginalCheckout
from parity_with_original import (
    FinetuningPair,
    PretrainingPair,
    Size,
    finetuning_batch,
    pretraining_views,
)

DROP_PATH = 0.1
RELEASED_CLIP = 3.0


def timed(step: Callable[[], object]) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def race(name: str, original: Callable[[], object], ours: Callable[[], object], rounds: int) -> dict[str, float]:
    """Median seconds of each side and the median per-round ratio original / pass-hub."""
    original(), ours()  # warm-up
    times: dict[str, list[float]] = {"original": [], "pass-hub": []}
    for _ in range(rounds):
        order = [("original", original), ("pass-hub", ours)]
        random.shuffle(order)
        for side, step in order:
            times[side].append(timed(step))
    ratios = [theirs / mine for theirs, mine in zip(times["original"], times["pass-hub"], strict=True)]
    result = {side: statistics.median(values) for side, values in times.items()}
    result["ratio"] = statistics.median(ratios)
    print(f"{name}: original {result['original']:.2f} s, pass-hub {result['pass-hub']:.2f} s per step; pass-hub is "
          f"{result['ratio']:.2f}x the original's speed (median of {rounds} rounds; per round "
          f"{', '.join(f'{r:.2f}' for r in ratios)})", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original", required=True, help="a checkout of CASIA-IVA-Lab/PASS-reID")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8, help="images per step")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--part", choices=("pretrain", "finetune", "all"), default="all")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    random.seed(0)
    checkout = OriginalCheckout(args.original)
    size = Size(384, 12, 6, (256, 128), (128, 64), 65536, 2048, 256, batch=args.batch, identities=751)
    print(f"ViT-S/16, batch {args.batch}, fp32, {args.threads} threads, torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory(prefix="pass-bench-") as scratch:
        if args.part in ("pretrain", "all"):
            pair = PretrainingPair(checkout, size, Path(scratch), clip_grad=RELEASED_CLIP, drop_path_rate=DROP_PATH,
                                   first_epoch=20)
            views = pretraining_views(size, seed=0)
            race("pre-training step", lambda: pair.original_step(20, views), lambda: pair.ours_step(20, views),
                 args.rounds)
            del pair
        if args.part in ("finetune", "all"):
            pair = FinetuningPair(checkout, size, Path(scratch), drop_path_rate=DROP_PATH)
            images, labels = finetuning_batch(dataclasses.replace(size, identities=args.batch // 4), seed=0)
            race("fine-tuning step", lambda: pair.original_step(30, images, labels),
                 lambda: pair.ours_step(30, images, labels), args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
