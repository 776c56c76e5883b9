"""Person re-identification metrics: CMC, mAP and mINP under the Market-1501 protocol, exact and memory-bounded.

Protocol (spec §5): for each query, gallery items of the **same identity and the same camera** are junk and
dropped; the remaining items of the same identity are its true matches. Queries without a true match are
skipped (and counted). CMC is the first-hit cumulative match curve (Rank-k = ``cmc[k - 1]``), AP is the
non-interpolated average precision (mean over true matches of hits-so-far / position), and INP is
(number of true matches) / (position of the hardest true match), positions counted after dropping junk.
Gallery identity 0 (Market-1501 distractors) is an identity like any other that no query has, so its items
are negatives; identity -1 (junk images) is meant to be dropped by the loader.

Exactness and tie-breaking: distances are computed in float32 (features of any dtype are cast) by
:class:`pass_hub.distances.FeatureDistance` and clamped at 0. Each query's gallery is ordered by
(distance, gallery index):
equal distances keep gallery order, as a stable sort does, and -0.0 equals +0.0. Given the float32 distances
that were ranked, every number equals the classic algorithm (full matrix, stable ``argsort`` of each row,
per-query loop) up to float64 summation order, i.e. to ~1e-15; the tests check 1e-9 on randomised cases with
deliberate exact ties. The distances themselves are BLAS float32 matmuls, whose last bit can change with the
number of queries in a block (``chunk_size``), as it changes between BLAS libraries for the classic code: two
items whose distances are equal mathematically but not in float32 may swap, nothing else.

Speed and memory: queries are processed in blocks of about 8M query x gallery elements, so peak memory is
bounded whatever the sizes, and no row is sorted. The rank of each true match is the number of gallery items
ordered before it: a histogram of each row over code ranges spanning its true matches counts the items
clearly before, and only the few items sharing a histogram bin with a true match are sorted exactly.

Example:
    >>> import torch
    >>> from pass_hub.evaluation.metrics import evaluate_reid
    >>> gallery = torch.randn(100, 64)
    >>> gallery_pids, gallery_camids = torch.arange(100) % 20, torch.arange(100) % 3
    >>> query = gallery[:10] + 0.1 * torch.randn(10, 64)
    >>> result = evaluate_reid(query, gallery, gallery_pids[:10], gallery_pids, torch.full((10,), 5),
    ...                        gallery_camids, max_rank=10)
    >>> round(result["rank1"], 2), result["num_valid_queries"]
    (1.0, 10)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .distances import (  # noqa: F401  (FeatureDistance and pairwise_distance are part of this module's API)
    BLOCK_ELEMENTS,
    ArrayLike,
    FeatureDistance,
    as_labels,
    as_tensor,
    check_integer,
    order_codes,
    order_keys,
    pairwise_distance,
)
from .reranking import KReciprocalReranker

# The `evaluate` metric module shipped with the package: ``evaluate.load(str(EVALUATE_METRIC_PATH))``.
EVALUATE_METRIC_PATH = Path(__file__).resolve().parent / "evaluate_metric" / "pass_reid"

# Order code of junk items: after every real gallery item (real codes are at most that of +inf, 0x7F800000).
JUNK_CODE = torch.iinfo(torch.int32).max
# Each query's histogram of gallery codes has about this many gallery items per bin (see `_match_ranks`).
ITEMS_PER_BIN = 4
# Label-only work (finding each query's true matches) is done this many queries at a time.
LABEL_CHUNK = 4096
STANDARD_RANKS = (1, 5, 10)


@dataclass(frozen=True)
class _Labels:
    query_pids: torch.Tensor
    gallery_pids: torch.Tensor
    query_camids: torch.Tensor
    gallery_camids: torch.Tensor

    @classmethod
    def validate(
        cls,
        query_pids: ArrayLike,
        gallery_pids: ArrayLike,
        query_camids: ArrayLike,
        gallery_camids: ArrayLike,
        num_query: int,
        num_gallery: int,
    ) -> _Labels:
        return cls(
            as_labels(query_pids, "query_pids", num_query),
            as_labels(gallery_pids, "gallery_pids", num_gallery),
            as_labels(query_camids, "query_camids", num_query),
            as_labels(gallery_camids, "gallery_camids", num_gallery),
        )


class _SameIdentityGallery:
    """The gallery grouped by identity, so each query's true matches and junk are found without a Q x G pass."""

    def __init__(self, labels: _Labels) -> None:
        self.labels = labels
        sorted_pids, self.order = torch.sort(labels.gallery_pids, stable=True)
        self.start = torch.searchsorted(sorted_pids, labels.query_pids)
        self.count = torch.searchsorted(sorted_pids, labels.query_pids, right=True) - self.start

    def candidates(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For ``queries`` (indices): same-identity gallery indices (padded) and their true-match / junk masks."""
        count = self.count[queries]
        width = max(1, int(count.max()))  # at least one (padding) column keeps the shapes uniform
        offset = torch.arange(width)
        present = offset < count[:, None]
        position = (self.start[queries, None] + offset).clamp_max_(len(self.order) - 1)
        gallery = self.order[position]
        same_camera = self.labels.gallery_camids[gallery] == self.labels.query_camids[queries, None]
        return gallery, present & ~same_camera, present & same_camera


def _match_ranks(codes: torch.Tensor, match_index: torch.Tensor, is_match: torch.Tensor) -> torch.Tensor:
    """1-based rank of each true match in its row's (code, column) order, without sorting the rows.

    Args:
        codes: (C, G) order codes of one block of queries (junk items coded ``JUNK_CODE``).
        match_index: (C, L) gallery columns of the true matches; ``is_match`` (C, L) marks the real ones.

    Each row's codes are counted in a histogram of equal code ranges spanning that row's true matches (one
    ``bincount`` for the block): every item in a lower bin ranks before the match. Only the few items that
    share a bin with a true match are ordered exactly, by sorting them on (bin, code, column).
    """
    num_rows, num_items = codes.shape
    bins = max(16, num_items // ITEMS_PER_BIN)
    match_codes = codes.gather(1, match_index)
    lowest = match_codes.masked_fill(~is_match, JUNK_CODE).amin(dim=1)
    highest = match_codes.masked_fill(~is_match, -JUNK_CODE - 1).amax(dim=1)
    # Bins are 2**shift codes wide, shift >= 1 so that differences of shifted int32 codes cannot overflow.
    shift = torch.ones(num_rows, dtype=torch.int32)
    while bool((too_narrow := (highest >> shift) - (lowest >> shift) >= bins).any()):
        shift += too_narrow
    origin = (lowest >> shift)[:, None]
    # Global bin ids, row after row: row r uses r * (bins + 2) + [0, bins + 1], 0 below and bins + 1 above
    # the row's true matches.
    row_start = (torch.arange(num_rows, dtype=torch.int32) * (bins + 2) + 1)[:, None]
    item_bin = torch.bitwise_right_shift(codes, shift[:, None]).sub_(origin).clamp_(-1, bins).add_(row_start)
    match_bin = torch.where(is_match, (match_codes >> shift[:, None]) - origin + row_start, row_start)
    histogram = torch.bincount(item_bin.view(-1), minlength=num_rows * (bins + 2))
    items_up_to_bin = histogram.view(num_rows, bins + 2).cumsum(dim=1).view(-1)

    # Items sharing a bin with a true match (the matches included), as flat row-major indices.
    shares_bin = torch.zeros(num_rows * (bins + 2), dtype=torch.bool)
    shares_bin[match_bin[is_match]] = True
    candidates = torch.index_select(shares_bin, 0, item_bin.view(-1)).nonzero().squeeze(1)  # faster than [ ]
    candidate_bin = item_bin.view(-1)[candidates]
    column = candidates % num_items
    candidate_key = order_keys(codes.view(-1)[candidates], column)
    by_key = torch.sort(candidate_key).indices  # keys are unique: no stability needed
    order = by_key[torch.sort(candidate_bin[by_key], stable=True).indices]
    sorted_bin = candidate_bin[order]
    position_in_bin = torch.empty_like(order)
    position_in_bin[order] = torch.arange(1, len(order) + 1) - torch.searchsorted(sorted_bin, sorted_bin)

    before_bin = items_up_to_bin[match_bin - 1]
    if not len(candidates):  # no true match in this block
        return before_bin
    flat_match = torch.arange(0, num_rows * num_items, num_items)[:, None] + match_index
    match_candidate = torch.searchsorted(candidates, flat_match).clamp_max_(len(candidates) - 1)  # padding: any
    return before_bin + position_in_bin[match_candidate]


def _validate_options(max_rank: int, top_k: int, chunk_size: int | None) -> None:
    check_integer(max_rank, "max_rank", 1)
    check_integer(top_k, "top_k", 0)
    if chunk_size is not None:
        check_integer(chunk_size, "chunk_size", 1)


def _evaluate(
    distance_rows: Callable[[torch.Tensor], torch.Tensor],
    labels: _Labels,
    *,
    max_rank: int,
    return_per_query: bool,
    top_k: int,
    chunk_size: int | None,
) -> dict[str, Any]:
    """The metrics from ``distance_rows(query indices) -> (len(indices), G) float32 distances``, block by block."""
    num_query, num_gallery = len(labels.query_pids), len(labels.gallery_pids)
    same_identity = _SameIdentityGallery(labels)
    num_matches = torch.cat(
        [same_identity.candidates(rows)[1].sum(dim=1) for rows in torch.arange(num_query).split(LABEL_CHUNK)]
    )
    valid = num_matches > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError(
            f"none of the {num_query} queries has a true match (same identity, other camera) in the gallery"
        )

    first_rank = torch.zeros(num_query, dtype=torch.int64)
    average_precision = torch.full((num_query,), float("nan"), dtype=torch.float64)
    inverse_negative_penalty = torch.full((num_query,), float("nan"), dtype=torch.float64)
    top_k = top_k if return_per_query else 0
    top_indices = torch.full((num_query, top_k), -1, dtype=torch.int64)
    top_distances = torch.full((num_query, top_k), float("nan"), dtype=torch.float64)
    ranked = min(top_k, num_gallery)  # the lists are padded beyond the gallery size

    ranked_queries = torch.arange(num_query) if return_per_query else valid.nonzero().squeeze(1)
    for rows in ranked_queries.split(chunk_size or max(1, BLOCK_ELEMENTS // num_gallery)):
        distances = distance_rows(rows)
        codes = order_codes(distances)  # may be a view: junk distances are overwritten, never reported
        gallery, is_match, is_junk = same_identity.candidates(rows)
        junk_row, junk_slot = is_junk.nonzero(as_tuple=True)
        codes[junk_row, gallery[junk_row, junk_slot]] = JUNK_CODE
        ranks = _match_ranks(codes, gallery, is_match).masked_fill_(~is_match, num_gallery + 1)
        ranks = ranks.sort(dim=1).values.to(torch.float64)

        matches = num_matches[rows]
        has_match = matches > 0
        position = torch.arange(1, ranks.shape[1] + 1, dtype=torch.float64)
        precision_at_hits = torch.where(position <= matches[:, None], position / ranks, 0.0)
        hardest = ranks.gather(1, (matches - 1).clamp_min(0)[:, None]).squeeze(1)
        average_precision[rows] = torch.where(has_match, precision_at_hits.sum(dim=1) / matches, float("nan"))
        inverse_negative_penalty[rows] = torch.where(has_match, matches / hardest, float("nan"))
        first_rank[rows] = torch.where(has_match, ranks[:, 0].to(torch.int64), 0)
        if ranked:
            top = torch.topk(order_keys(codes), ranked, dim=1, largest=False).indices
            dropped = codes.gather(1, top) == JUNK_CODE  # junk: not part of the ranked list
            top_indices[rows, :ranked] = top.masked_fill(dropped, -1)
            top_distances[rows, :ranked] = distances.gather(1, top).to(torch.float64).masked_fill_(dropped, torch.nan)

    hits = first_rank[valid]
    first_hit_histogram = torch.bincount(hits.clamp(max=max_rank + 1), minlength=max_rank + 2)
    cmc = (first_hit_histogram[1 : max_rank + 1].cumsum(0).to(torch.float64) / num_valid).numpy()
    result: dict[str, Any] = {
        "mAP": float(average_precision[valid].mean()),
        "mINP": float(inverse_negative_penalty[valid].mean()),
        "cmc": cmc,
        **{f"rank{k}": float((hits <= k).sum()) / num_valid for k in STANDARD_RANKS},
        "num_valid_queries": num_valid,
        "num_skipped_queries": num_query - num_valid,
    }
    if return_per_query:
        is_top_match = labels.gallery_pids[top_indices.clamp_min(0)] == labels.query_pids[:, None]
        result |= {
            "per_query_ap": average_precision.numpy(),
            "per_query_inp": inverse_negative_penalty.numpy(),
            "first_match_rank": first_rank.numpy(),
            "valid_query": valid.numpy(),
            "topk_indices": top_indices.numpy(),
            "topk_distances": top_distances.numpy(),
            "topk_matches": (is_top_match & (top_indices >= 0)).numpy(),
        }
    return result


def evaluate_reid(
    query_features: ArrayLike,
    gallery_features: ArrayLike,
    query_pids: ArrayLike,
    gallery_pids: ArrayLike,
    query_camids: ArrayLike,
    gallery_camids: ArrayLike,
    *,
    distance: str = "euclidean",
    normalize: bool = True,
    max_rank: int = 50,
    rerank: bool = False,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    return_per_query: bool = False,
    top_k: int = 10,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """CMC, mAP and mINP of a query set against a gallery, Market-1501 protocol (see the module docstring).

    Args:
        query_features: (Q, D) features, numpy or torch, any real dtype (computed in float32).
        gallery_features: (G, D) features.
        query_pids: (Q,) integer identities; ``gallery_pids``: (G,). Same for ``query_camids`` / ``gallery_camids``.
        distance: ``"euclidean"`` (squared) or ``"cosine"``; see :class:`FeatureDistance`.
        normalize: L2-normalise the features first (default; the ranking is then the same for both distances).
        max_rank: Length of the returned CMC curve (it may exceed the gallery size: the curve is 1 from there on).
        rerank: Apply k-reciprocal re-ranking (``k1``, ``k2``, ``lambda_value``; see
            :class:`pass_hub.reranking.KReciprocalReranker`) before ranking.
        return_per_query: Also return per-query AP / INP / first-match rank and the ``top_k`` ranked gallery
            indices (junk removed, ``-1`` where fewer remain) with their distances and match flags.
        top_k: Length of the per-query ranked lists.
        chunk_size: Queries per block; by default about 8M query x gallery elements per block.

    Returns:
        ``mAP``, ``mINP``, ``rank1``, ``rank5``, ``rank10`` (fractions in [0, 1]), ``cmc`` (float64 array of
        ``max_rank``), ``num_valid_queries``, ``num_skipped_queries``; with ``return_per_query`` also
        ``per_query_ap`` / ``per_query_inp`` (NaN for skipped queries), ``first_match_rank`` (0 if none),
        ``valid_query``, ``topk_indices``, ``topk_distances``, ``topk_matches`` (numpy arrays).

    Raises:
        ValueError: mismatched lengths or feature sizes, empty sets, NaN / inf features, no query with a
            true match, bad options. TypeError: non-numeric features, non-integer labels.

    Example:
        >>> features = torch.eye(4)
        >>> result = evaluate_reid(features, features, [0, 1, 2, 3], [0, 1, 2, 3], [0, 0, 0, 0], [1, 1, 1, 1],
        ...                        max_rank=4)
        >>> result["mAP"], result["cmc"].tolist()
        (1.0, [1.0, 1.0, 1.0, 1.0])
    """
    _validate_options(max_rank, top_k, chunk_size)
    metric = FeatureDistance(distance, normalize)
    queries, gallery = metric.prepare_pair(query_features, gallery_features)
    labels = _Labels.validate(query_pids, gallery_pids, query_camids, gallery_camids, len(queries), len(gallery))
    if rerank:
        reranker = KReciprocalReranker.from_prepared(
            metric, queries, gallery, k1=k1, k2=k2, lambda_value=lambda_value, chunk_size=chunk_size
        )
        distance_rows = reranker.block
    else:

        def distance_rows(rows: torch.Tensor) -> torch.Tensor:
            return metric(queries.select(rows), gallery)

    return _evaluate(
        distance_rows, labels, max_rank=max_rank, return_per_query=return_per_query, top_k=top_k, chunk_size=chunk_size
    )


def evaluate_distance_matrix(
    distances: ArrayLike,
    query_pids: ArrayLike,
    gallery_pids: ArrayLike,
    query_camids: ArrayLike,
    gallery_camids: ArrayLike,
    *,
    max_rank: int = 50,
    return_per_query: bool = False,
    top_k: int = 10,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """:func:`evaluate_reid` on a precomputed (Q, G) distance matrix (smaller is closer; any sign; inf allowed).

    Float16 / bfloat16 / float32 are ranked in float32 (exact conversions) on the fast path; float64 is
    ranked exactly in float64 with a stable sort per row, at classic speed: pass float32 when that precision
    is enough. Options and results as in :func:`evaluate_reid`.

    Example:
        >>> result = evaluate_distance_matrix([[0.1, 0.9], [0.8, 0.2]], [1, 2], [1, 2], [0, 0], [1, 1])
        >>> result["mAP"], result["rank1"]
        (1.0, 1.0)
    """
    _validate_options(max_rank, top_k, chunk_size)
    matrix = as_tensor(distances, "distances")
    if matrix.dim() != 2 or 0 in matrix.shape:
        raise ValueError(
            f"distances must be a non-empty 2-D (num_query, num_gallery) matrix, got {tuple(matrix.shape)}"
        )
    if not matrix.is_floating_point():
        raise TypeError(f"distances must be floating point, got {matrix.dtype}")
    if matrix.dtype != torch.float64:
        matrix = matrix.to(torch.float32)
    nan_rows = int(torch.isnan(matrix).any(dim=1).sum())
    if nan_rows:
        raise ValueError(f"distances has NaN in {nan_rows} of {len(matrix)} rows")
    labels = _Labels.validate(query_pids, gallery_pids, query_camids, gallery_camids, *matrix.shape)
    return _evaluate(
        matrix.__getitem__,
        labels,
        max_rank=max_rank,
        return_per_query=return_per_query,
        top_k=top_k,
        chunk_size=chunk_size,
    )
