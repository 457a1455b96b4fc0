"""Layer selection and scoped activation capture for layer methods (the Grad-CAM family)."""

from __future__ import annotations

import difflib
import weakref
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from saliency.errors import LayerNotFoundError

LayerSpec = str | nn.Module | None


@dataclass
class Capture:
    """The output of a hooked layer in the latest forward pass."""

    value: Tensor | None = None


@contextmanager
def capture_output(module: nn.Module, as_leaf: bool) -> Iterator[Capture]:
    """Record ``module``'s output during forward passes inside the block.

    Args:
        module: the layer to hook.
        as_leaf: replace the output by a detached copy that requires grad, so that backward stops
            at this layer (nothing before it is differentiated). Used when no second-order graph
            is needed.
    """
    capture = Capture()

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Tensor:
        if not isinstance(output, Tensor):
            raise LayerNotFoundError(
                f"layer {type(module).__name__} returns a {type(output).__name__}; a layer method "
                "needs a layer whose output is a single (N, C, h, w) tensor"
            )
        if as_leaf:
            output = output.detach().requires_grad_(True)
        capture.value = output
        # The model may modify this output in place later (``out += identity`` in a residual
        # block); hand it a copy so the captured tensor stays the one we differentiate by.
        return output.clone()

    handle = module.register_forward_hook(hook)
    try:
        yield capture
    finally:
        handle.remove()


# Automatic layer choices per model and input signature: the choice needs a forward pass, which
# would otherwise cost a method like Grad-CAM a second forward on every call.
_AUTOMATIC: weakref.WeakKeyDictionary[nn.Module, dict[Hashable, weakref.ref[nn.Module]]] = (
    weakref.WeakKeyDictionary()
)


def find_layer(
    model: Callable[..., Any],
    spec: LayerSpec,
    probe: Callable[[], Any],
    signature: Hashable = None,
) -> nn.Module:
    """Resolve a layer given by module, dotted name, or ``None`` (automatic).

    Automatic choice: the last module to finish its forward whose output is an ``(N, C, h, w)``
    map with ``h·w > 1`` — the deepest spatial feature map (as torchcam does).

    Args:
        model: the model; must be an ``nn.Module``.
        spec: a submodule, its dotted name in ``model.named_modules()``, or ``None``.
        probe: runs one forward pass of the model (used only for the automatic choice).
        signature: what the automatic choice depends on besides the model (e.g. the input shape,
            dtype and device); with one, the choice is remembered for the model, as long as the
            chosen module is still one of its submodules.
    """
    if not isinstance(model, nn.Module):
        raise LayerNotFoundError(
            f"a layer method needs an nn.Module model to hook, got {type(model).__name__}"
        )
    modules = dict(model.named_modules())
    if isinstance(spec, nn.Module):
        if not any(spec is m for m in modules.values()):
            raise LayerNotFoundError(f"layer {type(spec).__name__} is not a submodule of the model")
        return spec
    if isinstance(spec, str):
        if spec in modules and spec:
            return modules[spec]
        close = difflib.get_close_matches(spec, [n for n in modules if n], n=5)
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise LayerNotFoundError(
            f"layer {spec!r} does not exist in the model{hint}. Accepted: a dotted name from "
            "model.named_modules(), a module, or None for the last spatial feature map"
        )
    if spec is not None:
        raise LayerNotFoundError(
            f"layer must be a dotted name, an nn.Module or None, got {type(spec).__name__}"
        )
    if signature is None:
        return _last_spatial_module(model, probe)
    choices = _AUTOMATIC.setdefault(model, {})
    known = choices.get(signature)
    chosen = known() if known is not None else None
    if chosen is None or not any(chosen is m for m in modules.values()):
        chosen = _last_spatial_module(model, probe)
        choices[signature] = weakref.ref(chosen)
    return chosen


def _last_spatial_module(model: nn.Module, probe: Callable[[], Any]) -> nn.Module:
    finished: list[nn.Module] = []
    handles: list[RemovableHandle] = []

    def record(module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, Tensor) and output.ndim == 4 and output[0, 0].numel() > 1:
            finished.append(module)

    try:
        for module in model.modules():
            if module is not model:
                handles.append(module.register_forward_hook(record))
        with torch.no_grad():
            probe()
    finally:
        for handle in handles:
            handle.remove()
    if not finished:
        raise LayerNotFoundError(
            "no layer of the model outputs an (N, C, h, w) map with h·w > 1; pass layer= "
            "with a dotted module name"
        )
    return finished[-1]
