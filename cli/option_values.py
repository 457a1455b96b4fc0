"""``--option KEY=VALUE``: method options that no typed flag fits, with literal values.

VALUE is read as a JSON-ish literal: an int (``3``), a float (``0.5``, ``1e-3``), a bool
(``true``/``false``, any case), null (``null``/``none``), a list (``[3, 8, 8]``, also
``(3, 8, 8)``; nested lists work, and lists become tuples, since option values are immutable), or
a quoted string (``"a b"``, ``'a b'``); anything else is the bare string itself
(``method=riemann_trapezoid``). A value goes to every chosen method that has an option KEY (and
to a wrapper's base method, like the typed flags). Given twice, or both with ``--option`` and a
typed flag, the ``--option`` value given last wins (as repeated flags do in argparse).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WORDS = {"true": True, "false": False, "null": None, "none": None}


@dataclass(frozen=True)
class OptionValue:
    """A method option value given with ``--option``: already parsed, passed on as it is."""

    value: Any


def parse_option(text: str) -> tuple[str, OptionValue]:
    """``KEY=VALUE`` as ``(KEY, parsed VALUE)``; an argparse ``type``.

    Raises:
        argparse.ArgumentTypeError: no ``=``, or KEY is not an option name.
    """
    key, equals, value = text.partition("=")
    key = key.strip()
    if not equals or not _KEY.fullmatch(key):
        raise argparse.ArgumentTypeError(
            f"{text!r}: accepted: KEY=VALUE, KEY an option name such as n_steps"
        )
    return key, OptionValue(literal(value))


def literal(text: str) -> Any:
    """``text`` as an int, float, bool, None, tuple or string (see the module docstring)."""
    stripped = text.strip()
    if stripped.lower() in _WORDS:
        return _WORDS[stripped.lower()]
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(stripped)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if _is_literal(value):
            return _frozen(value)
    return stripped


class OptionAction(argparse.Action):
    """Collects ``--option KEY=VALUE`` into a dict ``{KEY: OptionValue}``; a KEY that is not an
    option of any method in ``accepted()`` is a usage error (exit code 2)."""

    def __init__(self, *args: Any, accepted: Callable[[], Iterable[str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.accepted = accepted

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        key, value = values
        names = sorted(set(self.accepted()))
        if key not in names:
            parser.error(
                f"--option {key}=: no registered method has an option {key!r}; accepted: "
                + ", ".join(names)
            )
        found = dict(getattr(namespace, self.dest, None) or {})
        found[key] = value
        setattr(namespace, self.dest, found)


def _is_literal(value: object) -> bool:
    if isinstance(value, list | tuple):
        return all(_is_literal(v) for v in value)
    return value is None or isinstance(value, bool | int | float | str)


def _frozen(value: Any) -> Any:
    return tuple(_frozen(v) for v in value) if isinstance(value, list | tuple) else value
