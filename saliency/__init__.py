"""Gradient-based saliency maps for PyTorch image models.

>>> import saliency
>>> ex = saliency.explain(model, inputs, method="integrated_gradients", steps=32)
>>> ex.attributions.shape, ex.targets

The public names load on first use (a module ``__getattr__``): ``import saliency`` itself
imports no torch, so the ``saliency`` command starts at once and ``saliency --help`` needs no
torch. ``saliency.explain`` (or any other public name) loads the engine, the registry and the
loaders; the demo (:mod:`saliency.demo`), the metrics, training losses, the CLI, the gallery,
torchvision and matplotlib load when they are used.
"""

from __future__ import annotations

import importlib
import sys
import types
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from saliency import installation

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from saliency import errors
    from saliency.engine import Engine, EngineOptions, Precision
    from saliency.explain import explain, explain_many
    from saliency.explanation import Explanation
    from saliency.figures import show, strip
    from saliency.framing import Fit, Framing
    from saliency.hvp import hvp
    from saliency.images import ImageBatch, Preprocess, load_images, open_image
    from saliency.methods.base import Method
    from saliency.methods.registry import (
        get_method,
        list_methods,
        register_method,
        unregister_method,
    )
    from saliency.models import LoadedModel, load_model, register_model_source
    from saliency.rendering import render
    from saliency.smooth_relu import smooth_relu

installation.warn_on_clashing_distribution()

try:
    __version__ = version(installation.DISTRIBUTION)
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

_PUBLIC = {
    "Engine": "saliency.engine",
    "EngineOptions": "saliency.engine",
    "Precision": "saliency.engine",
    "explain": "saliency.explain",
    "explain_many": "saliency.explain",
    "Explanation": "saliency.explanation",
    "Fit": "saliency.framing",
    "Framing": "saliency.framing",
    "hvp": "saliency.hvp",
    "ImageBatch": "saliency.images",
    "Preprocess": "saliency.images",
    "load_images": "saliency.images",
    "open_image": "saliency.images",
    "Method": "saliency.methods.base",
    "get_method": "saliency.methods.registry",
    "list_methods": "saliency.methods.registry",
    "register_method": "saliency.methods.registry",
    "unregister_method": "saliency.methods.registry",
    "LoadedModel": "saliency.models",
    "load_model": "saliency.models",
    "register_model_source": "saliency.models",
    "render": "saliency.rendering",
    "show": "saliency.figures",
    "strip": "saliency.figures",
    "smooth_relu": "saliency.smooth_relu",
}
"""Each public name and the module that defines it."""


class _Package(types.ModuleType):
    """The package module: a submodule named like the function it defines (``saliency.explain``,
    ``hvp``, ``smooth_relu``) does not replace the function when it is imported (the import
    system sets the submodule as the package's attribute)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if (
            isinstance(value, types.ModuleType)
            and _PUBLIC.get(name) == value.__name__
            and hasattr(value, name)
        ):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use (then cached in the package); else
    a submodule (``saliency.errors``)."""
    module = _PUBLIC.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif not name.startswith("__"):
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


__all__ = [
    "Engine",
    "EngineOptions",
    "Explanation",
    "Fit",
    "Framing",
    "ImageBatch",
    "LoadedModel",
    "Method",
    "Precision",
    "Preprocess",
    "__version__",
    "errors",
    "explain",
    "explain_many",
    "get_method",
    "hvp",
    "list_methods",
    "load_images",
    "load_model",
    "open_image",
    "register_method",
    "register_model_source",
    "render",
    "show",
    "smooth_relu",
    "strip",
    "unregister_method",
]
