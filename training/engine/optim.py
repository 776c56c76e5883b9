"""Optimiser helpers shared by the training scripts."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from torch import nn


def weight_decay_groups(model: nn.Module) -> list[dict]:
    """Two AdamW/SGD groups: weights with decay; biases and 1-D tensors (norms) without.

    Each group carries ``"weight_decay_scale"`` so a per-step weight-decay schedule is applied to the first only.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or param.ndim == 1 else decay).append(param)
    return [{"params": decay, "weight_decay_scale": 1.0}, {"params": no_decay, "weight_decay_scale": 0.0}]


def bias_lr_groups(
    model: nn.Module, bias_lr_factor: float = 2.0, weight_decay: float = 0.0, weight_decay_bias: float | None = None
) -> list[dict]:
    """SGD groups of the original ReID recipe (its ``make_optimizer``): a tensor whose name holds "bias" trains at
    ``bias_lr_factor`` x lr (``"lr_scale"``) with ``weight_decay_bias`` (default: ``weight_decay``), every other
    trainable tensor at lr with ``weight_decay``. The original makes one group per tensor with these values; two
    groups are the same optimiser, stepped with fewer kernels."""
    weights, biases = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (biases if "bias" in name else weights).append(param)  # the original matches "bias" anywhere
    bias_decay = weight_decay if weight_decay_bias is None else weight_decay_bias
    return [{"params": weights, "lr_scale": 1.0, "weight_decay": weight_decay},
            {"params": biases, "lr_scale": bias_lr_factor, "weight_decay": bias_decay}]


def reid_optimizer(
    model: nn.Module,
    name: str,
    *,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    bias_lr_factor: float = 1.0,
    weight_decay_bias: float | None = None,
) -> torch.optim.Optimizer:
    """The optimiser of a ReID script: ``"sgd"`` (the original: momentum; tensors whose name holds "bias" at
    ``bias_lr_factor`` x lr and ``weight_decay_bias``, the others at lr and ``weight_decay``; each group's
    ``lr_scale``) or ``"adamw"`` (biases and 1-D tensors without weight decay), for short CPU schedules that start
    from scratch.

    Example:
        >>> optimizer = reid_optimizer(nn.Linear(4, 2), "adamw", lr=1e-3, weight_decay=0.05)
        >>> [group["weight_decay"] for group in optimizer.param_groups]
        [0.05, 0.0]
    """
    if name == "sgd":
        groups = bias_lr_groups(model, bias_lr_factor, weight_decay, weight_decay_bias)
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        groups = weight_decay_groups(model)
        for group in groups:
            group["weight_decay"] = weight_decay * group["weight_decay_scale"]
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; expected 'sgd' or 'adamw'")


def describe_reid_optimizer(args: argparse.Namespace) -> str:
    """A script's optimiser settings in words, for model cards: ``"SGD momentum 0.9, lr 0.0004 ..."``."""
    if args.optimizer == "sgd":
        factor = getattr(args, "bias_lr_factor", 1.0)
        bias_decay = getattr(args, "weight_decay_bias", args.weight_decay)
        biases = f" (biases peaking at x{factor})" if factor != 1 else ""
        decay = f", {bias_decay} on biases" if bias_decay != args.weight_decay else ""
        return f"SGD momentum {args.momentum}, lr {args.lr}{biases}, weight decay {args.weight_decay}{decay}"
    return f"AdamW, lr {args.lr}, weight decay {args.weight_decay} (none on biases and norms)"


def set_hyperparameters(
    optimizer: torch.optim.Optimizer, lr: float | Sequence[float], weight_decay: float | None = None
) -> None:
    """Write this step's learning rate and weight decay into every group.

    ``lr`` is one value (times each group's ``lr_scale``) or one value per group; ``weight_decay`` is multiplied
    by each group's ``weight_decay_scale``.
    """
    lrs = [lr * group.get("lr_scale", 1.0) for group in optimizer.param_groups] if isinstance(lr, float | int) else lr
    if len(lrs) != len(optimizer.param_groups):
        raise ValueError(f"{len(lrs)} learning rates for {len(optimizer.param_groups)} parameter groups")
    for group, group_lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = float(group_lr)
        if weight_decay is not None:
            group["weight_decay"] = weight_decay * group.get("weight_decay_scale", 1.0)


@torch.no_grad()
def clip_gradients_per_tensor(gradients: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale each gradient tensor in place to norm ``max_norm`` when it is longer (PASS/DINO), not one global norm.

    ``gradients`` may be views (rows of a parameter's gradient), each clipped by its own norm.

    Returns:
        The norms before clipping, one per tensor.
    """
    if not gradients:
        return torch.zeros(0)
    norms = torch.stack(torch._foreach_norm(list(gradients)))
    scales = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(list(gradients), list(scales.unbind()))
    return norms


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """target = momentum * target + (1 - momentum) * source, parameter by parameter (the DINO teacher)."""
    target_params = [p for p in target.parameters()]
    source_params = [p.detach() for p in source.parameters()]
    if len(target_params) != len(source_params):
        raise ValueError(f"teacher has {len(target_params)} parameters, student {len(source_params)}")
    torch._foreach_mul_(target_params, momentum)
    torch._foreach_add_(target_params, source_params, alpha=1 - momentum)
