"""Command-line options for method options, generated from the registry.

Every init field of every registered method (a frozen dataclass) whose type a command line can
express (numbers, strings, booleans, ``None``, tuples of numbers written ``1,2,3``) becomes
``--<field-name>`` (underscores as dashes); booleans become ``--x/--no-x``. A value given once
goes to every chosen method that has that field, and to the base method of a wrapper (a method
with a ``base`` field naming another method, as SmoothGrad) when the base has it; methods
without it never see it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from saliency.cli.option_values import OptionValue
from saliency.errors import InvalidOptionError, UnknownMethodError
from saliency.methods.base import Method
from saliency.methods.registry import get_method, list_methods

_SCALARS = (bool, int, float, str, type(None))
_TRUE = frozenset({"true", "yes", "1", "on"})
_FALSE = frozenset({"false", "no", "0", "off"})


@dataclass(frozen=True)
class NumberTuple:
    """A tuple field of numbers, given as ``1,2,3`` (``length`` None: any length)."""

    element: type
    length: int | None

    def describe(self) -> str:
        """What to type, for error messages."""
        count = "" if self.length is None else f"{self.length} "
        return f"{count}comma-separated {self.element.__name__}s"


@dataclass(frozen=True)
class MethodOption:
    """One generated option: a field name shared by one or more methods.

    Attributes:
        name: The field name (``steps``); the flag is ``--steps``.
        methods: The registered methods that have the field, sorted.
        flag: True when the field is a plain ``bool`` in every method (``--x/--no-x``).
    """

    name: str
    methods: tuple[str, ...]
    flag: bool

    @property
    def dest(self) -> str:
        """The attribute of the parsed arguments that holds the value."""
        return f"method_option_{self.name}"

    @property
    def switch(self) -> str:
        """The command-line flag."""
        return "--" + self.name.replace("_", "-")


def field_types(method: type[Method]) -> dict[str, tuple[Any, ...]]:
    """The types of each init field that a command line can set (others left out).

    Unions are flattened; a ``Literal`` contributes its values' types; a tuple of ints or floats
    becomes a :class:`NumberTuple`. A field whose annotation cannot be resolved falls back to
    the type of its default value.
    """
    try:
        hints = typing.get_type_hints(method)
    except Exception:  # an annotation that names something imported only for type checkers
        hints = {}
    found: dict[str, tuple[Any, ...]] = {}
    for option in dataclasses.fields(method):
        if not option.init:
            continue
        if option.name in hints:
            kinds = _flatten(hints[option.name])
        elif option.default is not dataclasses.MISSING:
            kinds = (type(option.default),)
        else:
            continue
        expressible = tuple(
            kind for kind in kinds if kind in _SCALARS or isinstance(kind, NumberTuple)
        )
        if any(kind is not type(None) for kind in expressible):
            found[option.name] = expressible
    return found


def _flatten(hint: Any) -> tuple[Any, ...]:
    """The member types of a (possibly nested) union or Literal annotation."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return tuple(kind for member in typing.get_args(hint) for kind in _flatten(member))
    if origin is typing.Literal:
        return tuple({type(value) for value in typing.get_args(hint)})
    if origin is tuple:
        members = typing.get_args(hint)
        variable = len(members) == 2 and members[1] is Ellipsis
        elements = set(members[:1] if variable else members)
        if elements in ({int}, {float}):
            return (NumberTuple(elements.pop(), None if variable else len(members)),)
    return (hint,)


def registry_options(reserved: Iterable[str], families: bool = True) -> list[MethodOption]:
    """One option per settable field name over all registered methods, sorted by name.

    Args:
        reserved: Destination names the command already uses (``target``, ``format``...): a
            field of that name is left out rather than clash with a command option.
        families: Also the fields of the method families' members (``captum:NAME``), which
            loads the families' libraries.
    """
    taken = set(reserved)
    by_name: dict[str, list[str]] = {}
    kinds: dict[str, set[Any]] = {}
    for method in list_methods(families=families):
        for name, types_ in field_types(get_method(method)).items():
            by_name.setdefault(name, []).append(method)
            kinds.setdefault(name, set()).update(types_)
    return [
        MethodOption(name, tuple(sorted(methods)), kinds[name] <= {bool})
        for name, methods in sorted(by_name.items())
        if name not in taken
    ]


def add_arguments(group: argparse._ArgumentGroup, options: Iterable[MethodOption]) -> None:
    """Add the generated options to an argument group (defaults come from each method)."""
    for option in options:
        defaults = ", ".join(
            f"{method} (default {_default_of(get_method(method), option.name)!r})"
            for method in option.methods
        )
        if option.flag:
            group.add_argument(
                option.switch,
                dest=option.dest,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"for {defaults}",
            )
        else:
            group.add_argument(
                option.switch,
                dest=option.dest,
                default=None,
                metavar=_metavar(option),
                help=f"for {defaults}",
            )


def _metavar(option: MethodOption) -> str:
    """``N`` for integers, ``X`` for numbers, ``VALUE`` otherwise."""
    kinds = {
        kind for method in option.methods for kind in field_types(get_method(method))[option.name]
    }
    kinds.discard(type(None))
    if kinds == {int}:
        return "N"
    if kinds <= {int, float}:
        return "X"
    tuples = [kind for kind in kinds if isinstance(kind, NumberTuple)]
    if len(kinds) == 1 and tuples and tuples[0].length is not None:
        return ",".join(["N" if tuples[0].element is int else "X"] * tuples[0].length)
    return "VALUE"


def given_options(arguments: argparse.Namespace, options: Iterable[MethodOption]) -> dict[str, Any]:
    """The generated options the user gave, by field name (raw strings, or bools for flags),
    and the ``--option KEY=VALUE`` ones (:class:`OptionValue`, which win over a flag)."""
    given: dict[str, Any] = {}
    for option in options:
        value = getattr(arguments, option.dest, None)
        if value is not None:
            given[option.name] = value
    given.update(getattr(arguments, "method_option_values", None) or {})
    return given


def all_option_names() -> set[str]:
    """Every option name of every registered method (what ``--option KEY=`` accepts)."""
    return {name for method in list_methods() for name in get_method(method).option_names()}


def options_for(
    method: str, given: Mapping[str, Any], _outer: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The options to create ``method`` with: the given ones it (or its base) accepts, parsed.

    Raises:
        InvalidOptionError: A value that does not fit the field's type.
    """
    cls = get_method(method)
    own = field_types(cls)
    chosen = {
        name: parse_value(name, given[name], own[name])
        for name in own
        if name in given and not isinstance(given[name], OptionValue)
    }
    chosen.update(
        (name, value.value)
        for name, value in given.items()
        if isinstance(value, OptionValue) and name in cls.option_names()
    )
    base = _base_of(cls, chosen)
    if base is not None and base not in _outer | {method}:  # a wrapper of itself: stop
        for name, value in options_for(base, given, _outer | {method}).items():
            chosen.setdefault(name, value)
    return chosen


def _base_of(cls: type[Method], chosen: Mapping[str, Any]) -> str | None:
    """The registered method a wrapper builds on (its ``base`` field), if any."""
    if "base" not in {option.name for option in dataclasses.fields(cls)}:
        return None
    base = chosen.get("base", _default_of(cls, "base"))
    return base if isinstance(base, str) and is_registered(base) else None


def is_registered(name: str) -> bool:
    """Whether ``name`` is a registered method (a family is loaded only for its own prefix)."""
    try:
        get_method(name)
    except UnknownMethodError:
        return False
    return True


def _default_of(cls: type[Method], name: str) -> Any:
    for option in dataclasses.fields(cls):
        if option.name == name:
            if option.default is not dataclasses.MISSING:
                return option.default
            if option.default_factory is not dataclasses.MISSING:
                return option.default_factory()
    return None


def parse_value(name: str, value: Any, kinds: tuple[Any, ...]) -> Any:
    """Convert a command-line string to the first of ``kinds`` (a field's types) it fits.

    Raises:
        InvalidOptionError: It fits none; the message names the accepted types.
    """
    if not isinstance(value, str):
        if bool in kinds and isinstance(value, bool):
            return value
        value = str(value).lower()
    text = value.strip()
    if type(None) in kinds and text.lower() in ("none", "auto"):
        return None
    if bool in kinds and text.lower() in _TRUE | _FALSE:
        return text.lower() in _TRUE
    if int in kinds:
        try:
            return _checked(name, int(text))
        except ValueError as exc:
            if isinstance(exc, InvalidOptionError):
                raise
    if float in kinds:
        try:
            return _checked(name, float(text))
        except ValueError as exc:
            if isinstance(exc, InvalidOptionError):
                raise
    for kind in kinds:
        if isinstance(kind, NumberTuple):
            numbers = _number_tuple(text, kind)
            if numbers is not None:
                return tuple(_checked(name, number) for number in numbers)
    if str in kinds:
        return value
    accepted = [
        kind.describe() if isinstance(kind, NumberTuple) else kind.__name__
        for kind in kinds
        if kind is not type(None)
    ]
    if type(None) in kinds:
        accepted.append("none")
    raise InvalidOptionError(
        f"--{name.replace('_', '-')} {value!r} is not accepted; expected: {' or '.join(accepted)}"
    )


_Number = TypeVar("_Number", int, float)
INT_LIMIT = 2**31 - 1
"""The largest magnitude of an int option given on the command line: every count or index a
method takes fits in 32 bits (a larger value could only fail later, on every input)."""


def _checked(name: str, number: _Number) -> _Number:
    """``number`` if it is finite and an int within :data:`INT_LIMIT`.

    Raises:
        InvalidOptionError: NaN, ±inf (a manifest records options as JSON, which has neither)
            or an int too large.
    """
    if isinstance(number, float) and not math.isfinite(number):
        raise InvalidOptionError(
            f"--{name.replace('_', '-')} {number!r} is not accepted; expected: a finite number"
        )
    if isinstance(number, int) and abs(number) > INT_LIMIT:
        raise InvalidOptionError(
            f"--{name.replace('_', '-')} {number} is not accepted; expected: an int of at most "
            f"{INT_LIMIT} in magnitude"
        )
    return number


def _number_tuple(text: str, kind: NumberTuple) -> tuple[Any, ...] | None:
    """``text`` as a tuple of ``kind``, or None if it is not one."""
    try:
        numbers = tuple(kind.element(part) for part in text.split(","))
    except ValueError:
        return None
    return numbers if kind.length in (None, len(numbers)) else None
