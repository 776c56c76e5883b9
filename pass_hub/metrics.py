"""Person re-identification metrics: CMC, mAP and mINP under the Market-1501 protocol, exact and memory-bounded.

Protocol (spec §5): for each query, gallery items of the **same identity and the same camera** are junk and
dropped; the remaining items of the same identity are its true matches. Queries without a true match are
skipped (and counted). CMC is the first-hit cumulative match curve (Rank-k = ``cmc[k - 1]``), AP is the
non-interpolated average precision (mean over true matches of hits-so-far / position), and INP is
(number of true matches) / (position of the hardest true match), positions counted after dropping junk.
Gallery identity 0 (Market-1501 distractors) is an identity like any other that no query has, so its items
are negatives; identity -1 (junk images) is meant to be dropped by the loader.

Exactness and tie-breaking: distances are computed in float32 (features of any dtype are cast) by
:class:`FeatureDistance` and clamped at 0. Each query's gallery is ordered by (distance, gallery index):
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
    >>> from pass_hub.metrics import evaluate_reid
    >>> gallery = torch.randn(100, 64)
    >>> gallery_pids, gallery_camids = torch.arange(100) % 20, torch.arange(100) % 3
    >>> query = gallery[:10] + 0.1 * torch.randn(10, 64)
    >>> result = evaluate_reid(query, gallery, gallery_pids[:10], gallery_pids, torch.full((10,), 5),
    ...                        gallery_camids, max_rank=10)
    >>> round(result["rank1"], 2), result["num_valid_queries"]
    (1.0, 10)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

# The `evaluate` metric module shipped with the package: ``evaluate.load(str(EVALUATE_METRIC_PATH))``.
EVALUATE_METRIC_PATH = Path(__file__).resolve().parent / "evaluate_metric" / "pass_reid"

DISTANCES = ("euclidean", "cosine")
ArrayLike = np.ndarray | torch.Tensor | Sequence[Any]

# Elements of one query x gallery block (32 MB of float32 distances, as much again of int32 histogram bins):
# large enough for an efficient matmul, small enough to bound peak memory whatever the number of queries.
BLOCK_ELEMENTS = 1 << 23
# Order code of junk items: after every real gallery item (real codes are at most that of +inf, 0x7F800000).
JUNK_CODE = torch.iinfo(torch.int32).max
# Each query's histogram of gallery codes has about this many gallery items per bin (see `_match_ranks`).
ITEMS_PER_BIN = 4
# Label-only work (finding each query's true matches) is done this many queries at a time.
LABEL_CHUNK = 4096
STANDARD_RANKS = (1, 5, 10)


def _as_tensor(values: ArrayLike, name: str) -> torch.Tensor:
    """``values`` as a CPU tensor without copying when possible; rejects non-numeric and complex data."""
    if isinstance(values, torch.Tensor):
        tensor = values.detach().cpu()
    else:
        array = np.asarray(values)
        if array.dtype.kind not in "biufc":
            raise TypeError(f"{name} must be numeric, got a numpy array of dtype {array.dtype}")
        if not array.flags.writeable:  # torch.from_numpy needs writable memory; copying is cheaper than a warning
            array = array.copy()
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.is_complex():
        raise TypeError(f"{name} must be real, got {tensor.dtype}")
    return tensor


def _as_labels(values: ArrayLike, name: str, length: int) -> torch.Tensor:
    """Identity or camera labels as a 1-D int64 tensor of ``length`` items."""
    labels = _as_tensor(values, name)
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers, got {labels.dtype}")
    if labels.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(labels.shape)}")
    if len(labels) != length:
        raise ValueError(f"{name} has {len(labels)} items but the matching features/distances have {length} rows")
    return labels.to(torch.int64)


def _check_finite_rows(values: torch.Tensor, name: str) -> None:
    if bool(torch.isfinite(values).all()):
        return
    nan_rows = torch.isnan(values).any(dim=1)
    inf_rows = torch.isinf(values).any(dim=1)
    first = int((nan_rows | inf_rows).nonzero()[0, 0])
    raise ValueError(
        f"{name} has NaN in {int(nan_rows.sum())} and inf in {int(inf_rows.sum())} of {len(values)} rows "
        f"(first bad row: {first}); values are checked after conversion to float32"
    )


def as_feature_matrix(features: ArrayLike, name: str = "features") -> torch.Tensor:
    """Validate ``features`` (numpy or torch, any real dtype and layout) as a contiguous float32 CPU matrix.

    Raises ``ValueError`` for a wrong shape, no rows or columns, and NaN / inf values (naming how many rows),
    ``TypeError`` for non-numeric or complex data.

    Example:
        >>> as_feature_matrix(np.ones((2, 3), dtype=np.float64)).dtype
        torch.float32
    """
    matrix = _as_tensor(features, name)
    if matrix.dtype == torch.bool:
        raise TypeError(f"{name} must be floating point or integer, got {matrix.dtype}")
    if matrix.dim() != 2:
        raise ValueError(f"{name} must be 2-D (num_images, feature_dim), got shape {tuple(matrix.shape)}")
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(matrix.shape)}")
    matrix = matrix.to(torch.float32).contiguous()
    _check_finite_rows(matrix, name)
    return matrix


@dataclass(frozen=True)
class PreparedFeatures:
    """Float32 features ready for :class:`FeatureDistance`: normalised if the distance asks for it."""

    features: torch.Tensor
    # Raw squared Euclidean only: squared norms and the largest norm (to rule out float32 overflow).
    squared_norms: torch.Tensor | None = None
    max_norm: float = 1.0

    def __len__(self) -> int:
        return len(self.features)

    def select(self, rows: torch.Tensor | slice) -> PreparedFeatures:
        norms = None if self.squared_norms is None else self.squared_norms[rows]
        return PreparedFeatures(self.features[rows], norms, self.max_norm)

    @staticmethod
    def concat(first: PreparedFeatures, second: PreparedFeatures) -> PreparedFeatures:
        """The rows of ``first`` then ``second`` (prepared by the same :class:`FeatureDistance`)."""
        norms = None if first.squared_norms is None else torch.cat([first.squared_norms, second.squared_norms])
        return PreparedFeatures(
            torch.cat([first.features, second.features]), norms, max(first.max_norm, second.max_norm)
        )


@dataclass(frozen=True)
class FeatureDistance:
    """Query-gallery distances in float32, computed one block of queries at a time.

    Args:
        distance: ``"euclidean"`` (squared, the Market-1501 convention) or ``"cosine"`` (1 - cosine similarity).
        normalize: L2-normalise the features first (as ``torch.nn.functional.normalize``; all-zero rows stay
            zero). Cosine distance always compares normalised features; on normalised features squared
            Euclidean is twice the cosine distance, so both rank identically.

    Distances are clamped at 0: float32 rounding of 2 - 2 q.g can dip just below it for near-duplicates.

    Example:
        >>> distance = FeatureDistance("cosine")
        >>> queries, gallery = distance.prepare(torch.eye(2)), distance.prepare(torch.ones(1, 2))
        >>> distance(queries, gallery).squeeze(1)
        tensor([0.2929, 0.2929])
    """

    distance: str = "euclidean"
    normalize: bool = True

    def __post_init__(self) -> None:
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {self.distance!r}")

    @property
    def normalizes(self) -> bool:
        return self.normalize or self.distance == "cosine"

    def prepare(self, features: ArrayLike, name: str = "features") -> PreparedFeatures:
        """Validate ``features`` (see :func:`as_feature_matrix`) and normalise them if this distance needs it."""
        matrix = as_feature_matrix(features, name)
        norms = torch.linalg.vector_norm(matrix, dim=1)
        if not bool(torch.isfinite(norms).all()):
            raise ValueError(f"{name} has rows whose L2 norm overflows float32")
        if self.normalizes:
            return PreparedFeatures(matrix / norms.clamp_min(1e-12)[:, None])
        return PreparedFeatures(matrix, norms.square(), float(norms.max()))

    def prepare_pair(
        self, query_features: ArrayLike, gallery_features: ArrayLike
    ) -> tuple[PreparedFeatures, PreparedFeatures]:
        """:meth:`prepare` both sets and check that their feature sizes agree."""
        queries = self.prepare(query_features, "query_features")
        gallery = self.prepare(gallery_features, "gallery_features")
        if queries.features.shape[1] != gallery.features.shape[1]:
            raise ValueError(
                f"query_features have {queries.features.shape[1]} dimensions but gallery_features have "
                f"{gallery.features.shape[1]}"
            )
        return queries, gallery

    def __call__(self, queries: PreparedFeatures, gallery: PreparedFeatures) -> torch.Tensor:
        """The (len(queries), len(gallery)) float32 distance block."""
        if self.distance == "cosine":
            block = torch.addmm(torch.ones(()), queries.features, gallery.features.T, alpha=-1)
        elif self.normalizes:
            block = torch.addmm(torch.full((), 2.0), queries.features, gallery.features.T, alpha=-2)
        else:
            self._check_no_overflow(queries, gallery)
            block = torch.addmm(gallery.squared_norms, queries.features, gallery.features.T, alpha=-2)
            block += queries.squared_norms[:, None]
        return block.clamp_min_(0)

    def paired(self, first: PreparedFeatures, second: PreparedFeatures) -> torch.Tensor:
        """Distances between matching rows of ``first`` and ``second`` (equal to the block's up to rounding)."""
        dots = (first.features * second.features).sum(dim=1)
        if self.distance == "cosine":
            distances = 1 - dots
        elif self.normalizes:
            distances = 2 - 2 * dots
        else:
            self._check_no_overflow(first, second)
            distances = first.squared_norms + second.squared_norms - 2 * dots
        return distances.clamp_min_(0)

    @staticmethod
    def _check_no_overflow(first: PreparedFeatures, second: PreparedFeatures) -> None:
        if (first.max_norm + second.max_norm) ** 2 >= torch.finfo(torch.float32).max:
            raise ValueError(
                "unnormalised squared Euclidean distances of these features overflow float32 "
                f"(largest norms {first.max_norm:.3g} and {second.max_norm:.3g}); use normalize=True"
            )


def pairwise_distance(
    query_features: ArrayLike, gallery_features: ArrayLike, *, distance: str = "euclidean", normalize: bool = True
) -> torch.Tensor:
    """The full (Q, G) float32 distance matrix used by :func:`evaluate_reid` (for small sets and inspection).

    Example:
        >>> pairwise_distance(torch.eye(2), torch.eye(2))
        tensor([[0., 2.],
                [2., 0.]])
    """
    metric = FeatureDistance(distance, normalize)
    return metric(*metric.prepare_pair(query_features, gallery_features))


def order_codes(distances: torch.Tensor) -> torch.Tensor:
    """Int32 codes that order each row of a ``distances`` block like its values; equal codes mean equal values.

    Float32 rows are ranked by (code, column index): this is the stable-sort order, and ties are exact.
    Non-negative float32 values are their own codes (IEEE bits order like the values); negative ones are
    negated bit patterns, so -0.0 and +0.0 share a code. Float64 has no 32-bit order-preserving code, so its
    code is each item's position in a stable sort of the row (unique, slower). The float32 fast path returns
    a view of ``distances``.

    Example:
        >>> codes = order_codes(torch.tensor([[0.5, -0.0, 0.0, -1.0]]))
        >>> codes[0, 1] == codes[0, 2], codes.argsort(dim=1, stable=True)
        (tensor(True), tensor([[3, 1, 2, 0]]))
    """
    if distances.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"order_codes takes float32 or float64 distances, got {distances.dtype}")
    if distances.dtype == torch.float64:
        order = torch.sort(distances, dim=1, stable=True).indices
        position = torch.arange(distances.shape[1], dtype=torch.int32).expand(order.shape)
        return torch.empty(order.shape, dtype=torch.int32).scatter_(1, order, position)
    bits = distances.contiguous().view(torch.int32)
    if not bool((bits < 0).any()):
        return bits
    sign = bits >> 31  # -1 for negative floats (and -0.0), 0 otherwise
    magnitude = bits & 0x7FFFFFFF
    magnitude ^= sign
    return magnitude.sub_(sign)  # two's complement negation where sign == -1


def order_keys(codes: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
    """Unique int64 keys ordering items by (code, column): exact stable-sort order, e.g. for ``topk``.

    ``columns`` are the items' columns (default: ``0..codes.shape[-1] - 1`` along the last dimension).

    Example:
        >>> order_keys(torch.tensor([[7, 3, 7]], dtype=torch.int32)).argsort(dim=1)
        tensor([[1, 0, 2]])
    """
    columns = torch.arange(codes.shape[-1]) if columns is None else columns
    return torch.add(columns, codes, alpha=1 << 32)  # computed in int64


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
            _as_labels(query_pids, "query_pids", num_query),
            _as_labels(gallery_pids, "gallery_pids", num_gallery),
            _as_labels(query_camids, "query_camids", num_query),
            _as_labels(gallery_camids, "gallery_camids", num_gallery),
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


def check_integer(value: Any, name: str, minimum: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an ``int`` (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


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
        from .reranking import KReciprocalReranker  # reranking builds on this module's distances

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
    matrix = _as_tensor(distances, "distances")
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
