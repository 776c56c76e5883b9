"""ReID evaluation speed and peak memory at Market-1501 and MSMT17 scale, on random 768-d features.

Each case runs in its own subprocess, so its peak RSS (``getrusage``) is its own, and includes the features
(float32 inputs: 59 MB at Market scale, 288 MB at MSMT17 scale) and torch itself (~0.3 GB).

* ``market``: ``evaluate_reid`` against the classic reference (full distance matrix, stable argsort of every
  row, per-query loop; ``tests/reference_reid.py``), alternated ``--rounds`` times; medians and their ratio.
  Target: >= 4x.
* ``msmt``: ``evaluate_reid`` alone (the classic reference needs > 15 GB here). Target: < 60 s, < 3 GB.
* ``rerank-market`` / ``rerank-msmt``: ``evaluate_reid(rerank=True)`` (k1=20, k2=6, lambda=0.3): the scale
  k-reciprocal re-ranking reaches, in what time and memory (``rerank-msmt`` takes minutes: ``--rerank-msmt``).

Random features are the worst case for the ranking step (true matches spread over the whole list).
Numbers are wall-clock. On a CPU shared with other busy processes, OpenMP threads that spin while waiting
slow every multi-threaded op down 2-3x; ``OMP_WAIT_POLICY=PASSIVE`` (inherited by the subprocesses, so it
applies to the reference and to pass-hub alike) avoids that.

    [OMP_WAIT_POLICY=PASSIVE] python benchmarks/bench_metrics.py [--rounds 3] [--threads N] [--rerank-msmt]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

# (queries, gallery, identities, cameras, gallery distractors with identity 0)
SCALES = {"market": (3368, 15913, 750, 6, 2798), "msmt": (11659, 82161, 3060, 15, 0)}
DIM = 768


def make_split(scale: str, seed: int = 0) -> dict[str, np.ndarray]:
    num_query, num_gallery, num_ids, num_cams, num_distractors = SCALES[scale]
    rng = np.random.default_rng(seed)
    gallery_pids = rng.integers(1, num_ids + 1, num_gallery)
    gallery_pids[:num_distractors] = 0
    return {
        "query_features": rng.standard_normal((num_query, DIM), dtype=np.float32),
        "gallery_features": rng.standard_normal((num_gallery, DIM), dtype=np.float32),
        "query_pids": rng.integers(1, num_ids + 1, num_query),
        "gallery_pids": gallery_pids,
        "query_camids": rng.integers(0, num_cams, num_query),
        "gallery_camids": rng.integers(0, num_cams, num_gallery),
    }


def run_case(case: str) -> dict[str, float]:
    """Time one case in this process; returns seconds, peak RSS in GB and the mAP (a sanity check)."""
    from pass_hub.evaluation.metrics import evaluate_reid, pairwise_distance

    method, _, scale = case.rpartition("-")
    split = make_split(scale)
    start = time.perf_counter()
    if method == "classic":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from reference_reid import classic_evaluate

        labels = [split[k] for k in ("query_pids", "gallery_pids", "query_camids", "gallery_camids")]
        distances = pairwise_distance(split["query_features"], split["gallery_features"]).numpy()
        result = classic_evaluate(distances, *labels)
    else:
        result = evaluate_reid(**split, rerank=method == "rerank")
    seconds = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"seconds": seconds, "peak_rss_gb": peak_gb, "mAP": result["mAP"]}


def in_subprocess(case: str, threads: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--case", case, "--threads", str(threads)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.splitlines()[-1])


def report(name: str, runs: list[dict[str, float]]) -> float:
    seconds = statistics.median(run["seconds"] for run in runs)
    peak = max(run["peak_rss_gb"] for run in runs)
    times = ", ".join(f"{run['seconds']:.2f}" for run in runs)
    print(f"  {name:34s} {seconds:7.2f} s (runs: {times})  peak RSS {peak:.2f} GB  mAP {runs[0]['mAP']:.6f}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternated runs of each Market-scale case")
    parser.add_argument("--rerank-msmt", action="store_true", help="also re-rank at MSMT17 scale (minutes)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.case:
        print(json.dumps(run_case(args.case)))
        return

    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(f"random {DIM}-d features, torch {torch.__version__}, {args.threads} threads, OMP_WAIT_POLICY {policy}")
    for scale in SCALES:
        num_query, num_gallery, *_ = SCALES[scale]
        print(f"{scale}: {num_query} queries x {num_gallery} gallery")
        if scale == "market":
            runs: dict[str, list[dict[str, float]]] = {"evaluate-market": [], "classic-market": []}
            for _ in range(args.rounds):
                for case, results in runs.items():
                    results.append(in_subprocess(case, args.threads))
            fast = report("evaluate_reid", runs["evaluate-market"])
            classic = report("classic reference", runs["classic-market"])
            print(f"  speed-up: {classic / fast:.2f}x (target >= 4x)")
        else:
            report("evaluate_reid (target < 60 s, < 3 GB)", [in_subprocess(f"evaluate-{scale}", args.threads)])
        if scale == "market" or args.rerank_msmt:
            report("evaluate_reid(rerank=True)", [in_subprocess(f"rerank-{scale}", args.threads)])


if __name__ == "__main__":
    main()
