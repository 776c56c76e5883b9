"""Losses of ReID fine-tuning, as pure functions on tensors.

Batch-hard triplet (spec §4): for every anchor, its farthest positive and closest negative in the batch by
Euclidean distance; soft margin ``log(1 + exp(d_ap - d_an))`` unless a hard margin is given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def euclidean_distances(features: torch.Tensor) -> torch.Tensor:
    """(N, N) Euclidean distances, with a floor that keeps the square root differentiable at 0."""
    squared = features.square().sum(dim=1)
    distances = squared[:, None] + squared[None, :] - 2 * features @ features.T
    return distances.clamp(min=1e-12).sqrt()


def batch_hard_triplet_loss(features: torch.Tensor, labels: torch.Tensor, margin: float | None = None) -> torch.Tensor:
    """Batch-hard triplet loss on un-normalised features (the PASS pre-neck feature).

    Args:
        features: (N, D) embeddings.
        labels: (N,) identity labels; every anchor needs a positive and a negative in the batch.
        margin: ``None`` for the soft margin ``softplus(d_ap - d_an)``, else ``relu(d_ap - d_an + margin)``.

    Example:
        >>> feats = torch.tensor([[0.0, 0.0], [0.0, 1.0], [5.0, 0.0], [5.0, 1.0]])
        >>> round(batch_hard_triplet_loss(feats, torch.tensor([0, 0, 1, 1]), margin=0.3).item(), 4)
        0.0
    """
    same = labels[:, None] == labels[None, :]
    if not (same.sum(dim=1) > 1).all() or same.all(dim=1).any():
        raise ValueError("batch-hard triplet needs a positive and a negative for every anchor (use P x K batches)")
    distances = euclidean_distances(features)
    hardest_positive = distances.masked_fill(~same, float("-inf")).amax(dim=1)
    hardest_negative = distances.masked_fill(same, float("inf")).amin(dim=1)
    gap = hardest_positive - hardest_negative
    return (F.softplus(gap) if margin is None else F.relu(gap + margin)).mean()
