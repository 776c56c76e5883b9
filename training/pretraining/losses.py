"""Losses of PASS pre-training, as pure functions on tensors.

Part-aware DINO (spec §3): cross-entropy between the centred, sharpened teacher softmax and the student
log-softmax. The CLS output of each teacher global view is matched with the CLS of every other student view
(2 x 11 - 2 = 20 terms); the PART_k output of each teacher global view with PART_k of the other global view and
of the local views of stripe k (8 terms per part). All 44 terms are averaged with equal weight. Without part
outputs (the DINO ablation) only the 20 CLS terms remain.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def part_aware_dino_loss(
    teacher_global: torch.Tensor,
    student_global: torch.Tensor,
    student_local_cls: torch.Tensor,
    student_local_part: torch.Tensor | None,
    centers: torch.Tensor,
    *,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> torch.Tensor:
    """The PASS pre-training loss: centred, sharpened teacher targets against the student's outputs.

    Args:
        teacher_global: (1 + S, 2B, K) teacher head outputs for CLS, PART1..S of both global views
            (rows [0:B] = global view 1).
        student_global: (1 + S, 2B, K) the same for the student.
        student_local_cls: (S*C*B, K) student CLS outputs of the local views, ordered stripe, crop, sample.
        student_local_part: (S*C*B, K) student PART_k outputs of the same local views (k = the stripe); None
            for plain DINO, when ``teacher_global`` holds CLS outputs only (1, 2B, K).
        centers: (1 + S, K) one center per token type.
        student_temp: Student softmax temperature.
        teacher_temp: Teacher softmax temperature.

    Returns:
        Scalar mean over the 2(1 + S*C) CLS terms and 2S(1 + C) part terms, each a batch mean.

    Example:
        >>> g = torch.randn(4, 6, 16)
        >>> part_aware_dino_loss(g, g, torch.randn(27, 16), torch.randn(27, 16), torch.zeros(4, 16)).ndim
        0
    """
    targets = centered_teacher_targets(teacher_global, centers, teacher_temp)
    return part_aware_cross_entropy(
        targets, student_global, student_local_cls, student_local_part, student_temp=student_temp
    )


def centered_teacher_targets(teacher_global: torch.Tensor, centers: torch.Tensor, teacher_temp: float) -> torch.Tensor:
    """DINO's teacher targets: softmax of the centred outputs at the teacher temperature, (1 + S, 2B, K)."""
    return F.softmax((teacher_global - centers[:, None]) / teacher_temp, dim=-1)


@torch.no_grad()
def sinkhorn_knopp_targets(
    teacher_global: torch.Tensor,
    teacher_temp: float,
    iterations: int = 3,
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Teacher targets that spread every batch evenly over the prototypes (DINOv2's alternative to centering).

    Each token type's ``exp(output / teacher_temp)`` is rescaled, alternately, so that every prototype receives
    the same share of the batch and every image a distribution summing to 1 (Sinkhorn-Knopp). No image can then
    take the same prototype as all the others, nor a uniform target, which are DINO's two collapses; short runs
    on little data fall into them with centering.

    Args:
        teacher_global: (1 + S, N, K) teacher head outputs, N images of this process.
        teacher_temp: Teacher temperature.
        iterations: Sinkhorn-Knopp rounds (3 in DINOv2).
        all_reduce_sum: Sums a tensor over processes; None on a single process.

    Returns:
        (1 + S, N, K) targets; each row sums to 1.

    Example:
        >>> logits = torch.randn(1, 8, 4, generator=torch.Generator().manual_seed(0))
        >>> targets = sinkhorn_knopp_targets(logits, teacher_temp=1.0, iterations=20)
        >>> targets.sum(dim=-1).round(decimals=3)  # one distribution per image
        tensor([[1., 1., 1., 1., 1., 1., 1., 1.]])
        >>> targets.sum(dim=1).round(decimals=3)  # each of the 4 prototypes gets 8 / 4 images' worth
        tensor([[2., 2., 2., 2.]])
    """

    def summed(tensor: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(tensor) if all_reduce_sum is not None else tensor

    logits = teacher_global.double() / teacher_temp  # float64: exp of logits up to 1 / teacher_temp stays finite
    # One shift for all processes (their maxima differ), so that every process scales by the same factor.
    shift = summed(logits.amax(dim=(1, 2), keepdim=True)) / summed(torch.ones(1, dtype=logits.dtype))
    weights = torch.exp(logits - shift)
    images = summed(torch.tensor(float(weights.shape[1]), dtype=weights.dtype))
    prototypes = weights.shape[2]
    for _ in range(iterations):
        weights = weights / (summed(weights.sum(dim=1, keepdim=True)) * prototypes)  # each prototype: 1 / K
        weights = weights / (weights.sum(dim=2, keepdim=True) * images)  # each image: 1 / N
    return (weights * images).to(teacher_global.dtype)


def part_aware_cross_entropy(
    teacher_targets: torch.Tensor,
    student_global: torch.Tensor,
    student_local_cls: torch.Tensor,
    student_local_part: torch.Tensor | None,
    *,
    student_temp: float = 0.1,
) -> torch.Tensor:
    """The 44 (or, without parts, 20) cross-entropy terms of PASS between teacher targets and student outputs.

    ``teacher_targets`` are (1 + S, 2B, K) probabilities (:func:`centered_teacher_targets` or
    :func:`sinkhorn_knopp_targets`); the other arguments are those of :func:`part_aware_dino_loss`.
    """
    token_types, two_batch, num_out = teacher_targets.shape
    stripes, batch = token_types - 1, two_batch // 2
    if (student_local_part is None) != (stripes == 0):
        given = "None" if student_local_part is None else "given"
        raise ValueError(f"teacher_global has {stripes} part outputs but student_local_part is {given}")
    local_views = student_local_cls.shape[0] // batch
    if student_local_cls.shape[0] != local_views * batch or (stripes and local_views % stripes):
        raise ValueError(f"{student_local_cls.shape[0]} local outputs do not fit {max(stripes, 1)} stripes x B={batch}")
    if student_local_part is not None and student_local_part.shape != student_local_cls.shape:
        raise ValueError(f"local outputs {tuple(student_local_cls.shape)} / {tuple(student_local_part.shape)} differ")
    teacher = teacher_targets.reshape(token_types, 2, batch, -1)
    student = F.log_softmax(student_global / student_temp, dim=-1).reshape(token_types, 2, batch, -1)
    local_cls = F.log_softmax(student_local_cls / student_temp, dim=-1).reshape(local_views, batch, num_out)

    # cross[t, i, j]: teacher view i vs student view j for token type t; only i != j counts.
    cross = -torch.einsum("tibk,tjbk->tij", teacher, student) / batch
    total = (cross[:, 0, 1] + cross[:, 1, 0]).sum() - torch.einsum("ibk,vbk->", teacher[0], local_cls) / batch
    num_terms = 2 * (1 + local_views)
    if stripes:
        crops = local_views // stripes
        local_part = F.log_softmax(student_local_part / student_temp, dim=-1).reshape(stripes, crops, batch, num_out)
        total = total - torch.einsum("sibk,scbk->", teacher[1:], local_part) / batch
        num_terms += 2 * stripes * (1 + crops)
    return total / num_terms


def updated_centers(
    centers: torch.Tensor,
    teacher_global: torch.Tensor,
    momentum: float = 0.9,
    all_reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """EMA of the mean teacher output per token type over both global views (and all processes).

    Args:
        centers: (1 + S, K) current centers.
        teacher_global: (1 + S, 2B, K) teacher head outputs of this step.
        momentum: EMA momentum (0.9 in PASS).
        all_reduce_mean: Averages a tensor over processes (equal batch sizes); None on a single process.
    """
    batch_center = teacher_global.detach().mean(dim=1)
    if all_reduce_mean is not None:
        batch_center = all_reduce_mean(batch_center)
    return centers * momentum + batch_center * (1 - momentum)


def teacher_collapse_stats(teacher_targets: torch.Tensor) -> dict[str, float]:
    """How far the teacher's targets, (T, N, K) probabilities, are from DINO's two collapses (mean over T).

    ``teacher_entropy`` is the mean entropy of one image's target: near 0 for sharp targets, ``ln K`` when every
    target is uniform (collapse to uniform). ``teacher_batch_entropy`` is the entropy of the batch-mean target:
    near 0 when every image picks the same prototype (collapse to one prototype), ``ln K`` when the batch uses all
    prototypes evenly. A healthy run keeps the first low and the second high.

    Example:
        >>> stats = teacher_collapse_stats(torch.full((1, 8, 16), 1 / 16))
        >>> round(stats["teacher_entropy"], 3), round(stats["teacher_batch_entropy"], 3)  # uniform: ln 16 = 2.773
        (2.773, 2.773)
    """

    def entropy(probabilities: torch.Tensor) -> torch.Tensor:
        return -(probabilities * probabilities.clamp_min(1e-12).log()).sum(dim=-1)

    targets = teacher_targets.detach().float()
    return {
        "teacher_entropy": entropy(targets).mean().item(),
        "teacher_batch_entropy": entropy(targets.mean(dim=1)).mean().item(),
    }
