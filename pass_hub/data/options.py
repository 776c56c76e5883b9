"""Generator configs whose fields are command-line options: each field carries its help text, and values may come
as strings (:class:`CommandLineOptions`).

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Clip(CommandLineOptions):
    ...     OPTIONS_NAME = "clip"
    ...     frames: int = option(10, "frames of the clip")
    ...     size: tuple[int, int] = option((64, 32), "frame (height, width)")
    >>> Clip.from_options({"frames": "3", "size": "32x16"}), Clip.option_help()["frames"]
    (Clip(frames=3, size=(32, 16)), 'frames of the clip')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar


def option(default: object, help: str) -> Any:
    """A config field with a default and the help text its command-line option shows."""
    return dataclasses.field(default=default, metadata={"help": help})


def _parse(value: object, default: object) -> object:
    """``value`` as the type of ``default``; a (height, width) pair may be written ``HxW``."""
    if isinstance(default, tuple) and isinstance(value, str):
        return tuple(int(side) for side in value.lower().split("x"))
    return type(default)(value)


class CommandLineOptions:
    """Mixin for frozen dataclass configs: :meth:`from_options` (string values welcome) and :meth:`option_help`."""

    OPTIONS_NAME: ClassVar[str] = "config"  # how messages name the options ("unknown video option ...")

    @classmethod
    def from_options(cls, options: Mapping[str, object]) -> Any:
        """A config from ``{"field": value}`` where values may be strings (``"image_size": "256x128"``)."""
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        typed: dict[str, object] = {}
        for name, value in options.items():
            if name not in defaults:
                raise ValueError(f"unknown {cls.OPTIONS_NAME} option {name!r}; expected one of {', '.join(defaults)}")
            try:
                typed[name] = _parse(value, defaults[name])
            except ValueError:
                hint = " (write HEIGHTxWIDTH)" if isinstance(defaults[name], tuple) else ""
                raise ValueError(f"{cls.OPTIONS_NAME} option {name}={value!r} is not a valid "
                                 f"{type(defaults[name]).__name__}{hint}") from None
        return cls(**typed)

    @classmethod
    def option_help(cls) -> dict[str, str]:
        """Help text of each field (used by the CLI)."""
        return {f.name: f.metadata["help"] for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
