"""argparse types of the command lines (``pass-hub`` and the training scripts): numbers checked where they are
parsed, so that a message names the flag and the rule ("must be >= 1") before any rule that combines flags.

Example:
    >>> positive_int("3"), non_negative_int("0"), positive_float("1e-3")
    (3, 0, 0.001)
"""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """A count: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """A count that may be zero (workers, a period where 0 means never)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """A rate or a scale: a finite number > 0."""
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value
