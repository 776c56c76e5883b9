"""Settings objects on the command line: one flag per field of a frozen dataclass, every value from a recipe.

A training script declares what a run *is* (model, data, optimisation, schedule) as a frozen dataclass whose
fields are made with :func:`setting`, which records the help text and the flag group. :func:`add_settings_flags`
gives every field a flag; :func:`given_settings` reads back only the flags typed on the command line, so that a
recipe (:mod:`training.engine.recipes`) can supply every other value and the explicit ones can be reported as overrides.
Flags that say *where* a run lives (output folder, workers, checkpoints) are plain argparse flags and are not
settings.

Booleans take a pair of flags, ``--name`` and ``--no_name``; pairs take two values (``--image_size 256 128``);
``None`` is typed as ``none``.

Example:
    >>> @dataclass(frozen=True)
    ... class Toy:
    ...     lr: float = setting("peak learning rate", group="optimisation")
    ...     image_size: tuple[int, int] = setting("input (height, width)", group="data", metavar=("H", "W"))
    ...     flip_test: bool = setting("average with mirrored images", group="evaluation")
    >>> parser = argparse.ArgumentParser()
    >>> add_settings_flags(parser, Toy)
    >>> given_settings(Toy, parser.parse_args(["--lr", "0.1", "--no_flip_test"]))
    {'lr': 0.1, 'flip_test': False}
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def setting(help: str, *, group: str, choices: tuple[Any, ...] | None = None, metavar: Any = None) -> Any:
    """A settings-dataclass field without default (a recipe must give it) and with its command-line help."""
    return field(metadata={"help": help, "group": group, "choices": choices, "metavar": metavar})


@dataclass(frozen=True)
class _FlagType:
    """How one field's flag reads its value(s)."""

    convert: Callable[[str], Any]
    nargs: int | None = None  # 2 for pairs
    boolean: bool = False


def _none_or(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() == "none" else convert(text)

    parse.__name__ = convert.__name__  # argparse names the type in its error messages
    return parse


def _flag_type(annotation: Any) -> _FlagType:
    """The flag type of a field annotation: bool, int, float, str, optionals of them, and 2-tuples of them."""
    optional = False
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        if len(members) != 1:
            raise TypeError(f"unsupported settings type {annotation}")
        annotation = members[0]
    if annotation is bool:
        return _FlagType(bool, boolean=True)
    if typing.get_origin(annotation) is tuple:
        (element, *rest) = typing.get_args(annotation)
        if len(rest) != 1 or rest[0] != element:
            raise TypeError(f"settings tuples are pairs of one type, got {annotation}")
        return _FlagType(_none_or(element) if optional else element, nargs=2)
    if annotation in (int, float, str):
        return _FlagType(_none_or(annotation) if optional else annotation)
    raise TypeError(f"unsupported settings type {annotation}")


def _fields(settings_class: type) -> list[tuple[dataclasses.Field, _FlagType]]:
    hints = typing.get_type_hints(settings_class)
    return [(item, _flag_type(hints[item.name])) for item in dataclasses.fields(settings_class)]


def add_settings_flags(
    parser: argparse.ArgumentParser, settings_class: type, shown: Any = None, shown_name: str = ""
) -> None:
    """One flag per field of ``settings_class`` (absent from the parsed namespace unless given).

    Args:
        parser: The script's parser; flags join the argument group their field names (created on first use).
        settings_class: A dataclass whose fields were made with :func:`setting`.
        shown: A settings object whose values the help text shows as the defaults (the default recipe).
        shown_name: Its name, in the help text.
    """
    groups: dict[str, argparse._ArgumentGroup] = {}
    existing = {group.title: group for group in parser._action_groups}
    for item, flag_type in _fields(settings_class):
        info = item.metadata
        title = info["group"]
        group = groups.setdefault(title, existing.get(title) or parser.add_argument_group(title))
        help_text = info["help"]
        if shown is not None:
            help_text += f" [{shown_name}: {_shown(getattr(shown, item.name))}]"
        help_text = help_text.replace("%", "%%")  # argparse %-formats help: a "40%" would break --help
        if flag_type.boolean:
            group.add_argument(f"--{item.name}", dest=item.name, action="store_const", const=True,
                               default=argparse.SUPPRESS, help=help_text)
            group.add_argument(f"--no_{item.name}", dest=item.name, action="store_const", const=False,
                               default=argparse.SUPPRESS, help=argparse.SUPPRESS)
            continue
        group.add_argument(
            f"--{item.name}", dest=item.name, type=flag_type.convert, nargs=flag_type.nargs, choices=info["choices"],
            metavar=info["metavar"], default=argparse.SUPPRESS, help=help_text,
        )


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(map(str, value))
    return "none" if value is None else str(value)


def given_settings(settings_class: type, namespace: argparse.Namespace) -> dict[str, Any]:
    """The settings typed on the command line (pairs as tuples), in field order."""
    given = {}
    for item, flag_type in _fields(settings_class):
        if hasattr(namespace, item.name):
            value = getattr(namespace, item.name)
            given[item.name] = tuple(value) if flag_type.nargs else value
    return given


def settings_as_json(settings: Any) -> dict[str, Any]:
    """The fields of a settings object as JSON values (pairs as lists)."""
    return {name: list(value) if isinstance(value, tuple) else value for name, value in vars(settings).items()}


def setting_names(settings_class: type) -> list[str]:
    return [item.name for item in dataclasses.fields(settings_class)]
