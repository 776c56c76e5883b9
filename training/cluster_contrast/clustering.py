"""Clustering of cluster-contrast (USL / UDA): pseudo-labels by DBSCAN on k-reciprocal Jaccard distances (outliers
get the label -1 and sit the epoch out), camera centring, and the normalised mean feature of each cluster.

Example:
    >>> features = torch.cat([torch.eye(4)[k].repeat(5, 1) + 0.01 * torch.randn(5, 4) for k in range(4)])
    >>> labels = cluster_pseudo_labels(features, eps=0.6, min_samples=3, k1=6, k2=2)
    >>> sorted(set(labels.tolist())), tuple(cluster_centroids(features, labels).shape)
    ([0, 1, 2, 3], (4, 4))
"""


from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pass_hub.evaluation.reranking import jaccard_neighbours


def cluster_pseudo_labels(
    features: torch.Tensor,
    *,
    eps: float = 0.6,
    min_samples: int = 4,
    k1: int = 30,
    k2: int = 6,
    jaccard: str = "cluster_contrast",
    normalize: bool = True,
) -> np.ndarray:
    """Pseudo-labels of ``features`` (N, D): DBSCAN (``metric="precomputed"``) on k-reciprocal Jaccard distances.

    ``jaccard`` names the convention of :mod:`pass_hub.reranking`: ``"cluster_contrast"`` (the original
    clustering code) or ``"reranking"`` (Zhong et al.'s, as evaluation uses); ``normalize=False`` clusters the
    features as they are (the original does not normalise them again).

    Returns:
        (N,) int64 labels: clusters ``0..C-1`` (numbered in order of discovery, as DBSCAN does), -1 for outliers.
    """
    return cluster_with_distances(features, eps=eps, min_samples=min_samples, k1=k1, k2=k2, jaccard=jaccard,
                                  normalize=normalize)[0]


def cluster_with_distances(
    features: torch.Tensor, *, eps: float, min_samples: int, k1: int, k2: int, jaccard: str, normalize: bool
) -> tuple[np.ndarray, Any]:
    """:func:`cluster_pseudo_labels`, and the sparse matrix of every Jaccard distance <= ``eps`` DBSCAN clustered
    (only those make neighbours, so it gives the labels of the dense matrix)."""
    from sklearn.cluster import DBSCAN

    distances = jaccard_neighbours(features, eps, k1=k1, k2=k2, convention=jaccard, normalize=normalize)
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(distances)
    return labels.astype(np.int64), distances


def center_per_camera(features: torch.Tensor, camids: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``features`` (N, D) minus the mean feature of their camera, L2-normalised again.

    Features of one camera share its background and lighting; taking that shared part away makes clusters follow
    people rather than cameras (the idea behind camera-based normalisation, Zhuang et al., ECCV 2020).

    Example:
        >>> features = torch.tensor([[1.0, 0.1], [1.0, -0.1], [0.1, 1.0], [-0.1, 1.0]])
        >>> center_per_camera(features, np.array([0, 0, 1, 1]))
        tensor([[ 0.,  1.],
                [ 0., -1.],
                [ 1.,  0.],
                [-1.,  0.]])
    """
    features = F.normalize(features.float(), dim=1)
    cameras, index = torch.unique(torch.as_tensor(camids, device=features.device), return_inverse=True)
    means = _sums_by_group(features, index, len(cameras)) / torch.bincount(index, minlength=len(cameras)).unsqueeze(1)
    return F.normalize(features - means[index], dim=1)


def _sums_by_group(features: torch.Tensor, index: torch.Tensor, num_groups: int) -> torch.Tensor:
    """(num_groups, D) sums of the rows of ``features`` that ``index`` puts in each group."""
    return torch.zeros(num_groups, features.shape[1], device=features.device).index_add_(0, index, features)


def cluster_centroids(features: torch.Tensor, labels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(C, D) L2-normalised mean of the features of each cluster ``0..C-1``, as given (the original averages the
    features it clustered, then normalises); outliers (-1) ignored."""
    labels = torch.as_tensor(labels, device=features.device)
    kept = labels >= 0
    num_clusters = int(labels.max()) + 1 if kept.any() else 0
    members = labels[kept]
    sums = _sums_by_group(features.float()[kept], members, num_clusters)
    return F.normalize(sums / torch.bincount(members, minlength=num_clusters).unsqueeze(1), dim=1)
