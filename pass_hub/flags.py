"""argparse types of the command lines (``pass-hub`` and the training scripts): numbers checked where they are
parsed, so that a message names the flag and the rule ("must be >= 1") before any rule that combines flags.

Example:
    >>> positive_int("3"), non_negative_int("0"), positive_float("1e-3"), non_negative_float("0"), fraction("0.5")
    (3, 0, 0.001, 0.0, 0.5)
"""

from __future__ import annotations

import argparse
import sys


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


def non_negative_float(text: str) -> float:
    """A spread or a size that may be zero (noise)."""
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    """A share: a number in [0, 1]."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


class FlagParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that reads ``--a-b`` and ``--a_b`` alike, whichever spelling a flag was declared with,
    so that flags read the same in every pass-hub command and training script (sub-commands inherit it).

    Example:
        >>> parser = FlagParser()
        >>> _ = parser.add_argument("--batch_size", type=positive_int)
        >>> parser.parse_args(["--batch-size", "4"]).batch_size, parser.parse_args(["--batch_size=5"]).batch_size
        (4, 5)
    """

    def parse_known_args(self, args=None, namespace=None):
        tokens = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args([self._declared_spelling(token) for token in tokens], namespace)

    def _declared_spelling(self, token: str) -> str:
        if not token.startswith("--") or token == "--":
            return token
        name, equals, value = token.partition("=")
        if name in self._option_string_actions:
            return token
        for other in (name[:2] + name[2:].replace("-", "_"), name[:2] + name[2:].replace("_", "-")):
            if other in self._option_string_actions:
                return other + equals + value
        return token
