"""Feature distances for ReID in float32, block by block, with exact tie-breaking codes.

Shared by :mod:`pass_hub.metrics` (ranking queries against a gallery) and :mod:`pass_hub.reranking`
(k-reciprocal neighbourhoods). Distances are computed in float32 (features of any dtype are cast) by
:class:`FeatureDistance` and clamped at 0; :func:`order_codes` / :func:`order_keys` turn a block of distances
into integer keys whose order is the stable-sort order, ties included, so no row ever needs a full sort.

Example:
    >>> pairwise_distance(torch.eye(2), torch.ones(1, 2)).squeeze(1)
    tensor([0.5858, 0.5858])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

DISTANCES = ("euclidean", "cosine")
ArrayLike = np.ndarray | torch.Tensor | Sequence[Any]

# Elements of one query x gallery block (32 MB of float32 distances, as much again of int32 histogram bins):
# large enough for an efficient matmul, small enough to bound peak memory whatever the number of queries.
BLOCK_ELEMENTS = 1 << 23


def as_tensor(values: ArrayLike, name: str) -> torch.Tensor:
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
    matrix = as_tensor(features, name)
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


def check_integer(value: Any, name: str, minimum: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an ``int`` (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def as_labels(values: ArrayLike, name: str, length: int) -> torch.Tensor:
    """Identity or camera labels as a 1-D int64 tensor of ``length`` items."""
    labels = as_tensor(values, name)
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers, got {labels.dtype}")
    if labels.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(labels.shape)}")
    if len(labels) != length:
        raise ValueError(f"{name} has {len(labels)} items but the matching features/distances have {length} rows")
    return labels.to(torch.int64)
