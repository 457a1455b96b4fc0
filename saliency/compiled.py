"""Opt-in ``torch.compile`` of model forwards for the engine (``compile=True``).

Compiled forwards are cached per model — in a :class:`weakref.WeakKeyDictionary`, so the cache
never keeps a model alive — and per point shape, dtype, device and compiler settings, so
repeated :func:`saliency.explain` calls on the same model do not compile again. The batch
dimension is left to dynamo: the chunks of one call differ only in their number of points.

Each cache key gets its own small caller function (a fresh code object): dynamo keeps its
compiled code per code object, so models do not share one recompilation budget, and the
compiled code goes away with the model.

A compilation that fails — when ``torch.compile`` is called, or at the first forward + backward —
is recorded for that key; the engine then runs eagerly and :meth:`ModelCache.fail` warns once
per model. The compiler backend defaults to inductor; the environment variables
``SALIENCY_COMPILE_BACKEND`` (e.g. ``"aot_eager"``, for fast tests) and ``SALIENCY_COMPILE_MODE``
(e.g. ``"max-autotune"``) override it.
"""

from __future__ import annotations

import itertools
import os
import types
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

BACKEND_ENV = "SALIENCY_COMPILE_BACKEND"
MODE_ENV = "SALIENCY_COMPILE_MODE"
DEFAULT_BACKEND = "inductor"

Caller = Callable[[Callable[[Tensor], Any], Tensor], Any]
Key = tuple[Any, ...]


class CompileFallbackWarning(RuntimeWarning):
    """``torch.compile`` failed for a model; the engine runs it eagerly instead."""


@dataclass
class CompiledForward:
    """One compiled forward: ``call(model, points)``; ``None`` once compilation has failed."""

    call: Caller | None
    verified: bool = False
    """A forward + backward through ``call`` has succeeded (later failures are real errors)."""


@dataclass
class ModelCache:
    """The compiled forwards of one model, by :func:`cache_key`."""

    forwards: dict[Key, CompiledForward] = field(default_factory=dict)
    warned: bool = False

    def forward(self, model: object, points: Tensor) -> CompiledForward:
        """The compiled forward of ``model`` for ``points``, made on first use.

        ``torch.compile`` itself is lazy (the work happens at the first call); an exception it
        raises here is reported (see :meth:`fail`) and gives ``call=None``.
        """
        key = cache_key(points)
        forward = self.forwards.get(key)
        if forward is None:
            backend, mode = key[-2:]
            forward = self.forwards[key] = CompiledForward(None)
            try:
                forward.call = torch.compile(_fresh_caller(), backend=backend, mode=mode)
            except Exception as error:
                self.fail(forward, model, describe(error))
        return forward

    def fail(self, forward: CompiledForward, model: object, error: str) -> None:
        """Record that ``forward`` failed (``error`` from :func:`describe`); warn once per
        model."""
        forward.call = None
        if self.warned:
            return
        self.warned = True
        warnings.warn(
            f"torch.compile failed for model {type(model).__name__} ({error}); running it "
            "eagerly instead (same results, without the compiled speed-up)",
            CompileFallbackWarning,
            stacklevel=3,
        )


_models: weakref.WeakKeyDictionary[Any, ModelCache] = weakref.WeakKeyDictionary()
_counter = itertools.count()


def model_cache(model: object) -> ModelCache:
    """The cache of ``model``; a fresh one (kept by the caller) when it cannot be weakly keyed."""
    try:
        cache = _models.get(model)
        if cache is None:
            cache = _models[model] = ModelCache()
        return cache
    except TypeError:  # not weak-referenceable, or unhashable
        return ModelCache()


def cache_key(points: Tensor) -> Key:
    """Per point shape (not the batch size), dtype, device and compiler settings (backend and
    mode: the environment's, else inductor's default mode)."""
    backend = os.environ.get(BACKEND_ENV) or DEFAULT_BACKEND
    mode = os.environ.get(MODE_ENV) or None
    return (tuple(points.shape[1:]), points.dtype, points.device, backend, mode)


def describe(error: BaseException) -> str:
    """``"Type: first line of the message"``."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _call(model: Callable[[Tensor], Any], points: Tensor) -> Any:
    return model(points)


def _fresh_caller() -> Caller:
    """A function equivalent to ``_call`` with its own code object (its own dynamo cache)."""
    code = _call.__code__.replace(co_name=f"saliency_forward_{next(_counter)}")
    return types.FunctionType(code, _call.__globals__, code.co_name)
