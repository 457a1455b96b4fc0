"""The method registry: register, list and get methods by name.

Built-in methods and third-party plugins are found the same way, through the entry-point group
``saliency.methods`` (name = method name, value = ``module:Class``), so the core never imports a
method module. :func:`register_method` adds one at run time.

An entry point whose name ends in ``:*`` declares a *method family* (value = ``module:object``,
a :class:`MethodFamily`): one object that provides many methods named ``PREFIX:MEMBER``, such as
``captum:*`` for every captum attribution class. A family is loaded lazily — only when a name
with its prefix is looked up or when all names are listed — so importing saliency, or using any
other method, never imports the library behind it.
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Callable, Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Protocol, TypeVar, overload, runtime_checkable

from saliency.errors import DuplicateMethodError, UnknownMethodError
from saliency.installation import DISTRIBUTION
from saliency.methods.base import Method

ENTRY_POINT_GROUP = "saliency.methods"

FAMILY_SUFFIX = ":*"

_M = TypeVar("_M", bound=type[Method])
_registry: dict[str, type[Method]] = {}
_discovered = False
_families: dict[str, EntryPoint | MethodFamily] = {}
"""By prefix (``"captum:"``): the family, or its entry point until first needed."""
_hidden: set[str] = set()
"""Family members removed by :func:`unregister_method`."""


@runtime_checkable
class MethodFamily(Protocol):
    """Many methods from one entry point, named ``PREFIX:MEMBER`` (see the module docstring)."""

    def members(self) -> Iterable[str]:
        """The member names (without the prefix)."""
        ...

    def method(self, member: str) -> type[Method]:
        """The method class of one member; the same class object on every call."""
        ...


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
        existing = _registry.get(key) or _family_method(key)
        if existing is not None:
            raise DuplicateMethodError(
                f"a method named {key!r} is already registered ({_qualname(existing)}); "
                "choose another name or unregister_method() it first"
            )
        _registry[key] = cls
        return cls

    return add if method is None else add(method)


def unregister_method(name: str) -> None:
    """Remove a registered method (mainly for tests and interactive sessions)."""
    _discover()
    if name in _registry:
        del _registry[name]
    elif _family_method(name) is not None:
        _hidden.add(name)
    else:
        raise _unknown(name)


def list_methods(families: bool = True) -> list[str]:
    """The names of all registered methods, sorted.

    Args:
        families: include the members of method families (``captum:NAME``...); ``False`` lists
            only the methods registered one by one (the built-in and plugin methods), and
            imports no family's library.
    """
    _discover()
    names = set(_registry)
    if families:
        for prefix in list(_families):
            family = _load_family(prefix)
            if family is not None:
                names.update(f"{prefix}{member}" for member in family.members())
        names -= _hidden - set(_registry)
    return sorted(names)


def family_prefixes() -> list[str]:
    """The prefixes of the method families (``["captum:"]``), without loading any family."""
    _discover()
    return sorted(_families)


def get_method(name: str) -> type[Method]:
    """The method class registered under ``name``.

    Raises:
        UnknownMethodError: no such method; the message lists the registered names.
    """
    _discover()
    found = _registry.get(name) if isinstance(name, str) else None
    if found is None and isinstance(name, str):
        found = _family_method(name)
    if found is None:
        raise _unknown(name)
    return found


def _discover() -> None:
    """Load every entry point of the group once; a broken plugin warns instead of failing."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    # Built-ins first: a third-party plugin can never take over a built-in name.
    for entry_point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=_is_third_party):
        if entry_point.name.endswith(FAMILY_SUFFIX):
            _add_family(entry_point)
        else:
            _load_entry_point(entry_point)


def _add_family(entry_point: EntryPoint) -> None:
    prefix = entry_point.name.removesuffix("*")
    existing = _families.get(prefix)
    if existing is None:
        _families[prefix] = entry_point
    elif not (isinstance(existing, EntryPoint) and existing.value == entry_point.value):
        warnings.warn(
            f"saliency method family {entry_point.name!r} ({entry_point.value}) was skipped: "
            "the prefix is already taken",
            RuntimeWarning,
            stacklevel=4,
        )


def _family_method(name: str) -> type[Method] | None:
    """The family member called ``name``, if a family provides it (and it is not hidden)."""
    prefix, colon, member = name.partition(":")
    family = _load_family(prefix + colon) if colon and name not in _hidden else None
    if family is None or member not in set(family.members()):
        return None
    return family.method(member)


def _load_family(prefix: str) -> MethodFamily | None:
    """The family of ``prefix``, loaded on first use; a broken one warns and is dropped."""
    family = _families.get(prefix)
    if not isinstance(family, EntryPoint):
        return family
    try:
        loaded = family.load()
        if not isinstance(loaded, MethodFamily):
            raise TypeError("it is not a saliency.methods.registry.MethodFamily")
        list(loaded.members())
    except Exception as error:  # a third-party plugin must not break the library
        warnings.warn(
            f"saliency method family {family.name!r} ({family.value}) failed to load: {error}",
            RuntimeWarning,
            stacklevel=3,
        )
        del _families[prefix]
        return None
    _families[prefix] = loaded
    return loaded


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
    names = list_methods()
    close = difflib.get_close_matches(str(name), names, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return UnknownMethodError(
        f"unknown method {name!r}.{hint} Registered methods: {', '.join(names) or 'none'}"
    )


def _qualname(cls: type | None) -> str:
    return f"{cls.__module__}.{cls.__qualname__}" if cls is not None else "?"


def _snake_case(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name))
