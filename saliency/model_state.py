"""Put a model in the state a gradient evaluation needs, and put it back exactly afterwards."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

# One lock per model: the state change below is global to the model, so two threads explaining
# the same model would see each other's eval mode and restore each other's flags.
_model_locks: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock that serialises explanations of ``model`` across threads (re-entrant)."""
    with _locks_guard:
        lock = _model_locks.get(model)
        if lock is None:
            lock = _model_locks[model] = threading.RLock()
        return lock


@contextmanager
def evaluation_state(model: Callable[..., Any], keep_parameter_grads: bool) -> Iterator[None]:
    """Eval mode, gradients enabled, and — unless kept — no parameter requires grad.

    Parameters that do not require grad make autograd skip every weight gradient, which saves
    the memory of the saved tensors. With ``keep_parameter_grads=True`` (``create_graph``) the
    graph must reach the parameters, so their flags stay as the user set them. Every module's
    ``training`` flag and every parameter's ``requires_grad`` is restored in ``finally``, also
    when the model raises. Calls on one module from several threads run one at a time.

    Args:
        model: an ``nn.Module`` (its state is managed) or any callable (left alone).
        keep_parameter_grads: leave ``requires_grad`` of the parameters untouched.
    """
    if not isinstance(model, nn.Module):
        with torch.enable_grad():
            yield
        return
    with model_lock(model), _module_state(model, keep_parameter_grads):
        yield


@contextmanager
def _module_state(model: nn.Module, keep_parameter_grads: bool) -> Iterator[None]:
    training = [(module, module.training) for module in model.modules()]
    frozen = [] if keep_parameter_grads else [p for p in model.parameters() if p.requires_grad]
    try:
        model.eval()
        for parameter in frozen:
            parameter.requires_grad_(False)
        with torch.enable_grad():
            yield
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)
        for module, flag in training:
            module.training = flag


@contextmanager
def channels_last_weights(model: Callable[..., Any], enabled: bool = True) -> Iterator[None]:
    """The model's 4-D parameters and buffers in channels-last memory format inside the block.

    Their ``.data`` is swapped for channels-last copies and the original tensors are put back in
    ``finally`` (no in-place write: the same storage, strides and version counter as before).
    Anything but an ``nn.Module``, or ``enabled=False``, is left alone.
    """
    if not enabled or not isinstance(model, nn.Module):
        yield
        return
    originals = [
        (tensor, tensor.data)
        for tensor in (*model.parameters(), *model.buffers())
        if tensor.ndim == 4 and not tensor.is_contiguous(memory_format=torch.channels_last)
    ]
    try:
        for tensor, data in originals:
            tensor.data = data.contiguous(memory_format=torch.channels_last)
        yield
    finally:
        for tensor, data in originals:
            tensor.data = data


@contextmanager
def modules_preserved(model: Callable[..., Any]) -> Iterator[None]:
    """Undo, on exit, what code run in the block attached to ``model``'s modules.

    For code that is not ours and changes modules as a side effect (captum's DeepLift stores
    ``module.input``/``module.output``, its LRP attaches ``module.rule`` and ``activations``,
    deletes rules the user had set, and swaps parameter data for its γ rules):

    * public attributes added to a module during the block are removed, and public attributes
      it deleted are put back (attributes the model itself updates, e.g. counters, are left);
    * hooks added to a module during the block are removed;
    * a parameter or buffer whose ``.data`` was replaced gets its original data back (without an
      in-place write, so its version counter, and any autograd graph holding it, stays valid).

    Args:
        model: an ``nn.Module`` (anything else is left alone).
    """
    if not isinstance(model, nn.Module):
        yield
        return
    modules = list(model.modules())
    attributes = [(m, {k: v for k, v in vars(m).items() if not k.startswith("_")}) for m in modules]
    hooks = [
        (table, set(table))
        for m in modules
        for key, table in vars(m).items()
        if key.startswith("_") and "hooks" in key and isinstance(table, dict)
    ]
    tensors = [(t, t.data) for t in (*model.parameters(), *model.buffers())]
    try:
        yield
    finally:
        for module, saved in attributes:
            current = vars(module)
            for key in [k for k in current if not k.startswith("_") and k not in saved]:
                del current[key]
            for key, value in saved.items():
                current.setdefault(key, value)
        for table, keys in hooks:
            for key in [k for k in table if k not in keys]:
                del table[key]
        for tensor, data in tensors:
            if tensor.data_ptr() != data.data_ptr() or tensor.shape != data.shape:
                tensor.data = data
