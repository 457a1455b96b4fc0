"""``saliency.explain``: the one entry point that runs any registered method."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import PIL.Image
from torch import Tensor, nn

from saliency.engine import Engine, EngineOptions, Precision
from saliency.errors import InvalidOptionError, LayerNotFoundError
from saliency.explanation import Explanation
from saliency.methods.base import Method
from saliency.methods.registry import get_method, list_methods
from saliency.model_state import evaluation_state
from saliency.targets import PendingTarget, TargetSpec, pending_target

Images = Tensor | Sequence[Tensor | PIL.Image.Image]


def explain(
    model: Callable[[Tensor], Any],
    inputs: Tensor,
    method: str | Method = "gradient",
    target: TargetSpec = None,
    *,
    batch_size: int | None = None,
    create_graph: bool = False,
    precision: Precision = "fp32",
    compile: bool = False,
    memory_budget: int | None = None,
    images: Images | None = None,
    **options: Any,
) -> Explanation:
    """Explain a model's predictions on a batch of inputs.

    Args:
        model: maps an ``(N, C, H, W)`` float tensor to ``(N, K)`` scores (or anything a
            callable ``target`` understands). Put in eval mode during the call; its flags,
            parameters' ``requires_grad`` and ``.grad`` and its hooks are left as they were.
        inputs: ``(N, C, H, W)`` float tensor on the model's device; never modified.
        method: a registered name (see :func:`saliency.list_methods`) or a Method instance.
        target: ``None`` (argmax per sample), an int, N ints, or a callable
            ``outputs -> (N,)`` scores.
        batch_size: maximum points per forward/backward chunk; ``None`` = automatic.
        create_graph: keep the graph so the attributions can be differentiated (second order).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast of the forward pass.
        compile: run the gradient chunks through ``torch.compile`` of the model forward,
            cached per model (repeated calls do not recompile); worth it for many points
            (integrated gradients, SmoothGrad) on a GPU. ``create_graph`` and layer methods
            run eagerly; a model that fails to compile runs eagerly with one warning.
        memory_budget: bytes one chunk may use when ``batch_size`` is automatic; ``None`` = a
            fraction of the free device memory (CUDA) or of the available RAM (CPU).
        images: what the inputs show, for overlays (``(N, 3, H, W)`` in [0, 1] or uint8, or a
            list of tensors/PIL images of any size); default: the inputs rescaled per sample.
        **options: the method's options (see ``saliency methods``).

    Returns:
        An :class:`Explanation` with raw, signed ``attributions`` in the inputs' dtype and
        device: ``(N, C, H, W)`` for input-space methods, ``(N, 1, H, W)`` for layer methods.
    """
    name, instance = _method(method, options)
    check_inputs(inputs)
    _check_capabilities(name, instance, model, create_graph)
    check_model_fits(model, inputs, precision)
    check_images(images, inputs)
    engine = Engine(
        model,
        EngineOptions(
            batch_size=batch_size,
            create_graph=create_graph,
            precision=precision,
            compile=compile,
            memory_budget=memory_budget,
        ),
    )
    resolved = pending_target(target, inputs)
    with evaluation_state(model, keep_parameter_grads=create_graph):
        attributions = instance.attribute(engine, inputs, resolved)
        extras = instance.extras(engine, inputs, resolved, attributions)
        options = instance.resolved_options(engine, inputs)
        # Methods that evaluate the inputs themselves observed the outputs on the way.
        engine.complete(resolved)
    outputs = resolved.outputs if isinstance(resolved, PendingTarget) else None
    if not create_graph:
        attributions = attributions.detach()
    return Explanation(
        attributions=attributions.to(inputs.dtype),
        targets=resolved.indices,
        method=name,
        options=options,
        inputs=inputs,
        images=images,
        outputs=outputs,
        extras=extras,
    )


def _method(method: str | Method, options: dict[str, Any]) -> tuple[str, Method]:
    if isinstance(method, Method):
        if options:
            raise InvalidOptionError(
                f"options {sorted(options)} were given with a Method instance; set them on the "
                "instance instead"
            )
        # Methods registered one by one first: a family (captum:*) is loaded only if needed.
        found = (
            n
            for families in (False, True)
            for n in list_methods(families=families)
            if type(method) is get_method(n)
        )
        name = next(found, None)
        return name or type(method).__name__, method
    return method, get_method(method).create(**options)


def _check_capabilities(
    name: str, method: Method, model: Callable[[Tensor], Any], create_graph: bool
) -> None:
    """Refuse, before any work, what the method declares it cannot do."""
    if create_graph and not method.supports_create_graph:
        raise InvalidOptionError(
            f"method {name!r} cannot differentiate its attributions: create_graph=True is not "
            "supported (accepted: create_graph=False)"
        )
    if method.needs_module and not isinstance(model, nn.Module):
        raise LayerNotFoundError(
            f"method {name!r} hooks the model's layers: it needs an nn.Module model, got "
            f"{type(model).__name__}"
        )


def check_model_fits(model: object, inputs: Tensor, precision: str = "fp32") -> None:
    """Raise, before any work, where torch would fail deep in the first forward: a module
    whose floating-point parameters are on another device than the inputs, or (without
    autocast) of another dtype. A model without parameters, or with parameters on several
    devices or of several dtypes (sharded, mixed), is left to run."""
    if not isinstance(model, nn.Module):
        return
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    devices = {t.device for t in tensors}
    if len(devices) == 1 and (device := devices.pop()) != inputs.device:
        raise InvalidOptionError(
            f"the model is on {device} but the inputs are on {inputs.device}; move one of them, "
            f"e.g. inputs.to({str(device)!r}) or model.to({str(inputs.device)!r})"
        )
    dtypes = {t.dtype for t in model.parameters() if t.is_floating_point()}
    if precision == "fp32" and len(dtypes) == 1 and (dtype := dtypes.pop()) != inputs.dtype:
        raise InvalidOptionError(
            f"the model's parameters are {dtype} but the inputs are {inputs.dtype}; convert one "
            f"of them, e.g. inputs.to({dtype}) or model.to({inputs.dtype})"
        )


def check_images(images: object, inputs: Tensor) -> None:
    """Raise unless ``images`` (for overlays) has one image per input sample."""
    if isinstance(images, Tensor):
        if images.ndim != 4:
            return  # not a batch: the Explanation says what it accepts
        count = int(images.shape[0])
    elif isinstance(images, Sequence) and not isinstance(images, str):
        count = len(images)
    else:
        return
    if count != len(inputs):
        raise InvalidOptionError(
            f"images= holds {count} images for {len(inputs)} input samples; accepted: one image "
            "per sample, in the same order"
        )


def check_inputs(inputs: object) -> None:
    """Raise unless ``inputs`` is a floating-point ``(N, C, H, W)`` tensor with N ≥ 1."""
    if not isinstance(inputs, Tensor) or inputs.ndim != 4 or not inputs.is_floating_point():
        given = (
            f"a {inputs.dtype} tensor of shape {tuple(inputs.shape)}"
            if isinstance(inputs, Tensor)
            else f"a {type(inputs).__name__}"
        )
        raise InvalidOptionError(
            f"inputs must be a floating-point (N, C, H, W) tensor; got {given}"
        )
    if len(inputs) == 0:
        raise InvalidOptionError("inputs hold no samples (N = 0)")
