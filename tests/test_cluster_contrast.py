"""Cluster-contrast building blocks against straightforward references: the sparse Jaccard graph, DBSCAN
pseudo-labels, centroids, the loss and the hardest-instance memory update."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.cluster import DBSCAN

from pass_hub.evaluation.reranking import jaccard_distance, jaccard_neighbours
from training.cluster_contrast.clustering import center_per_camera, cluster_centroids, cluster_pseudo_labels
from training.cluster_contrast.memory import ClusterMemory, cluster_contrast_loss, hardest_instance_update


def blobs(seed: int, sizes: list[int], outliers: int, dim: int = 32, noise: float = 0.15):
    """Tight clusters around random directions plus isolated points, shuffled; truth -1 for the isolated ones."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(sizes), dim))
    members = [centers[c] + noise * rng.normal(size=(n, dim)) for c, n in enumerate(sizes)]
    features = np.concatenate([*members, rng.normal(size=(outliers, dim))])
    truth = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)] + [np.full(outliers, -1)])
    order = rng.permutation(len(truth))
    return torch.from_numpy(features[order].astype(np.float32)), truth[order]


@pytest.mark.parametrize("convention", ["reranking", "cluster_contrast"])
@pytest.mark.parametrize("seed", range(4))
def test_sparse_jaccard_graph_holds_exactly_the_close_pairs_and_dbscan_agrees(seed, convention):
    rng = np.random.default_rng(seed)
    features = torch.from_numpy(rng.normal(size=(60 + 30 * seed, 8)).astype(np.float32))
    if seed % 2:
        features[5] = features[9]  # a duplicate: Jaccard distance 0 (or a hair below) must stay an entry
    eps, k1, k2 = (0.6, 0.7, 0.8, 0.5)[seed], 6 + 4 * seed, 1 + seed
    dense = jaccard_distance(features, k1=k1, k2=k2, convention=convention).clamp(min=0).numpy()
    graph = jaccard_neighbours(features, eps, k1=k1, k2=k2, convention=convention)
    rows, columns = np.nonzero(dense <= eps)
    assert graph.nnz == len(rows)
    np.testing.assert_array_equal(np.asarray(graph[rows, columns]).ravel(), dense[rows, columns])
    if seed % 2:
        assert (5, 9) in graph.todok() and abs(graph[5, 9]) < 1e-6 and graph.has_canonical_format
    for min_samples in (2, 4):
        expected = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(dense)
        labels = cluster_pseudo_labels(features, eps=eps, min_samples=min_samples, k1=k1, k2=k2, jaccard=convention)
        np.testing.assert_array_equal(labels, expected)


def test_pseudo_labels_recover_known_clusters_and_drop_outliers():
    # Clusters larger than k1 + 1: a member's k1 nearest neighbours are its own cluster.
    features, truth = blobs(0, sizes=[8, 9, 10, 11, 12, 13], outliers=4)
    labels = cluster_pseudo_labels(features, eps=0.6, min_samples=4, k1=7, k2=2)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels < 0, truth < 0)
    assert sorted(set(labels[labels >= 0].tolist())) == list(range(6))
    pairs = set(zip(truth[truth >= 0].tolist(), labels[labels >= 0].tolist(), strict=True))
    assert len(pairs) == 6  # one label per true cluster and vice versa


def test_center_per_camera_matches_a_loop_over_cameras():
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(30, 8, generator=generator) * 3
    camids = np.array([5, 1, 1, 7, 5, 1] * 5)
    expected = F.normalize(features, dim=1)
    for camera in set(camids.tolist()):
        rows = torch.from_numpy(camids == camera)
        expected[rows] -= expected[rows].mean(dim=0)
    torch.testing.assert_close(center_per_camera(features, camids), F.normalize(expected, dim=1))


def test_camera_centering_makes_clusters_follow_people_not_cameras():
    # Each image = a strong offset of its camera + a weaker signature of its person, seen by every camera.
    rng = np.random.default_rng(4)
    people, cameras, shots = 6, 3, 4
    person = rng.normal(size=(people, 32))
    camera = 3 * rng.normal(size=(cameras, 32))
    pids, camids = np.divmod(np.arange(people * cameras * shots) // shots, cameras)
    noise = 0.1 * rng.normal(size=(len(pids), 32))
    features = torch.from_numpy((person[pids] + camera[camids] + noise).astype(np.float32))
    raw = cluster_pseudo_labels(features, eps=0.6, min_samples=3, k1=10, k2=2)
    centred = cluster_pseudo_labels(center_per_camera(features, camids), eps=0.6, min_samples=3, k1=10, k2=2)
    # Without: each cluster holds one camera and several people.
    raw_pairs = set(zip(raw.tolist(), camids.tolist(), strict=True))
    assert len(raw_pairs) == len(set(raw.tolist())) < people * cameras
    assert (centred >= 0).all()
    assert len(set(zip(centred.tolist(), pids.tolist(), strict=True))) == len(set(centred.tolist())) == people


def test_centroids_are_normalised_means_of_the_features_as_given():
    # The original averages the features it clustered (not unit vectors for the per-token necks' concatenation),
    # then normalises the mean: a long member weighs more than a short one.
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(20, 6, generator=generator) * torch.rand(20, 1, generator=generator) * 5
    labels = np.array([2, 0, 1, -1] * 5)
    centroids = cluster_centroids(features, labels)
    assert centroids.shape == (3, 6)
    for cluster in range(3):
        members = [features[i] for i in range(20) if labels[i] == cluster]
        expected = F.normalize(torch.stack(members).mean(dim=0), dim=0)
        torch.testing.assert_close(centroids[cluster], expected)
    assert cluster_centroids(features, np.full(20, -1)).shape == (0, 6)


def test_loss_matches_a_loop_over_samples():
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(10, 16, generator=generator, dtype=torch.float64, requires_grad=True)
    centroids = F.normalize(torch.randn(5, 16, generator=generator, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 5, (10,), generator=generator)
    loss = cluster_contrast_loss(features, centroids, labels, temperature=0.05)
    terms = []
    for i in range(10):
        unit = features[i] / features[i].norm()
        scores = torch.stack([unit @ centroids[c] / 0.05 for c in range(5)])
        terms.append(torch.log(torch.exp(scores).sum()) - scores[labels[i]])
    torch.testing.assert_close(loss, torch.stack(terms).mean())
    loss.backward()
    assert torch.isfinite(features.grad).all()


def reference_update(centroids, features, labels, momentum):
    updated = centroids.clone()
    for cluster in sorted(set(labels.tolist())):
        members = [i for i in range(len(labels)) if labels[i] == cluster]
        similarities = [float(F.normalize(features[i], dim=0) @ centroids[cluster]) for i in members]
        hardest = members[similarities.index(min(similarities))]  # the first on ties
        mixed = momentum * centroids[cluster] + (1 - momentum) * F.normalize(features[hardest], dim=0)
        updated[cluster] = mixed / mixed.norm()
    return updated


@pytest.mark.parametrize("seed", range(5))
def test_hardest_instance_update_matches_a_loop_over_clusters(seed):
    generator = torch.Generator().manual_seed(seed)
    centroids = F.normalize(torch.randn(7, 8, generator=generator), dim=1)
    features = torch.randn(16, 8, generator=generator)
    labels = torch.randint(0, 5, (16,), generator=generator)  # clusters 5 and 6 are not in the batch
    updated = hardest_instance_update(centroids, features, labels, momentum=0.2)
    torch.testing.assert_close(updated, reference_update(centroids, features, labels, 0.2))
    assert torch.equal(updated[5:], centroids[5:])
    torch.testing.assert_close(updated.norm(dim=1), torch.ones(7))


def test_memory_loss_update_and_checkpoint_round_trip():
    features, _ = blobs(3, sizes=[5, 5, 5], outliers=0, dim=8)
    labels = np.repeat([0, 1, 2], 5)
    memory = ClusterMemory(dim=8, temperature=0.05, momentum=0.2)
    assert memory.num_clusters == 0 and int(memory.epoch) == -1
    memory.reset(cluster_centroids(features, labels), labels, epoch=3)
    batch, batch_labels = features[[0, 1, 5, 6]], torch.tensor([0, 0, 1, 1])
    torch.testing.assert_close(memory(batch, batch_labels),
                               cluster_contrast_loss(batch, memory.centroids, batch_labels, 0.05))
    before = memory.centroids.clone()
    memory.update(batch, batch_labels)
    torch.testing.assert_close(memory.centroids, hardest_instance_update(before, batch, batch_labels, 0.2))

    restored = ClusterMemory(dim=8)  # other sizes: a checkpoint of another epoch loads into it
    restored.reset(torch.zeros(9, 8), np.zeros(40, dtype=np.int64), epoch=0)
    restored.load_state_dict(memory.state_dict())
    for name, buffer in memory.state_dict().items():
        assert torch.equal(restored.state_dict()[name], buffer), name
    assert restored.num_clusters == 3 and int(restored.epoch) == 3
