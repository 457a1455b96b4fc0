"""Option checks shared by the library, the methods and the CLI.

Each raises :class:`~saliency.errors.InvalidOptionError` naming the option, the value given
and what is accepted. ``bool`` is never accepted as a number (``True`` is an ``int`` in Python).
"""

from __future__ import annotations

import math
import numbers
from typing import TypeGuard, get_args

from saliency.errors import InvalidOptionError, accepted


def is_int(value: object) -> TypeGuard[int]:
    """``value`` is an ``int`` and not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: object) -> TypeGuard[float]:
    """``value`` is a real number (``int``, ``float``, numpy scalars, ...) and not a ``bool``;
    for the type checker, something ``float`` accepts."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def require_int(
    name: str,
    value: object,
    minimum: int,
    maximum: int | None = None,
    *,
    none: str | None = None,
    unit: str | None = None,
) -> None:
    """Raise unless ``value`` is an int in ``[minimum, maximum]``.

    Args:
        name: the option, for the message.
        value: what was given.
        minimum: the smallest accepted value.
        maximum: the largest accepted value (None: no bound).
        none: also accept ``None``, which means this (e.g. ``"automatic"``).
        unit: what the int counts (e.g. ``"bytes"``), for the message.
    """
    if value is None and none is not None:
        return
    if not is_int(value) or value < minimum or (maximum is not None and value > maximum):
        if minimum == 1 and maximum is None:
            kind = "a positive int"
        else:
            kind = f"an int ≥ {minimum}" if maximum is None else f"an int in [{minimum}, {maximum}]"
        kind += f" ({unit})" if unit else ""
        kind += f", or None for {none}" if none is not None else ""
        raise InvalidOptionError(f"{name}={value!r}; accepted: {kind}")


def require_float(
    name: str,
    value: object,
    minimum: float,
    *,
    exclusive: bool = False,
    maximum: float | None = None,
) -> None:
    """Raise unless ``value`` is a finite real number ≥ ``minimum`` (> with ``exclusive``) and
    ≤ ``maximum``. NaN and ±inf are never accepted."""
    ok = (
        is_real(value)
        and math.isfinite(float(value))
        and (float(value) > minimum if exclusive else float(value) >= minimum)
        and (maximum is None or float(value) <= maximum)
    )
    if not ok:
        low = f"> {minimum}" if exclusive else f"≥ {minimum}"
        high = "" if maximum is None else f" and ≤ {maximum}"
        raise InvalidOptionError(f"{name}={value!r}; accepted: a finite number {low}{high}")


def require_bool(name: str, value: object) -> None:
    """Raise unless ``value`` is a bool."""
    if not isinstance(value, bool):
        raise InvalidOptionError(f"{name}={value!r}; accepted: True or False")


def check_choice(option: str, value: object, choices_type: object) -> None:
    """Raise unless ``value`` is one of the values of the ``Literal`` type ``choices_type``."""
    choices = get_args(choices_type)
    if not isinstance(value, str) or value not in choices:
        raise InvalidOptionError(
            f"{option}={value!r} is not supported; accepted: {accepted(choices)}"
        )
