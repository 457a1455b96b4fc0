"""Import torchvision without importing ``torch._dynamo`` (console processes only).

``import torchvision`` imports ``torch._dynamo`` (1.2–2.3 s on a 2-core CPU, most of
torchvision's import time) for one function, ``torch._dynamo.utils.is_compile_supported``,
that ``torchvision.ops.roi_align`` calls only on devices without torchvision's compiled
kernels. The console (:func:`saliency.cli.launch.console`) calls :func:`defer_dynamo_import`
first; then, while torchvision's package module runs, a stand-in for ``torch._dynamo.utils``
serves that name as a function that imports the real one when first called. Any other name
asked of the stand-in imports the real module there and then, so nothing is served wrong.
When torchvision has been imported, the stand-in is gone from ``sys.modules`` and nothing
of this remains: ``torch.compile`` and ``import torch._dynamo`` work as always.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

_DYNAMO = "torch._dynamo"
_DYNAMO_UTILS = "torch._dynamo.utils"
_TORCHVISION = "torchvision"
_EXEC_MODULE = "exec_module"  # set on one loader object, then deleted
_FILE_LOADERS = (importlib.machinery.SourceFileLoader, importlib.machinery.SourcelessFileLoader)


def defer_dynamo_import() -> None:
    """Have the next ``import torchvision`` leave ``torch._dynamo`` unimported (see above).

    Does nothing where torchvision or ``torch._dynamo`` is imported already."""
    if _TORCHVISION in sys.modules or _DYNAMO in sys.modules:
        return
    if not any(isinstance(finder, _TorchvisionImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionImport())


def is_compile_supported(device_type: Any) -> Any:
    """``torch._dynamo.utils.is_compile_supported``, imported when first called."""
    return _real_dynamo_utils().is_compile_supported(device_type)


class _TorchvisionImport(importlib.abc.MetaPathFinder):
    """Finds torchvision once, through the finders after it, and runs its package module with
    the stand-in in place; then takes itself off ``sys.meta_path``."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _TORCHVISION:
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        # File loaders are made for one module, so giving this one a wrapped exec_module for
        # the one call touches no other import (a shared or unknown loader is left alone).
        loader = spec.loader
        if isinstance(loader, _FILE_LOADERS):
            setattr(loader, _EXEC_MODULE, _with_stand_in(loader, loader.exec_module))
        return spec


def _with_stand_in(
    loader: importlib.abc.Loader, exec_module: Callable[[types.ModuleType], None]
) -> Callable[[types.ModuleType], None]:
    def run(module: types.ModuleType) -> None:
        try:
            with _dynamo_utils_stand_in():
                exec_module(module)
        finally:
            with contextlib.suppress(AttributeError):
                delattr(loader, _EXEC_MODULE)  # the class's method again

    return run


@contextlib.contextmanager
def _dynamo_utils_stand_in() -> Iterator[None]:
    """``sys.modules["torch._dynamo.utils"]`` is a :class:`_DynamoUtilsStandIn` inside."""
    if _DYNAMO_UTILS in sys.modules or _DYNAMO in sys.modules:
        yield
        return
    stand_in = _DynamoUtilsStandIn(_DYNAMO_UTILS)
    sys.modules[_DYNAMO_UTILS] = stand_in
    try:
        yield
    finally:
        if sys.modules.get(_DYNAMO_UTILS) is stand_in:
            del sys.modules[_DYNAMO_UTILS]


class _DynamoUtilsStandIn(types.ModuleType):
    """``torch._dynamo.utils`` while torchvision imports: :func:`is_compile_supported` is
    deferred; any other public name imports the real module and comes from it."""

    def __init__(self, name: str) -> None:
        super().__init__(name, "Stands in for torch._dynamo.utils while torchvision imports.")
        self.is_compile_supported = is_compile_supported

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # the import system's probes (__path__, …): not a package
            raise AttributeError(name)
        return getattr(_real_dynamo_utils(), name)


def _real_dynamo_utils() -> types.ModuleType:
    module = sys.modules.get(_DYNAMO_UTILS)
    if isinstance(module, _DynamoUtilsStandIn):
        del sys.modules[_DYNAMO_UTILS]
    return importlib.import_module(_DYNAMO_UTILS)
