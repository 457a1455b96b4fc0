"""The method registry: register, list and get methods by name.

Built-in methods and third-party plugins are found the same way, through the entry-point group
``saliency.methods`` (name = method name, value = ``module:Class``), so the core never imports a
method module. :func:`register_method` adds one at run time.
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import TypeVar, overload

from saliency.errors import DuplicateMethodError, UnknownMethodError
from saliency.installation import DISTRIBUTION
from saliency.methods.base import Method

ENTRY_POINT_GROUP = "saliency.methods"

_M = TypeVar("_M", bound=type[Method])
_registry: dict[str, type[Method]] = {}
_discovered = False


@overload
def register_method(method: _M, *, name: str | None = None) -> _M: ...
@overload
def register_method(method: None = None, *, name: str | None = None) -> Callable[[_M], _M]: ...
def register_method(
    method: _M | None = None, *, name: str | None = None
) -> _M | Callable[[_M], _M]:
    """Register a :class:`Method` subclass under ``name`` (default: its class name in snake case).

    Usable as ``register_method(Cls, name="x")`` or as a decorator ``@register_method(name="x")``.

    Raises:
        DuplicateMethodError: the name is already registered.
        TypeError: ``method`` is not a Method subclass.
    """

    def add(cls: _M) -> _M:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"{cls!r} is not a subclass of saliency.methods.Method")
        key = name or _snake_case(cls.__name__)
        _discover()
        if key in _registry:
            raise DuplicateMethodError(
                f"a method named {key!r} is already registered ({_qualname(_registry[key])}); "
                "choose another name or unregister_method() it first"
            )
        _registry[key] = cls
        return cls

    return add if method is None else add(method)


def unregister_method(name: str) -> None:
    """Remove a registered method (mainly for tests and interactive sessions)."""
    _discover()
    if name not in _registry:
        raise _unknown(name)
    del _registry[name]


def list_methods() -> list[str]:
    """The names of all registered methods, sorted."""
    _discover()
    return sorted(_registry)


def get_method(name: str) -> type[Method]:
    """The method class registered under ``name``.

    Raises:
        UnknownMethodError: no such method; the message lists the registered names.
    """
    _discover()
    if not isinstance(name, str) or name not in _registry:
        raise _unknown(name)
    return _registry[name]


def _discover() -> None:
    """Load every entry point of the group once; a broken plugin warns instead of failing."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    # Built-ins first: a third-party plugin can never take over a built-in name.
    for entry_point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=_is_third_party):
        _load_entry_point(entry_point)


def _is_third_party(entry_point: EntryPoint) -> bool:
    distribution = getattr(entry_point, "dist", None)
    name = getattr(distribution, "name", None) or ""
    return re.sub(r"[-_.]+", "-", name).lower() != DISTRIBUTION


def _load_entry_point(entry_point: EntryPoint) -> None:
    try:
        cls = entry_point.load()
    except Exception as error:  # a third-party plugin must not break the library
        warnings.warn(
            f"saliency method plugin {entry_point.name!r} ({entry_point.value}) failed to load: "
            f"{error}",
            RuntimeWarning,
            stacklevel=3,
        )
        return
    existing = _registry.get(entry_point.name)
    if existing is cls:
        return
    if existing is not None or not (isinstance(cls, type) and issubclass(cls, Method)):
        reason = (
            f"the name is already taken by {_qualname(existing)}"
            if existing is not None
            else "it is not a saliency.methods.Method subclass"
        )
        warnings.warn(
            f"saliency method plugin {entry_point.name!r} ({entry_point.value}) was skipped: "
            f"{reason}",
            RuntimeWarning,
            stacklevel=3,
        )
        return
    _registry[entry_point.name] = cls


def _unknown(name: object) -> UnknownMethodError:
    names = sorted(_registry)
    close = difflib.get_close_matches(str(name), names, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return UnknownMethodError(
        f"unknown method {name!r}.{hint} Registered methods: {', '.join(names) or 'none'}"
    )


def _qualname(cls: type | None) -> str:
    return f"{cls.__module__}.{cls.__qualname__}" if cls is not None else "?"


def _snake_case(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name))
