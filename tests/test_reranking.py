"""k-reciprocal re-ranking and Jaccard distances against the straightforward dense reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference_reid import dense_jaccard, dense_rerank, k_reciprocal_vectors

from pass_hub.evaluation.metrics import evaluate_distance_matrix, evaluate_reid, pairwise_distance
from pass_hub.evaluation.reranking import KReciprocalReranker, jaccard_distance


def make_features(seed: int, num: int, dim: int = 8) -> np.ndarray:
    """Gaussian features, or (every third seed) a few prototypes repeated: exact distance ties."""
    rng = np.random.default_rng(seed)
    if seed % 3 == 2:
        return rng.normal(size=(4, dim)).astype(np.float32)[rng.integers(0, 4, num)]
    return rng.normal(size=(num, dim)).astype(np.float32)


@pytest.mark.parametrize("seed", range(24))
def test_rerank_matches_dense_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_query, num_gallery = int(rng.integers(1, 15)), int(rng.integers(2, 60))
    k1, k2 = int(rng.integers(1, 25)), int(rng.integers(1, 9))  # k1 + 1 often exceeds the number of items
    lambda_value, distance = float(rng.uniform()), ("euclidean", "cosine")[seed % 2]
    features = make_features(seed, num_query + num_gallery)
    query, gallery = features[:num_query], features[num_query:]
    expected = dense_rerank(pairwise_distance(features, features, distance=distance).numpy(), num_query, k1, k2,
                            lambda_value)  # fmt: skip
    result = KReciprocalReranker(query, gallery, k1=k1, k2=k2, lambda_value=lambda_value, distance=distance).distances()
    assert result.dtype == torch.float32 and result.shape == (num_query, num_gallery)
    np.testing.assert_allclose(result.numpy(), expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("seed", range(8))
def test_jaccard_distance_matches_dense_reference(seed: int) -> None:
    features = make_features(seed, 30 + 10 * seed)
    k1, k2 = (30, 6) if seed % 2 else (5 + seed, 1 + seed % 4)
    _, vectors = k_reciprocal_vectors(pairwise_distance(features, features).numpy(), k1, k2)
    everything = np.arange(len(features))
    result = jaccard_distance(features, k1=k1, k2=k2)
    np.testing.assert_allclose(result.numpy(), dense_jaccard(vectors, everything, everything), rtol=0, atol=2e-6)
    np.testing.assert_allclose(result.numpy(), result.numpy().T, atol=1e-6)  # sum(min) is symmetric


def test_blocks_do_not_depend_on_chunking() -> None:
    query, gallery = make_features(0, 20), make_features(1, 70)
    whole = KReciprocalReranker(query, gallery).distances()
    chunked = KReciprocalReranker(query, gallery, chunk_size=3)
    np.testing.assert_allclose(chunked.distances().numpy(), whole.numpy(), atol=1e-6)
    np.testing.assert_allclose(chunked.block(torch.tensor([7, 2])).numpy(), whole[[7, 2]].numpy(), atol=1e-6)


def test_evaluate_reid_with_reranking() -> None:
    rng = np.random.default_rng(0)
    identities = rng.normal(size=(12, 16))
    query_pids, gallery_pids = rng.integers(0, 12, 30), rng.integers(0, 12, 150)
    query = identities[query_pids] + 0.8 * rng.normal(size=(30, 16))
    gallery = identities[gallery_pids] + 0.8 * rng.normal(size=(150, 16))
    cameras = {"query_camids": np.zeros(30, int), "gallery_camids": np.ones(150, int)}
    labels = {"query_pids": query_pids, "gallery_pids": gallery_pids, **cameras}
    reranked = evaluate_reid(query, gallery, **labels, rerank=True, k1=10, k2=3, return_per_query=True)
    reranked_distances = KReciprocalReranker(query, gallery, k1=10, k2=3).distances()
    expected = evaluate_distance_matrix(reranked_distances, **labels, return_per_query=True)
    for key, value in expected.items():
        np.testing.assert_array_equal(reranked[key], value, err_msg=key)
    # On clustered features re-ranking helps, as it should.
    assert reranked["mAP"] > evaluate_reid(query, gallery, **labels)["mAP"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"k1": 0}, "k1 must be an integer >= 1"),
        ({"k2": 0}, "k2 must be"),
        ({"k1": 2.5}, "k1 must be"),
        ({"lambda_value": 1.5}, r"lambda_value must be in \[0, 1\]"),
        ({"distance": "l1"}, "distance must be one of"),
    ],
)
def test_bad_options(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KReciprocalReranker(np.ones((2, 3)), np.ones((4, 3)), **options)


def test_bad_features() -> None:
    with pytest.raises(ValueError, match=r"have 3 dimensions but gallery_features have 4"):
        KReciprocalReranker(np.ones((2, 3)), np.ones((4, 4)))
    with pytest.raises(ValueError, match="NaN in 1"):
        jaccard_distance(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="empty"):
        KReciprocalReranker(np.ones((0, 3)), np.ones((4, 3)))
