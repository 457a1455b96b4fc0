"""Layer selection and scoped activation capture for layer methods (the Grad-CAM family).

A layer's output is read as an ``(N, D, h, w)`` map whatever its layout: a feature map, a
channels-last map or a token sequence (:mod:`saliency.tokens`). :func:`find_layer` resolves the
layer and its layout; :func:`capture_output` then hands layer methods the map (and its
gradient), so every layer method works on transformers without code of its own.
"""

from __future__ import annotations

import difflib
import weakref
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from saliency.attention import is_attention_module
from saliency.errors import LayerNotFoundError
from saliency.targets import class_scores
from saliency.tokens import (
    PROBE_POINTS,
    Layout,
    TokenMetadata,
    layout_of,
    probe_points,
    token_metadata,
)

LayerSpec = str | nn.Module | None

__all__ = [
    "Capture",
    "LayerSpec",
    "capture_output",
    "find_layer",
    "layer_layout",
    "layer_name",
    "primary_output",
    "resolved_layers",
    "with_primary_output",
]


@dataclass
class Capture:
    """The output of a hooked layer in the latest forward pass, as an ``(N, D, h, w)`` map."""

    value: Tensor | None = None


@dataclass(eq=False)
class _Resolution:
    """A resolved layer and its layout (``None`` until the first output of a named layer: it
    is read from that output, in the method's own pass)."""

    module: weakref.ref[nn.Module]
    model: weakref.ref[nn.Module]
    layout: Layout | None = None

    def settle(self, value: Tensor, size: tuple[int, int] | None) -> Layout:
        """The layout, read from the layer's output ``value`` for an input of ``size``."""
        if self.layout is not None:
            return self.layout
        model = self.model()
        module = self.module()
        found: Layout | None
        if size is None or model is None:
            found = Layout() if value.ndim == 4 else None
        else:
            found = layout_of(
                value.shape[1:], size, token_metadata(model, size), lambda: None, explicit=True
            )
        if found is None:
            name = layer_name(model, module) if model is not None and module is not None else "?"
            raise LayerNotFoundError(
                f"layer {name!r} outputs shape {tuple(value.shape)}, which is not a map of the "
                "input: accepted are (N, C, h, w) and (N, h, w, C) maps and (N, L, D) token "
                "sequences whose patch tokens form a grid (after class, distillation or register "
                "tokens)"
            )
        self.layout = found
        return found


# Each resolved layer's resolution for the inputs it was last resolved for (find_layer sets
# it; capture_output reads it), so that every layer method gets maps without knowing layouts.
_LAYOUTS: weakref.WeakKeyDictionary[nn.Module, _Resolution] = weakref.WeakKeyDictionary()


def layer_layout(module: nn.Module) -> Layout | None:
    """The layout found for ``module`` (None if it was never resolved, or a named layer that
    has not run since)."""
    resolution = _LAYOUTS.get(module)
    return None if resolution is None else resolution.layout


@contextmanager
def capture_output(
    module: nn.Module, as_leaf: bool, layout: Layout | None = None
) -> Iterator[Capture]:
    """Record ``module``'s output during forward passes inside the block, as a map.

    Args:
        module: the layer to hook.
        as_leaf: replace the output by a detached copy that requires grad, so that backward stops
            at this layer (nothing before it is differentiated). Used when no second-order graph
            is needed.
        layout: how the output becomes an ``(N, D, h, w)`` map; default the layout
            :func:`find_layer` found for the module (a 4-D output otherwise is a map already).
            Token layers give the map of their patch tokens: the prefix tokens are not in it and
            get no gradient through it.
    """
    capture = Capture()
    resolution = None if layout is not None else _LAYOUTS.get(module)
    sizes: list[tuple[int, int]] = []

    def enter(_model: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], Tensor) and args[0].ndim == 4:
            sizes.append((int(args[0].shape[-2]), int(args[0].shape[-1])))

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        value = primary_output(output)
        if value is None:
            raise LayerNotFoundError(
                f"layer {type(module).__name__} returns a {type(output).__name__}; a layer method "
                "needs a layer whose output is a tensor (N, C, h, w), (N, h, w, C) or (N, L, D)"
            )
        if layout is not None:
            current = layout
        elif resolution is not None:
            current = resolution.settle(value, sizes[-1] if sizes else None)
        else:
            current = _shape_layout(module, value)
        _check_fits(module, current, value)
        base = value.detach() if as_leaf else value
        feature_map = current.to_map(base)
        if as_leaf:
            feature_map = feature_map.detach().requires_grad_(True)
        capture.value = feature_map
        # The model may modify this output in place later (``out += identity`` in a residual
        # block); hand it a copy so the captured tensor stays the one we differentiate by.
        return with_primary_output(output, current.from_map(feature_map, base))

    handles = [module.register_forward_hook(hook)]
    try:
        model = resolution.model() if resolution is not None else None
        if model is not None and resolution is not None and resolution.layout is None:
            handles.append(model.register_forward_pre_hook(enter))
        yield capture
    finally:
        for handle in handles:
            handle.remove()


def primary_output(output: Any) -> Tensor | None:
    """The tensor of a layer output: itself, or the first element of a tuple or list."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


def with_primary_output(output: Any, value: Tensor) -> Any:
    """``output`` with its tensor (see :func:`primary_output`) replaced by ``value``."""
    if isinstance(output, Tensor):
        return value
    if isinstance(output, list):
        return [value, *output[1:]]
    return (value, *output[1:])


def _shape_layout(module: nn.Module, value: Tensor) -> Layout:
    if value.ndim == 4:
        return Layout()
    raise LayerNotFoundError(
        f"layer {type(module).__name__} outputs shape {tuple(value.shape)}: its layout is not "
        "known; resolve the layer with saliency.layers.find_layer (or pass layout=)"
    )


def _check_fits(module: nn.Module, layout: Layout, value: Tensor) -> None:
    expected = 3 if layout.kind == "tokens" else 4
    grid = layout.grid or (0, 0)
    if value.ndim != expected or (
        layout.kind == "tokens" and value.shape[1] < layout.prefix + grid[0] * grid[1]
    ):
        raise LayerNotFoundError(
            f"layer {type(module).__name__} outputs shape {tuple(value.shape)}, which does not "
            f"fit the layout found for it ({layout.describe()}); resolve it again with find_layer "
            "for these inputs"
        )


# ---- naming the resolved layer --------------------------------------------------------------

_RESOLVED: ContextVar[list[str] | None] = ContextVar("saliency_resolved_layers", default=None)


@contextmanager
def resolved_layers() -> Iterator[list[str]]:
    """Collect the dotted names of the layers :func:`find_layer` resolves inside the block
    (``saliency.explain`` records the last one as ``Explanation.options["layer"]``)."""
    names: list[str] = []
    token = _RESOLVED.set(names)
    try:
        yield names
    finally:
        _RESOLVED.reset(token)


def layer_name(model: nn.Module, module: nn.Module) -> str:
    """The dotted name of ``module`` in ``model`` (``""`` for the model itself)."""
    return next((name for name, m in model.named_modules() if m is module), "")


# ---- resolution -----------------------------------------------------------------------------


# Resolutions per model and key (the automatic choice or a layer name, and the input
# signature): each needs a forward pass, which would otherwise cost a method like Grad-CAM a
# second forward on every call.
_RESOLUTIONS: weakref.WeakKeyDictionary[nn.Module, dict[Hashable, _Resolution]] = (
    weakref.WeakKeyDictionary()
)


def find_layer(
    model: Callable[..., Any],
    spec: LayerSpec,
    probe: Callable[[], Any],
    signature: Hashable = None,
) -> nn.Module:
    """Resolve a layer given by module, dotted name, or ``None`` (automatic), and its layout.

    Automatic choice: the deepest (last to finish its forward) module whose output is a map of
    the input — an ``(N, C, h, w)`` or channels-last map with ``h·w > 1``, or a token sequence
    whose patch tokens form a grid — *and whose map carries gradient to the target*. In a vision
    transformer only the class token of the last block's output reaches the classifier, so the
    choice is that block's input side (its first normalisation, as pytorch-grad-cam advises), never
    the patch embedding unless nothing later qualifies. Modules inside attention layers (query,
    key and value projections) are not candidates.

    The layout (:mod:`saliency.tokens`) is recorded for :func:`capture_output`: for the
    automatic choice from the probe pass (and, where the model's metadata does not tell, a
    structural probe); for a named layer from its first output in the method's own pass (the
    model's metadata, else the input's proportions), so that naming a layer costs no forward.

    Args:
        model: the model; must be an ``nn.Module``.
        spec: a submodule, its dotted name in ``model.named_modules()``, or ``None``.
        probe: runs one forward pass of the model on one input point (automatic choice only).
        signature: what the resolution depends on besides the model (e.g. the input shape,
            dtype and device); with one, the resolution is remembered for the model, as long as
            the chosen module is still one of its submodules.
    """
    if not isinstance(model, nn.Module):
        raise LayerNotFoundError(
            f"a layer method needs an nn.Module model to hook, got {type(model).__name__}"
        )
    modules = dict(model.named_modules())
    module = _named_module(model, modules, spec)
    key = (
        ("automatic", signature)
        if module is None
        else ("layer", layer_name(model, module), signature)
    )
    cache = _RESOLUTIONS.setdefault(model, {}) if signature is not None else {}
    known = cache.get(key)
    chosen = known.module() if known is not None else None
    if known is None or chosen is None or not any(chosen is m for m in modules.values()):
        known = (
            _automatic(model, probe)
            if module is None
            else _Resolution(weakref.ref(module), weakref.ref(model))
        )
        cache[key] = known
        chosen = known.module()
    assert chosen is not None
    _LAYOUTS[chosen] = known
    names = _RESOLVED.get()
    if names is not None:
        names.append(layer_name(model, chosen))
    return chosen


def _named_module(
    model: nn.Module, modules: dict[str, nn.Module], spec: LayerSpec
) -> nn.Module | None:
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
            "model.named_modules(), a module, or None for the deepest spatial or token layer"
        )
    if spec is not None:
        raise LayerNotFoundError(
            f"layer must be a dotted name, an nn.Module or None, got {type(spec).__name__}"
        )
    return None


@dataclass
class _Observation:
    """One probe forward: the input point, each hooked module's output, finishing order."""

    point: Tensor | None = None
    outputs: dict[nn.Module, Tensor] = field(default_factory=dict)
    order: list[nn.Module] = field(default_factory=list)
    result: Any = None
    passes: set[nn.Module] = field(default_factory=set)
    """Modules that returned their input itself (identities, dropout in eval)."""


def _observe(
    model: nn.Module, modules: list[nn.Module], probe: Callable[[], Any], gradients: bool
) -> _Observation:
    """Run ``probe`` with ``modules`` hooked; with ``gradients``, the input requires grad so
    that module outputs can be differentiated."""
    seen = _Observation()
    handles: list[RemovableHandle] = []

    def enter(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if seen.point is not None or not args or not isinstance(args[0], Tensor):
            return None
        seen.point = args[0].detach()
        if gradients and args[0].is_floating_point():
            return (seen.point.clone().requires_grad_(True), *args[1:])
        return None

    def record(module: nn.Module, inputs: Any, output: Any) -> None:
        value = primary_output(output)
        if value is not None:
            seen.outputs[module] = value
            seen.order.append(module)
            if inputs and value is inputs[0]:
                seen.passes.add(module)

    try:
        handles.append(model.register_forward_pre_hook(enter))
        for module in modules:
            handles.append(module.register_forward_hook(record))
        with torch.enable_grad() if gradients else torch.no_grad():
            seen.result = probe()
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _structural(model: nn.Module, modules: list[nn.Module], point: Tensor) -> _Observation:
    """The modules' outputs for the structural probe points (:func:`probe_points`)."""
    batch = probe_points(point)
    return _observe(model, modules, lambda: model(batch), gradients=False)


class _Probe:
    """The structural probe, run at most once, on first use."""

    def __init__(self, model: nn.Module, modules: list[nn.Module], point: Tensor | None):
        self.model, self.modules, self.point = model, modules, point
        self.seen: _Observation | None = None

    def output(self, module: nn.Module) -> Tensor | None:
        if self.point is None or self.point.ndim != 4:
            return None
        if self.seen is None:
            self.seen = _structural(self.model, self.modules, self.point)
        value = self.seen.outputs.get(module)
        return value if value is not None and len(value) == PROBE_POINTS else None


def _size(point: Tensor | None) -> tuple[int, int] | None:
    if point is None or point.ndim != 4:
        return None
    return int(point.shape[-2]), int(point.shape[-1])


def _automatic(model: nn.Module, probe: Callable[[], Any]) -> _Resolution:
    """The deepest map-shaped layer whose map carries gradient to the top class."""
    inside_attention = {
        id(inner)
        for module in model.modules()
        if is_attention_module(module)
        for inner in module.modules()
    }
    hooked = [m for m in model.modules() if m is not model]
    seen = _observe(model, hooked, probe, gradients=True)
    size = _size(seen.point)
    order = _last_positions(seen.order)
    # A module that hands its input through (nn.Identity, dropout in eval) is named by the
    # module that computed the tensor.
    candidates = [
        m
        for m in order
        if m not in seen.passes
        and seen.outputs[m].ndim in (3, 4)
        and len(seen.outputs[m]) == 1
        and (size is not None or seen.outputs[m].ndim == 4)
    ]
    preferred = [m for m in candidates if id(m) not in inside_attention] or candidates
    gradients = _reachability(seen, preferred)
    metadata = token_metadata(model, size) if size is not None else TokenMetadata()
    structural = _Probe(model, preferred, seen.point)
    fallback: _Resolution | None = None
    for module in reversed(preferred):
        value = seen.outputs[module]
        if size is None:
            layout: Layout | None = Layout() if value[0, 0].numel() > 1 else None
        else:
            layout = layout_of(
                value.shape[1:],
                size,
                metadata,
                partial(structural.output, module),
                explicit=False,
            )
        if layout is None:
            continue
        resolution = _Resolution(weakref.ref(module), weakref.ref(model), layout)
        fallback = fallback or resolution
        grad = gradients.get(module) if gradients is not None else value
        if grad is not None and bool(layout.to_map(grad).ne(0).any()):
            return resolution
    if fallback is not None:
        return fallback  # nothing carries gradient: the deepest map (the map will warn)
    raise LayerNotFoundError(
        "no layer of the model outputs a map of the input ((N, C, h, w) or (N, h, w, C) with "
        "h·w > 1, or (N, L, D) tokens on a grid); pass layer= with a dotted module name"
    )


def _last_positions(order: list[nn.Module]) -> list[nn.Module]:
    """Modules in the order of their last completed forward (a module may run several times)."""
    last = {id(m): i for i, m in enumerate(order)}
    return [m for i, m in enumerate(order) if last[id(m)] == i]


def _reachability(seen: _Observation, modules: list[nn.Module]) -> dict[nn.Module, Tensor] | None:
    """∂(top class score)/∂(each module's output), None where it does not reach; None for all
    when the output holds no differentiable score."""
    score = _probe_score(seen.result)
    wanted = [m for m in modules if seen.outputs[m].requires_grad]
    if score is None or not score.requires_grad or not wanted:
        return None
    grads = torch.autograd.grad(score, [seen.outputs[m] for m in wanted], allow_unused=True)
    return {m: g for m, g in zip(wanted, grads, strict=True) if g is not None}


def _probe_score(result: Any) -> Tensor | None:
    scores = class_scores(result)
    if isinstance(scores, Tensor) and scores.is_floating_point():
        if scores.ndim == 2:
            return scores.gather(1, scores.detach().argmax(1, keepdim=True)).sum()
        return scores.sum()
    return None
