"""Plain references for the ReID evaluation tests and benchmark, written from the protocol description.

``classic_evaluate`` is the classic Market-1501 evaluation every toolkit uses: full distance matrix, ``argsort``
of each row, per-query loop. ``dense_rerank`` / ``dense_jaccard`` are the straightforward dense k-reciprocal
re-ranking (Zhong et al., CVPR 2017). Both deliberately share nothing with ``pass_hub`` but the float32
distance matrix they are given, and sort stably so that ties keep gallery order, the documented tie-break.
"""

from __future__ import annotations

import numpy as np


def classic_evaluate(
    distances: np.ndarray,
    query_pids: np.ndarray,
    gallery_pids: np.ndarray,
    query_camids: np.ndarray,
    gallery_camids: np.ndarray,
    max_rank: int = 50,
) -> dict:
    """CMC / mAP / mINP and per-query results, one query at a time over a fully sorted distance matrix."""
    order = np.argsort(distances, axis=1, kind="stable")
    all_cmc, all_ap, all_inp, per_query_ap, ranked_lists = [], [], [], [], []
    for q in range(len(distances)):
        ranked = order[q]
        junk = (gallery_pids[ranked] == query_pids[q]) & (gallery_camids[ranked] == query_camids[q])
        kept = ranked[~junk]
        ranked_lists.append(kept)
        hits = (gallery_pids[kept] == query_pids[q]).astype(np.int64)
        if not hits.any():
            per_query_ap.append(np.nan)
            continue
        cmc = hits.cumsum()
        hardest = np.flatnonzero(hits).max()
        all_inp.append(cmc[hardest] / (hardest + 1.0))
        precision = cmc / np.arange(1.0, len(cmc) + 1)
        all_ap.append((precision * hits).sum() / hits.sum())
        per_query_ap.append(all_ap[-1])
        cmc = np.minimum(cmc, 1)[:max_rank]
        # A gallery shorter than max_rank: the curve has reached 1 and stays there.
        all_cmc.append(np.pad(cmc, (0, max_rank - len(cmc)), mode="edge"))
    if not all_cmc:
        raise AssertionError("no query has a true match")
    return {
        "cmc": np.mean(all_cmc, axis=0),
        "mAP": float(np.mean(all_ap)),
        "mINP": float(np.mean(all_inp)),
        "num_valid_queries": len(all_cmc),
        "per_query_ap": np.array(per_query_ap),
        "ranked_lists": ranked_lists,
    }


def _k_reciprocal(initial_rank: np.ndarray, i: int, k: int) -> np.ndarray:
    forward = initial_rank[i, : k + 1]
    backward = initial_rank[forward, : k + 1]
    return forward[(backward == i).any(axis=1)]


def k_reciprocal_vectors(distances: np.ndarray, k1: int, k2: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-max-normalised distances and the dense k-reciprocal vectors V after local query expansion."""
    distances = distances / np.maximum(distances.max(axis=1, keepdims=True), np.finfo(np.float32).tiny)
    initial_rank = np.argsort(distances, axis=1, kind="stable")
    num = len(distances)
    vectors = np.zeros((num, num))
    for i in range(num):
        reciprocal = _k_reciprocal(initial_rank, i, k1)
        expansion = list(reciprocal)
        for candidate in reciprocal:
            candidate_set = _k_reciprocal(initial_rank, candidate, round(k1 / 2))
            if len(np.intersect1d(candidate_set, reciprocal)) > 2 / 3 * len(candidate_set):
                expansion.extend(candidate_set)
        expansion = np.unique(np.array(expansion, dtype=np.int64))  # may be empty when duplicates crowd i out
        weights = np.exp(-distances[i, expansion].astype(np.float64))
        vectors[i, expansion] = weights / weights.sum()
    if k2 != 1:
        vectors = np.stack([vectors[initial_rank[i, :k2]].mean(axis=0) for i in range(num)])
    return distances, vectors


def dense_jaccard(vectors: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Jaccard distance 1 - sum(min) / sum(max) between rows and columns of V (rows of V sum to 1)."""
    overlap = np.minimum(vectors[rows][:, None, :], vectors[columns][None, :, :]).sum(axis=2)
    return 1 - overlap / (2 - overlap)


def dense_rerank(all_distances: np.ndarray, num_query: int, k1: int, k2: int, lambda_value: float) -> np.ndarray:
    """Re-ranked (Q, G) distances from the (Q+G, Q+G) distance matrix of queries then gallery."""
    distances, vectors = k_reciprocal_vectors(all_distances, k1, k2)
    num = len(distances)
    jaccard = dense_jaccard(vectors, np.arange(num_query), np.arange(num_query, num))
    return (1 - lambda_value) * jaccard + lambda_value * distances[:num_query, num_query:]
