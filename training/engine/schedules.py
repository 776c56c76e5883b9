"""Schedules computed up front as arrays (DINO style), one value per optimiser step or per epoch."""

from __future__ import annotations

import numpy as np


def cosine_schedule(
    base: float,
    final: float,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_start: float = 0.0,
) -> np.ndarray:
    """DINO's per-iteration schedule: linear warm-up then a cosine from ``base`` towards ``final``.

    The warm-up is ``linspace(warmup_start, base, warmup_steps)`` with both ends included, so ``base`` is used
    twice (last warm-up step and first cosine step); the cosine ``final + (base - final)(1 + cos(pi j / n)) / 2``
    runs over the ``n`` remaining steps, ``j = 0 .. n - 1``, and never quite reaches ``final``.

    Example:
        >>> cosine_schedule(1.0, 0.0, total_steps=6, warmup_steps=2).round(3).tolist()
        [0.0, 1.0, 1.0, 0.854, 0.5, 0.146]
    """
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"need 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps}), total >= 1")
    warmup = np.linspace(warmup_start, base, warmup_steps)
    steps = np.arange(total_steps - warmup_steps)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / max(len(steps), 1)))
    return np.concatenate([warmup, cosine])


def warmup_then_constant(base: float, start: float, total: int, warmup: int) -> np.ndarray:
    """Linear from ``start`` to ``base`` over ``warmup`` entries (ends included), then constant (the teacher
    temperature, one entry per epoch in the original).

    Example:
        >>> warmup_then_constant(0.07, 0.04, total=5, warmup=3).round(3).tolist()
        [0.04, 0.055, 0.07, 0.07, 0.07]
    """
    return np.concatenate([np.linspace(start, base, warmup), np.full(total - warmup, base)])[:total]


def warmup_cosine_per_epoch(
    peak: float, epochs: int, warmup_epochs: int, *, warmup_start: float, floor: float
) -> np.ndarray:
    """The original fine-tuning lr of one parameter group, one value per epoch (timm's ``CosineLRScheduler``
    with ``t_in_epochs`` and no warm-up prefix).

    Epoch ``t`` (0-based) trains with ``warmup_start + t (peak - warmup_start) / warmup_epochs`` while
    ``t < warmup_epochs``, then ``floor + (peak - floor)(1 + cos(pi t / epochs)) / 2``: the cosine is counted from
    epoch 0, so the lr drops when the warm-up ends and ``peak`` itself is never used. ``warmup_start`` and
    ``floor`` are absolute (shared by groups whose ``peak`` differs, such as biases at 2x).

    Example (b = 1, 120 epochs, 20 of warm-up from 0.01 b, floor 0.002 b):
        >>> lr = warmup_cosine_per_epoch(1.0, 120, 20, warmup_start=0.01, floor=0.002)
        >>> [round(float(lr[t]), 5) for t in (0, 19, 20, 119)]
        [0.01, 0.9505, 0.93315, 0.00217]
    """
    if epochs < 1 or warmup_epochs < 0:
        raise ValueError(f"need epochs >= 1 and warmup_epochs >= 0, got {epochs} and {warmup_epochs}")
    t = np.arange(epochs)
    warmup = warmup_start + t * (peak - warmup_start) / max(warmup_epochs, 1)
    cosine = floor + 0.5 * (peak - floor) * (1 + np.cos(np.pi * t / epochs))
    return np.where(t < warmup_epochs, warmup, cosine)


def step_schedule(base: float, total_steps: int, steps_per_decay: int, gamma: float = 0.1) -> np.ndarray:
    """``base`` multiplied by ``gamma`` after every ``steps_per_decay`` steps (cluster-contrast: x0.1 every 20 epochs).

    Example:
        >>> step_schedule(1.0, total_steps=5, steps_per_decay=2).round(3).tolist()
        [1.0, 1.0, 0.1, 0.1, 0.01]
    """
    if total_steps < 1 or steps_per_decay < 1:
        raise ValueError(f"need total_steps ({total_steps}) >= 1 and steps_per_decay ({steps_per_decay}) >= 1")
    return base * gamma ** (np.arange(total_steps) // steps_per_decay)
