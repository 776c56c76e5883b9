"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) and k-reciprocal Jaccard distances, memory-bounded.

The algorithm, on all N = Q + G features (queries first):

1. original distance d (squared Euclidean or cosine, as in :class:`pass_hub.distances.FeatureDistance`), each row
   divided by its maximum; neighbours ranked by (distance, index);
2. R(i, k): the k-nearest neighbours j of i (i included) that have i among their own k-nearest;
3. R*(i) = R(i, k1) plus, for every candidate c in it, R(c, round(k1 / 2)) when more than 2/3 of that set
   lies in R(i, k1);
4. k-reciprocal vector V_i: weight exp(-d(i, j)) on j in R*(i), normalised to sum 1;
5. local query expansion (k2 > 1): V_i becomes the mean of V over the k2 nearest neighbours of i;
6. Jaccard distance 1 - sum_k min(V_ik, V_jk) / sum_k max(V_ik, V_jk), via an inverted index of V;
7. re-ranked distance (1 - lambda) * jaccard + lambda * d.

``round`` is Python's (half to even, like ``numpy.around``). Here V is float32 and the Jaccard sums are
float64: results agree with a dense float64 computation to ~1e-6 (tests: 2e-6). Implementations that store V
in float16 to save memory differ from both at the ~1e-3 level.

The clustering code of cluster-contrast (and of PASS's USL / UDA) computes the Jaccard distance with two
differences, selected by ``convention="cluster_contrast"``: its neighbour lists hold k1 items *including* the
image itself (R(i, k1) is the k-reciprocal set of those k1, where re-ranking looks at k1 + 1), and the weights
are ``softmax(-(2 - 2 f_i.f_j))`` over R*(i), not ``exp(-d / row max)`` (on L2-normalised features that is the
squared Euclidean distance; the original also clusters features that are not unit vectors, the concatenation of
normalised neck outputs, and ranks them by squared Euclidean distance while weighting by ``2 - 2 f_i.f_j``; pass
``normalize=False`` for those). R(c, k1 / 2) still looks at round(k1 / 2) + 1 items.

Memory: no dense N x N matrix is ever built. Neighbours come from blocks of ~8M distances (``topk``), V keeps
only its k-reciprocal entries (sparse rows; tens to a few hundred per row), and Jaccard distances are computed
block by block of queries from the inverted index. Time is dominated by the N x N distance matmul and its top-k.
Measured with ``benchmarks/bench_metrics.py`` (whole process, 768-d features, 2 shared cores, k1=20, k2=6):
Market-1501 scale (N = 19,281) ~19 s and 1.4 GB peak RSS; MSMT17 scale (N = 93,820) ~6 min and 2.3 GB.

Example:
    >>> import torch
    >>> from pass_hub.evaluation.reranking import KReciprocalReranker
    >>> query, gallery = torch.randn(5, 32), torch.randn(40, 32)
    >>> KReciprocalReranker(query, gallery, k1=6, k2=3).distances().shape  # dense (Q, G)
    torch.Size([5, 40])
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .distances import (
    BLOCK_ELEMENTS,
    ArrayLike,
    FeatureDistance,
    PreparedFeatures,
    check_integer,
    order_codes,
    order_keys,
)

if TYPE_CHECKING:
    import scipy.sparse

# Pairs of (feature entry, inverted-index entry) summed at once in a Jaccard block; bounds its memory.
JACCARD_PAIRS = 1 << 22
# Feature pairs whose distances are computed at once for the k-reciprocal weights.
WEIGHT_PAIRS = 1 << 14
# "reranking": Zhong et al. 2017 (evaluation); "cluster_contrast": the clustering code of the USL / UDA recipes.
JACCARD_CONVENTIONS = ("reranking", "cluster_contrast")


def _ragged_positions(starts: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For segments ``[starts[s], starts[s] + counts[s])``: the segment of each position, and the positions."""
    owner = torch.repeat_interleave(torch.arange(len(counts)), counts)
    first = counts.cumsum(0) - counts
    return owner, torch.arange(len(owner)) - first[owner] + starts[owner]


@dataclass(frozen=True)
class _SparseRows:
    """Rows of a sparse matrix (compressed sparse rows): row r holds ``indices`` / ``values`` [ptr[r], ptr[r+1])."""

    pointers: torch.Tensor
    indices: torch.Tensor
    values: torch.Tensor

    @classmethod
    def from_sorted(cls, rows: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, num_rows: int) -> _SparseRows:
        """From entries sorted by row."""
        pointers = torch.zeros(num_rows + 1, dtype=torch.int64)
        pointers[1:] = torch.bincount(rows, minlength=num_rows).cumsum(0)
        return cls(pointers, indices, values)

    def gather(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Entries of ``rows``: position of their row in ``rows``, column indices, values."""
        starts = self.pointers[rows]
        owner, positions = _ragged_positions(starts, self.pointers[rows + 1] - starts)
        return owner, self.indices[positions], self.values[positions]

    def transpose(self, rows: torch.Tensor, num_columns: int) -> _SparseRows:
        """The columns of the sub-matrix made of ``rows``, as sparse rows holding positions in ``rows``."""
        owner, columns, values = self.gather(rows)
        order = torch.sort(columns, stable=True).indices
        return _SparseRows.from_sorted(columns[order], owner[order], values[order], num_columns)


def _nearest_neighbours(
    metric: FeatureDistance, features: PreparedFeatures, k: int, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest items of every item by row-max-normalised distance (ties by index), and the row maxima."""
    num = len(features)
    neighbours = torch.empty(num, k, dtype=torch.int64)
    row_max = torch.empty(num)
    for rows in torch.arange(num).split(chunk_size):
        distances = metric(features.select(rows), features)
        row_max[rows] = distances.amax(dim=1).clamp_min_(torch.finfo(torch.float32).tiny)
        distances /= row_max[rows, None]
        neighbours[rows] = torch.topk(order_keys(order_codes(distances)), k, dim=1, largest=False).indices
    return neighbours, row_max


def _row_chunks(num_rows: int, elements_per_row: int) -> tuple[torch.Tensor, ...]:
    """Row indices in chunks of about BLOCK_ELEMENTS intermediate elements."""
    return torch.arange(num_rows).split(max(1, BLOCK_ELEMENTS // max(1, elements_per_row)))


def _reciprocal(neighbours: torch.Tensor) -> torch.Tensor:
    """R(i, k) as ``neighbours`` with -1 where the neighbour does not have i among its own ``neighbours``."""
    reciprocal = torch.empty_like(neighbours)
    for rows in _row_chunks(len(neighbours), neighbours.shape[1] ** 2):
        mutual = (neighbours[neighbours[rows]] == rows[:, None, None]).any(dim=2)
        reciprocal[rows] = neighbours[rows].masked_fill(~mutual, -1)
    return reciprocal


def _expanded_sets(neighbours: torch.Tensor, full: int, half: int) -> tuple[torch.Tensor, torch.Tensor]:
    """R*(i) of every item as sorted (row, column) pairs: the k-reciprocal set among the first ``full`` neighbours,
    expanded by its candidates' k-reciprocal sets among their first ``half``."""
    reciprocal = _reciprocal(neighbours[:, :full])
    half = _reciprocal(neighbours[:, :half])
    half_size = (half >= 0).sum(dim=1)
    rows_out, columns_out = [], []
    for rows in _row_chunks(len(neighbours), reciprocal.shape[1] ** 2 * half.shape[1]):
        own = reciprocal[rows]  # (C, K1), -1 for non-members
        is_candidate = own >= 0
        candidate_sets = half[own.clamp_min(0)]  # (C, K1, K2)
        overlap = ((candidate_sets[..., None] == own[:, None, None, :]) & (candidate_sets[..., None] >= 0)).any(-1)
        # |R(c, k1/2) & R(i, k1)| > 2/3 |R(c, k1/2)|, in integers.
        accepted = is_candidate & (3 * overlap.sum(dim=2) > 2 * half_size[own.clamp_min(0)])
        members = torch.cat([own, candidate_sets.masked_fill(~accepted[..., None], -1).flatten(1)], dim=1)
        members = members.sort(dim=1).values
        duplicate = torch.zeros_like(members, dtype=torch.bool)
        duplicate[:, 1:] = members[:, 1:] == members[:, :-1]
        row, slot = ((members >= 0) & ~duplicate).nonzero(as_tuple=True)
        rows_out.append(rows[row])
        columns_out.append(members[row, slot])
    return torch.cat(rows_out), torch.cat(columns_out)


class KReciprocalEncoding:
    """The k-reciprocal vectors V (after local query expansion) of a feature set, as sparse rows.

    Args:
        metric: How distances are computed.
        features: All items, prepared by ``metric``.
        k1: Size of the k-reciprocal neighbourhoods.
        k2: Neighbours averaged by local query expansion (1: none).
        chunk_size: Rows per distance block (default: ~8M distances per block).
        convention: ``"reranking"`` or ``"cluster_contrast"`` (module docstring).
    """

    def __init__(
        self,
        metric: FeatureDistance,
        features: PreparedFeatures,
        k1: int,
        k2: int,
        chunk_size: int | None = None,
        convention: str = "reranking",
    ) -> None:
        check_integer(k1, "k1", 1)
        check_integer(k2, "k2", 1)
        if convention not in JACCARD_CONVENTIONS:
            raise ValueError(f"convention must be one of {JACCARD_CONVENTIONS}, got {convention!r}")
        num = len(features)
        self.num_items = num
        self.chunk_size = chunk_size or max(1, BLOCK_ELEMENTS // num)
        full = k1 + 1 if convention == "reranking" else k1
        # Lists are cut at the number of items, as slicing a full argsort would.
        depth = min(max(full, k2), num)
        neighbours, self.row_max = _nearest_neighbours(metric, features, depth, self.chunk_size)
        rows, columns = _expanded_sets(neighbours, full, round(k1 / 2) + 1)
        spans = torch.arange(len(rows)).split(WEIGHT_PAIRS)
        if convention == "reranking":
            distances = torch.cat([metric.paired(features.select(rows[span]), features.select(columns[span]))
                                   for span in spans])
            weights = torch.exp(-distances / self.row_max[rows])
        else:  # 2 - 2 f_i.f_j as the original writes it, also for features that are not unit vectors
            dots = torch.cat([(features.features[rows[span]] * features.features[columns[span]]).sum(dim=1)
                              for span in spans])
            logits = 2 * dots - 2
            # softmax over R*(i): shifted by the row's largest logit, as softmax is, so long features cannot overflow
            largest = torch.full((num,), -torch.inf).scatter_reduce_(0, rows, logits, "amax")
            weights = torch.exp(logits - largest[rows])
        weights /= torch.zeros(num).index_add_(0, rows, weights)[rows]
        vectors = _SparseRows.from_sorted(rows, columns, weights, num)
        self.vectors = vectors if k2 == 1 else self._expand(vectors, neighbours[:, :k2])

    def _expand(self, vectors: _SparseRows, neighbours: torch.Tensor) -> _SparseRows:
        """Local query expansion: each row becomes the mean of its neighbours' rows."""
        rows_out, columns_out, values_out = [], [], []
        for rows in torch.arange(self.num_items).split(self.chunk_size):
            owner, columns, values = vectors.gather(neighbours[rows].reshape(-1))
            entry = torch.div(owner, neighbours.shape[1], rounding_mode="floor") * self.num_items + columns
            unique, inverse = torch.unique(entry, return_inverse=True)  # sorted by (row, column)
            summed = torch.zeros(len(unique)).index_add_(0, inverse, values)
            rows_out.append(rows[torch.div(unique, self.num_items, rounding_mode="floor")])
            columns_out.append(unique % self.num_items)
            values_out.append(summed / neighbours.shape[1])
        return _SparseRows.from_sorted(
            torch.cat(rows_out), torch.cat(columns_out), torch.cat(values_out), self.num_items
        )

    def inverted_index(self, targets: torch.Tensor) -> _SparseRows:
        """For every dimension of V, the ``targets`` (as positions in ``targets``) with a non-zero entry there."""
        return self.vectors.transpose(targets, self.num_items)

    def jaccard(self, rows: torch.Tensor, inverted_index: _SparseRows, num_targets: int) -> torch.Tensor:
        """(len(rows), num_targets) float32 Jaccard distances from the items ``rows`` to the ``num_targets``
        targets of ``inverted_index`` (from :meth:`inverted_index`)."""
        overlap = torch.zeros(len(rows) * num_targets, dtype=torch.float64)
        owner, dims, values = self.vectors.gather(rows)
        pair_counts = inverted_index.pointers[dims + 1] - inverted_index.pointers[dims]
        # Entries in groups of at most JACCARD_PAIRS pairs (a single larger entry is its own group).
        group = torch.div(pair_counts.cumsum(0) - pair_counts, JACCARD_PAIRS, rounding_mode="floor")
        group_sizes = torch.bincount(group)
        for members in torch.split(torch.arange(len(dims)), group_sizes[group_sizes > 0].tolist()):
            pair_owner, targets, target_values = inverted_index.gather(dims[members])
            shared = torch.minimum(values[members][pair_owner], target_values).to(torch.float64)
            overlap.index_add_(0, owner[members][pair_owner] * num_targets + targets, shared)
        # Rows of V sum to 1, so sum(max) = 2 - sum(min).
        return (1 - overlap / (2 - overlap)).view(len(rows), num_targets).to(torch.float32)


class KReciprocalReranker:
    """k-reciprocal re-ranking of queries against a gallery: built once, evaluated block by block of queries.

    Args:
        query_features: (Q, D) features (numpy or torch, any real dtype); ``gallery_features``: (G, D).
        k1, k2, lambda_value: The re-ranking parameters (defaults 20, 6, 0.3).
        distance, normalize: The original distance, as in :class:`pass_hub.distances.FeatureDistance`.
        chunk_size: Rows per distance block (default: ~8M distances per block).

    Example:
        >>> reranker = KReciprocalReranker(torch.randn(5, 32), torch.randn(40, 32), k1=6, k2=3)
        >>> reranker.block(torch.tensor([0, 4])).shape, reranker.distances().shape
        (torch.Size([2, 40]), torch.Size([5, 40]))
    """

    def __init__(
        self,
        query_features: ArrayLike,
        gallery_features: ArrayLike,
        *,
        k1: int = 20,
        k2: int = 6,
        lambda_value: float = 0.3,
        distance: str = "euclidean",
        normalize: bool = True,
        chunk_size: int | None = None,
    ) -> None:
        metric = FeatureDistance(distance, normalize)
        queries, gallery = metric.prepare_pair(query_features, gallery_features)
        self._build(metric, queries, gallery, k1, k2, lambda_value, chunk_size)

    @classmethod
    def from_prepared(
        cls,
        metric: FeatureDistance,
        queries: PreparedFeatures,
        gallery: PreparedFeatures,
        *,
        k1: int = 20,
        k2: int = 6,
        lambda_value: float = 0.3,
        chunk_size: int | None = None,
    ) -> KReciprocalReranker:
        """The re-ranker of features already prepared by ``metric`` (as :func:`pass_hub.metrics.evaluate_reid` has)."""
        reranker = cls.__new__(cls)
        reranker._build(metric, queries, gallery, k1, k2, lambda_value, chunk_size)
        return reranker

    def _build(
        self,
        metric: FeatureDistance,
        queries: PreparedFeatures,
        gallery: PreparedFeatures,
        k1: int,
        k2: int,
        lambda_value: float,
        chunk_size: int | None,
    ) -> None:
        if not 0 <= lambda_value <= 1:
            raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value!r}")
        self.metric, self.lambda_value = metric, lambda_value
        self.num_query, self.num_gallery = len(queries), len(gallery)
        self.features = PreparedFeatures.concat(queries, gallery)
        self.encoding = KReciprocalEncoding(metric, self.features, k1, k2, chunk_size)
        gallery_rows = torch.arange(self.num_query, self.num_query + self.num_gallery)
        self.inverted_index = self.encoding.inverted_index(gallery_rows)

    def block(self, query_rows: torch.Tensor) -> torch.Tensor:
        """Re-ranked (len(query_rows), G) float32 distances of the queries at ``query_rows``."""
        gallery = self.features.select(slice(self.num_query, None))
        original = self.metric(self.features.select(query_rows), gallery) / self.encoding.row_max[query_rows, None]
        jaccard = self.encoding.jaccard(query_rows, self.inverted_index, self.num_gallery)
        return jaccard.mul_(1 - self.lambda_value).add_(original, alpha=self.lambda_value)

    def distances(self) -> torch.Tensor:
        """The dense re-ranked (Q, G) float32 distance matrix (Q * G * 4 bytes: fine up to Market scale)."""
        rows = torch.arange(self.num_query).split(self.encoding.chunk_size)
        return torch.cat([self.block(block_rows) for block_rows in rows])


def _jaccard_blocks(
    features: ArrayLike, k1: int, k2: int, distance: str, normalize: bool, convention: str
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(row indices, their (rows, N) float32 Jaccard distances to every item), block by block of rows."""
    metric = FeatureDistance(distance, normalize)
    prepared = metric.prepare(features)
    encoding = KReciprocalEncoding(metric, prepared, k1, k2, convention=convention)
    everything = torch.arange(len(prepared))
    inverted_index = encoding.inverted_index(everything)
    for rows in everything.split(encoding.chunk_size):
        yield rows, encoding.jaccard(rows, inverted_index, len(prepared))


def jaccard_distance(
    features: ArrayLike,
    *,
    k1: int = 30,
    k2: int = 6,
    distance: str = "euclidean",
    normalize: bool = True,
    convention: str = "reranking",
) -> torch.Tensor:
    """Dense (N, N) float32 k-reciprocal Jaccard distances among ``features`` (e.g. for DBSCAN pseudo-labels).

    Steps 1-6 of the module docstring on one feature set, by re-ranking's or cluster-contrast's ``convention``;
    the output is dense, N * N * 4 bytes (fine for training sets of a few thousand to ~20k images), while the
    computation itself stays memory-bounded. :func:`jaccard_neighbours` keeps only the small distances.

    Example:
        >>> distances = jaccard_distance(torch.randn(50, 16), k1=8, k2=3)
        >>> distances.shape, bool((distances.diagonal().abs() < 1e-6).all())
        (torch.Size([50, 50]), True)
    """
    return torch.cat([block for _, block in _jaccard_blocks(features, k1, k2, distance, normalize, convention)])


def jaccard_neighbours(
    features: ArrayLike,
    max_distance: float,
    *,
    k1: int = 30,
    k2: int = 6,
    distance: str = "euclidean",
    normalize: bool = True,
    convention: str = "reranking",
) -> scipy.sparse.csr_matrix:
    """The Jaccard distances of :func:`jaccard_distance` that are <= ``max_distance``, as a sparse (N, N) float32
    matrix: an absent entry is farther, a stored zero is a real zero distance.

    This is the input DBSCAN takes with ``metric="precomputed"`` and ``eps=max_distance``; its memory grows with
    the number of close pairs instead of N * N (dense, MSMT17's 32,621 training images would take 4.3 GB).
    Distances a hair below 0 (rounding of near-duplicates) are stored as 0.

    Example:
        >>> graph = jaccard_neighbours(torch.randn(50, 16), 0.7, k1=8, k2=3)
        >>> graph.shape, bool((graph.data <= 0.7).all()), bool((graph.diagonal() < 1e-6).all())
        ((50, 50), True, True)
    """
    import scipy.sparse

    rows_out, columns_out, values_out, num = [], [], [], 0
    for rows, block in _jaccard_blocks(features, k1, k2, distance, normalize, convention):
        row, column = (block <= max_distance).nonzero(as_tuple=True)
        rows_out.append(rows[row])
        columns_out.append(column)
        values_out.append(block[row, column].clamp_(min=0))
        num = block.shape[1]
    coordinates = (torch.cat(rows_out).numpy(), torch.cat(columns_out).numpy())
    # Built from sorted coordinates without duplicates, so no entry is summed or dropped (zeros stay stored).
    return scipy.sparse.csr_matrix((torch.cat(values_out).numpy(), coordinates), shape=(num, num))
