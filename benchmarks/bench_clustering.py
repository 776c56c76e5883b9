"""Clustering at Market-1501 scale on the CPU: pass-hub's Jaccard + DBSCAN (what ``ClusterContrastTrainer.cluster``
runs) against the original cluster-contrast code's (``compute_jaccard_distance`` on its CPU faiss index, then
sklearn's DBSCAN on the dense matrix, as ``main_worker`` calls it), each in its own process for its peak memory.

    pip install faiss-cpu
    python benchmarks/bench_clustering.py --original /path/to/PASS-reID [--images 12936] [--dim 768]

The features: as many as Market-1501's training images (12,936), 768 wide (ViT-S's ``cat`` feature), L2-normalised
(the single-neck USL recipe's), drawn around 751 identities (Market's) with 4-30 images each, so that DBSCAN finds
clusters and outliers as it does on real features. Both sides get the same float32 features and the released
settings (k1 30, k2 6, eps 0.6, min_samples 4). Reported: wall time of the clustering alone, the process's peak
resident memory (and what it held before clustering), and whether the labels are identical.

Target (issue 27): pass-hub no slower than the original's CPU path, labels identical.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"eps": 0.6, "min_samples": 4, "k1": 30, "k2": 6}


def market_like_features(images: int, dim: int, identities: int = 751, seed: int = 0) -> np.ndarray:
    """(images, dim) unit float32 features around ``identities`` random directions, 4-30 images each."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(4, 31, size=identities)
    sizes = (sizes * images / sizes.sum()).astype(int)
    sizes[0] += images - sizes.sum()
    centers = rng.normal(size=(identities, dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    features = np.repeat(centers, sizes, axis=0) + rng.normal(size=(images, dim)) / np.sqrt(dim)
    return (features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float32)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def cluster_ours(features: np.ndarray) -> np.ndarray:
    import torch

    from training.cluster_contrast.clustering import cluster_pseudo_labels

    # As ClusterContrastTrainer.cluster calls it: the features as they are, the original's Jaccard convention.
    return cluster_pseudo_labels(torch.from_numpy(features), **SETTINGS, jaccard="cluster_contrast", normalize=False)


def cluster_original(features: np.ndarray, faiss_rerank) -> np.ndarray:
    import torch
    from original_code import faiss_on_cpu
    from sklearn.cluster import DBSCAN

    with faiss_on_cpu(faiss_rerank), contextlib.redirect_stdout(io.StringIO()):
        distances = faiss_rerank.compute_jaccard_distance(torch.from_numpy(features), k1=SETTINGS["k1"],
                                                          k2=SETTINGS["k2"])
    return DBSCAN(eps=SETTINGS["eps"], min_samples=SETTINGS["min_samples"], metric="precomputed",
                  n_jobs=-1).fit_predict(distances)


def run_side(side: str, features_path: str, labels_path: str, original: str | None) -> None:
    """In a fresh process: load the features, cluster them, save the labels, print time and memory as JSON."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    features = np.load(features_path)
    if side == "original":  # the code is imported before timing, as pass-hub's is
        from original_code import OriginalCheckout

        faiss_rerank = OriginalCheckout(original).cluster_contrast.faiss_rerank
    else:
        import training.cluster_contrast.clustering  # noqa: F401
    before = peak_rss_mb()
    started = time.perf_counter()
    labels = cluster_ours(features) if side == "pass-hub" else cluster_original(features, faiss_rerank)
    seconds = time.perf_counter() - started
    np.save(labels_path, labels)
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": before}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original", required=True, help="a checkout of CASIA-IVA-Lab/PASS-reID")
    parser.add_argument("--images", type=int, default=12936)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--side", choices=("pass-hub", "original"), help=argparse.SUPPRESS)
    parser.add_argument("--features", help=argparse.SUPPRESS)
    parser.add_argument("--labels", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        run_side(args.side, args.features, args.labels, args.original)
        return 0
    with tempfile.TemporaryDirectory(prefix="pass-bench-") as scratch:
        features_path = Path(scratch) / "features.npy"
        np.save(features_path, market_like_features(args.images, args.dim))
        results, labels = {}, {}
        for side in ("pass-hub", "original"):
            labels_path = Path(scratch) / f"{side}.npy"
            done = subprocess.run([sys.executable, __file__, "--original", args.original, "--side", side,
                                   "--features", str(features_path), "--labels", str(labels_path)],
                                  capture_output=True, text=True, check=True)
            results[side] = json.loads(done.stdout.strip().splitlines()[-1])
            labels[side] = np.load(labels_path)
            print(f"{side}: {results[side]['seconds']:.1f} s, peak RSS {results[side]['peak_rss_mb']:.0f} MB "
                  f"({results[side]['rss_before_mb']:.0f} MB before clustering)", flush=True)
    ours, theirs = labels["pass-hub"], labels["original"]
    clusters = int(theirs.max()) + 1
    print(f"{args.images} features x {args.dim}: {clusters} clusters, {int((theirs < 0).sum())} outliers; labels "
          f"{'identical' if np.array_equal(ours, theirs) else f'DIFFER at {int((ours != theirs).sum())} images'}; "
          f"pass-hub is {results['original']['seconds'] / results['pass-hub']['seconds']:.1f}x the original's speed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
