"""The cluster memory of cluster-contrast (USL / UDA): every cluster is represented by the normalised mean of its
members' features. Training minimises the cross-entropy of ``normalise(feature) . memory / temperature`` against
the pseudo-label; after each batch, the member of each cluster that is least similar to its centroid (the hardest
instance) moves the centroid: ``m <- normalise(momentum * m + (1 - momentum) * f)`` (the original's
``--use-hard``; without it, every member of the batch does, one after the other).

Example:
    >>> from training.cluster_contrast.clustering import cluster_centroids
    >>> features = torch.cat([torch.eye(4)[k].repeat(5, 1) + 0.01 * torch.randn(5, 4) for k in range(4)])
    >>> labels = np.repeat(np.arange(4), 5)
    >>> memory = ClusterMemory(dim=4)
    >>> memory.reset(cluster_centroids(features, labels), labels, epoch=0)
    >>> memory.num_clusters, bool(memory(features[:8], torch.as_tensor(labels[:8])) < 1)
    (4, True)
"""


from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def cluster_contrast_loss(
    features: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor, temperature: float = 0.05
) -> torch.Tensor:
    """Cross-entropy of ``normalise(features) . centroids / temperature`` against the pseudo-labels.

    Example:
        >>> centroids = torch.eye(3)
        >>> round(cluster_contrast_loss(torch.eye(3), centroids, torch.arange(3), temperature=1.0).item(), 4)
        0.5514
    """
    # In the memory's precision: under mixed precision the features come in half precision.
    return F.cross_entropy(F.normalize(features.to(centroids.dtype), dim=1) @ centroids.T / temperature, labels)


@torch.no_grad()
def hardest_instance_update(
    centroids: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, momentum: float = 0.2
) -> torch.Tensor:
    """The centroids after one batch: for every cluster in ``labels``, its member least similar to its centroid
    (the first such member on ties) gives ``normalise(momentum * m + (1 - momentum) * normalise(f))``.

    Example:
        >>> hardest_instance_update(torch.eye(2), torch.tensor([[1.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 0]))
        tensor([[0.8043, 0.5942],
                [0.0000, 1.0000]])
    """
    features = F.normalize(features.float(), dim=1)
    similarity = (features * centroids[labels]).sum(dim=1)
    # Sort by similarity, then (stably) by label: the first entry of each label's run is its hardest member.
    order = torch.argsort(similarity, stable=True)
    order = order[torch.argsort(labels[order], stable=True)]
    clusters, counts = torch.unique_consecutive(labels[order], return_counts=True)
    hardest = order[counts.cumsum(0) - counts]
    updated = centroids.clone()
    updated[clusters] = F.normalize(momentum * centroids[clusters] + (1 - momentum) * features[hardest], dim=1)
    return updated


@torch.no_grad()
def every_instance_update(
    centroids: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, momentum: float = 0.2
) -> torch.Tensor:
    """The centroids after one batch when every member moves its centroid, one after the other in batch order:
    ``m <- normalise(momentum * m + (1 - momentum) * normalise(f))`` (the original without ``--use-hard``).

    Example:
        >>> every_instance_update(torch.eye(2), torch.tensor([[0.0, 1.0], [0.0, 1.0]]), torch.tensor([0, 0]))
        tensor([[0.0487, 0.9988],
                [0.0000, 1.0000]])
    """
    features = F.normalize(features.float(), dim=1)
    updated = centroids.clone()
    for feature, label in zip(features, labels.tolist(), strict=True):
        updated[label] = F.normalize(momentum * updated[label] + (1 - momentum) * feature, dim=0)
    return updated


MEMORY_UPDATES = {"hardest": hardest_instance_update, "every_instance": every_instance_update}


class ClusterMemory(nn.Module):
    """The cluster-centroid memory of one epoch, with the pseudo-labels it was built from.

    Everything lives in buffers, so ``accelerator.register_for_checkpointing(memory)`` saves it and a run resumed
    mid-epoch goes on with the same clusters (they cannot be recomputed: the model has moved on since).

    Buffers:
        centroids: (C, D) L2-normalised cluster centroids.
        labels: (N,) pseudo-label of every training image, -1 for outliers.
        epoch: The epoch the clusters were made for (-1: none yet).

    Args:
        dim: Feature size D.
        temperature: Softmax temperature of the loss (0.05).
        momentum: Weight of the old centroid in the update (0.2).
        update: ``"hardest"`` (:func:`hardest_instance_update`) or ``"every_instance"``
            (:func:`every_instance_update`).
    """

    def __init__(self, dim: int, temperature: float = 0.05, momentum: float = 0.2, update: str = "hardest") -> None:
        super().__init__()
        if update not in MEMORY_UPDATES:
            raise ValueError(f"memory update {update!r}; expected one of {sorted(MEMORY_UPDATES)}")
        self.temperature, self.momentum, self.update_rule = temperature, momentum, update
        self.register_buffer("centroids", torch.zeros(0, dim))
        self.register_buffer("labels", torch.zeros(0, dtype=torch.int64))
        self.register_buffer("epoch", torch.tensor(-1))

    @property
    def num_clusters(self) -> int:
        return self.centroids.shape[0]

    def reset(self, centroids: torch.Tensor, labels: np.ndarray | torch.Tensor, epoch: int) -> None:
        """Start an epoch with new clusters."""
        device = self.centroids.device
        self.centroids = centroids.detach().float().to(device)
        self.labels = torch.as_tensor(labels, dtype=torch.int64).to(device)
        self.epoch = torch.tensor(epoch, device=device)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The cluster-contrast loss of a batch (``labels``: its pseudo-labels)."""
        return cluster_contrast_loss(features, self.centroids, labels, self.temperature)

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Update with a batch; pass the batch of all processes to keep replicas identical."""
        self.centroids = MEMORY_UPDATES[self.update_rule](self.centroids, features.detach(), labels, self.momentum)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # The number of clusters changes every epoch: take the saved sizes before copying.
        for name in ("centroids", "labels"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=self.epoch.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
