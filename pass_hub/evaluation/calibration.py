"""Score calibration for deployment: how well a cosine-similarity threshold separates people.

Over every query x gallery pair of an evaluation set, a pair of the same identity filmed by different cameras is a
*positive*, a pair of different identities a *negative*; same-identity same-camera pairs are left out, as the ReID
protocol does. :func:`calibrate` gives, for each target false-positive rate (FPR), the threshold a tracker or a
search service can use (a pair matches when its score is **above** it) and the true-positive rate (TPR) it keeps,
exactly: the threshold is the ``floor(FPR x negatives)``-th largest negative score, so at most that many negatives
score above it.

Memory stays bounded at MSMT17 scale (11,659 x 82,161 pairs): scores are computed a block of queries at a time and
never kept as a matrix; only the positive scores (one per same-identity pair) and the ``FPR x negatives`` largest
negative scores are, plus two histograms for the picture.

Example:
    >>> import torch
    >>> gallery = torch.eye(8).repeat_interleave(2, dim=0) + 0.05 * torch.randn(16, 8)
    >>> result = calibrate(gallery[::2] + 0.05, gallery, torch.arange(8), torch.arange(16) // 2,
    ...                    torch.zeros(8, dtype=torch.long), torch.ones(16, dtype=torch.long), fprs=(0.1,))
    >>> point = result.points[0]
    >>> point.fpr <= 0.1, point.tpr, result.num_positive, result.num_negative
    (True, 1.0, 16, 112)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .distances import BLOCK_ELEMENTS, ArrayLike, FeatureDistance, as_labels, check_integer

FPR_TARGETS = (1e-2, 1e-3, 1e-4)
HISTOGRAM_BINS = 400
DRAWN_BIN_FACTOR = 5


@dataclass(frozen=True)
class OperatingPoint:
    """One threshold: pairs scoring above ``threshold`` match.

    Attributes:
        target_fpr: The false-positive rate asked for.
        threshold: The score to exceed.
        tpr: Fraction of positive pairs above the threshold.
        fpr: Fraction of negative pairs above it (at most ``target_fpr``).
        resolved: False when there are fewer than ``1 / target_fpr`` negatives, so the target cannot be told
            apart from 0 (the threshold is then the largest negative score).
    """

    target_fpr: float
    threshold: float
    tpr: float
    fpr: float
    resolved: bool


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` measured.

    Attributes:
        points: One :class:`OperatingPoint` per target FPR.
        num_positive / num_negative: Pair counts.
        positive_quantiles: Scores at the 1st, 50th and 99th percentile of the positives (all kept, so exact).
        negative_quantiles: Scores at the 99th and 99.9th percentile of the negatives (exact, from the largest
            negative scores kept); their lower quantiles are not kept.
        negative_mean: Mean negative score (exact, summed while the pairs stream past).
        bin_edges: ``HISTOGRAM_BINS + 1`` score edges over [-1, 1]; ``positive_counts`` / ``negative_counts``: the
            pair counts per bin.
        feature: Which embedding the scores compare (for reports).
    """

    points: list[OperatingPoint]
    num_positive: int
    num_negative: int
    positive_quantiles: dict[str, float]
    negative_quantiles: dict[str, float]
    negative_mean: float
    bin_edges: list[float]
    positive_counts: list[int]
    negative_counts: list[int]
    feature: str = ""

    def to_dict(self, histograms: bool = False) -> dict[str, Any]:
        """JSON-ready; the histograms only when asked (they are long)."""
        out = asdict(self)
        if not histograms:
            for key in ("bin_edges", "positive_counts", "negative_counts"):
                out.pop(key)
        return out

    def table(self) -> str:
        """A Markdown table of the operating points."""
        lines = ["| FPR | TPR | threshold (cosine) |", "|---|---:|---:|"]
        for point in self.points:
            note = " (too few negatives to resolve)" if not point.resolved else ""
            lines.append(f"| {point.target_fpr:g}{note} | {100 * point.tpr:.1f}% | {point.threshold:.4f} |")
        return "\n".join(lines)


def calibrate(
    query_features: ArrayLike,
    gallery_features: ArrayLike,
    query_pids: ArrayLike,
    gallery_pids: ArrayLike,
    query_camids: ArrayLike,
    gallery_camids: ArrayLike,
    *,
    fprs: Sequence[float] = FPR_TARGETS,
    feature: str = "",
    chunk_size: int | None = None,
) -> Calibration:
    """Thresholds on the cosine similarity of L2-normalised features for each false-positive rate in ``fprs``.

    Raises:
        ValueError: no positive or no negative pair, an FPR outside (0, 1), mismatched lengths.
    """
    if not fprs or not all(0 < fpr < 1 for fpr in fprs):
        raise ValueError(f"fprs must be rates in (0, 1), got {list(fprs)}")
    queries, gallery = (prepared.features for prepared in
                        FeatureDistance("cosine").prepare_pair(query_features, gallery_features))
    q_pids = as_labels(query_pids, "query_pids", len(queries))
    g_pids = as_labels(gallery_pids, "gallery_pids", len(gallery))
    q_cams = as_labels(query_camids, "query_camids", len(queries))
    g_cams = as_labels(gallery_camids, "gallery_camids", len(gallery))
    if chunk_size is not None:
        check_integer(chunk_size, "chunk_size", 1)
    rows = chunk_size or max(1, BLOCK_ELEMENTS // len(gallery))

    # Negatives are known before any score: all pairs minus those of equal identity.
    identities, g_counts = torch.unique(g_pids, return_counts=True)
    position = torch.searchsorted(identities, q_pids).clamp(max=len(identities) - 1)
    same = torch.where(identities[position] == q_pids, g_counts[position], 0)
    num_negative = len(queries) * len(gallery) - int(same.sum())
    keep = max(1, math.floor(max(fprs) * num_negative) + 1)
    edges = torch.linspace(-1, 1, HISTOGRAM_BINS + 1)
    positive_counts = torch.zeros(HISTOGRAM_BINS, dtype=torch.int64)
    negative_counts = torch.zeros(HISTOGRAM_BINS, dtype=torch.int64)
    positives: list[torch.Tensor] = []
    top_negatives = torch.empty(0)
    negative_sum = 0.0
    for start in range(0, len(queries), rows):
        block = slice(start, start + rows)
        scores = (queries[block] @ gallery.T).clamp_(-1, 1)
        same_id = q_pids[block, None] == g_pids[None, :]
        positive = same_id & (q_cams[block, None] != g_cams[None, :])
        positives.append(scores[positive])
        negative_scores = scores[~same_id]
        negative_sum += float(negative_scores.double().sum())
        candidates = torch.cat([top_negatives, negative_scores])
        top_negatives = torch.topk(candidates, min(keep, len(candidates))).values
        positive_counts += torch.histc(positives[-1], HISTOGRAM_BINS, -1, 1).to(torch.int64)
        negative_counts += torch.histc(negative_scores, HISTOGRAM_BINS, -1, 1).to(torch.int64)
    positive_scores = torch.cat(positives)
    if len(positive_scores) == 0 or num_negative == 0:
        raise ValueError(f"calibration needs positive and negative pairs; found {len(positive_scores)} positive "
                         f"(same identity, other camera) and {num_negative} negative")

    points = []
    for fpr in fprs:
        allowed = math.floor(fpr * num_negative)
        threshold = float(top_negatives[min(allowed, len(top_negatives) - 1)])
        points.append(OperatingPoint(
            target_fpr=fpr,
            threshold=threshold,
            tpr=float((positive_scores > threshold).double().mean()),
            fpr=float((top_negatives > threshold).sum()) / num_negative,
            resolved=allowed >= 1,
        ))
    quantile = torch.tensor([0.01, 0.5, 0.99])
    positive_q = torch.quantile(positive_scores.double(), quantile.double()).tolist()
    negative_q = {}
    for name, fraction in (("p99", 0.01), ("p99.9", 0.001)):
        rank = math.floor(fraction * num_negative)
        negative_q[name] = float(top_negatives[rank]) if rank < len(top_negatives) else float("nan")
    return Calibration(
        points, len(positive_scores), num_negative,
        dict(zip(("p1", "p50", "p99"), positive_q, strict=True)), negative_q, negative_sum / num_negative,
        edges.tolist(), positive_counts.tolist(), negative_counts.tolist(), feature,
    )


def draw_calibration(calibration: Calibration, path: str | Path, title: str = "") -> Path:
    """Two panels: the histograms of positive and negative scores (densities, log scale) with the thresholds, and
    the ROC curve (TPR against FPR, log FPR axis) from the histograms with the exact operating points marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..atomic import atomic_file

    edges = np.asarray(calibration.bin_edges)
    positive = np.asarray(calibration.positive_counts, dtype=float)
    negative = np.asarray(calibration.negative_counts, dtype=float)
    figure, (scores, roc) = plt.subplots(1, 2, figsize=(11, 4))
    # Drawn in bins 5x wider than counted: 80 over [-1, 1] read better than 400 for a few thousand positives.
    drawn_edges = edges[::DRAWN_BIN_FACTOR]
    drawn_centres = (drawn_edges[:-1] + drawn_edges[1:]) / 2
    for counts, label, colour in ((positive, "same person, other camera", "tab:green"),
                                  (negative, "different people", "tab:red")):
        drawn = counts.reshape(-1, DRAWN_BIN_FACTOR).sum(axis=1)
        scores.step(drawn_centres, drawn / max(drawn.sum(), 1), where="mid", label=label, color=colour)
    for point, style in zip(calibration.points, ("--", "-.", ":"), strict=False):
        scores.axvline(point.threshold, color="black", linestyle=style, linewidth=1,
                       label=f"FPR {point.target_fpr:g}: cosine > {point.threshold:.3f}")
    scores.set_yscale("log")
    scores.set_xlabel("cosine similarity" + (f" ({calibration.feature})" if calibration.feature else ""))
    scores.set_ylabel("fraction of pairs")
    scores.legend(fontsize=8)
    scores.grid(alpha=0.3)
    # Pairs above each bin's lower edge, from the top bin down.
    tpr = np.cumsum(positive[::-1])[::-1] / max(positive.sum(), 1)
    fpr = np.cumsum(negative[::-1])[::-1] / max(negative.sum(), 1)
    visible = fpr > 0
    roc.plot(fpr[visible], tpr[visible], color="tab:blue", linewidth=1.2, label="from the histograms")
    for point in calibration.points:
        roc.plot(max(point.fpr, 1e-9), point.tpr, "o", color="black")
        roc.annotate(f"{100 * point.tpr:.1f}%", (max(point.fpr, 1e-9), point.tpr), textcoords="offset points",
                     xytext=(-4, 6), fontsize=8, ha="right")
    roc.set_xscale("log")
    roc.set_xlim(min(1e-5, 0.5 / max(calibration.num_negative, 1)), 1)
    roc.set_ylim(0, 1.02)
    roc.set_xlabel("false-positive rate")
    roc.set_ylabel("true-positive rate")
    roc.grid(alpha=0.3, which="both")
    roc.plot([], [], "o", color="black", label="TPR at each FPR target (exact)")
    roc.legend(fontsize=8, loc="upper left")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    with atomic_file(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)
    return path
