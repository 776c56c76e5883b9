"""Per-iteration schedules computed up front as arrays (DINO style)."""

from __future__ import annotations

import numpy as np


def cosine_schedule(
    base: float,
    final: float,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_start: float = 0.0,
) -> np.ndarray:
    """Linear warm-up from ``warmup_start`` to ``base`` over ``warmup_steps``, then cosine from ``base`` to ``final``.

    Example:
        >>> cosine_schedule(1.0, 0.0, total_steps=5, warmup_steps=1).round(3).tolist()
        [0.0, 1.0, 0.854, 0.5, 0.146]
    """
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"need 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps}), total >= 1")
    warmup = np.linspace(warmup_start, base, warmup_steps, endpoint=False) if warmup_steps else np.array([])
    steps = np.arange(total_steps - warmup_steps)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / max(len(steps), 1)))
    return np.concatenate([warmup, cosine])


def warmup_then_constant(base: float, start: float, total_steps: int, warmup_steps: int) -> np.ndarray:
    """Linear from ``start`` to ``base`` over ``warmup_steps``, then constant (the teacher temperature warm-up)."""
    return np.concatenate([np.linspace(start, base, warmup_steps), np.full(total_steps - warmup_steps, base)])[
        :total_steps
    ]


def step_schedule(base: float, total_steps: int, steps_per_decay: int, gamma: float = 0.1) -> np.ndarray:
    """``base`` multiplied by ``gamma`` after every ``steps_per_decay`` steps (cluster-contrast: x0.1 every 20 epochs).

    Example:
        >>> step_schedule(1.0, total_steps=5, steps_per_decay=2).round(3).tolist()
        [1.0, 1.0, 0.1, 0.1, 0.01]
    """
    if total_steps < 1 or steps_per_decay < 1:
        raise ValueError(f"need total_steps ({total_steps}) >= 1 and steps_per_decay ({steps_per_decay}) >= 1")
    return base * gamma ** (np.arange(total_steps) // steps_per_decay)
