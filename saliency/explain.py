"""``saliency.explain``: the one entry point that runs any registered method."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import PIL.Image
from torch import Tensor

from saliency.engine import Engine, Precision
from saliency.errors import InvalidOptionError
from saliency.explanation import Explanation
from saliency.layers import resolved_layers
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
    _check_inputs(inputs)
    engine = Engine(
        model,
        batch_size=batch_size,
        create_graph=create_graph,
        precision=precision,
        compile=compile,
        memory_budget=memory_budget,
    )
    resolved = pending_target(target, inputs)
    with evaluation_state(model, keep_parameter_grads=create_graph), resolved_layers() as layers:
        attributions = instance.attribute(engine, inputs, resolved)
        extras = instance.extras(engine, inputs, resolved, attributions)
        if isinstance(resolved, PendingTarget):
            # Methods that evaluate the inputs themselves observed the outputs on the way.
            resolved.require(engine.predict)
    outputs = resolved.outputs if isinstance(resolved, PendingTarget) else None
    if not create_graph:
        attributions = attributions.detach()
    recorded = instance.options()
    if layers and "layer" in recorded:
        recorded["layer"] = layers[-1]  # the resolved layer, by its dotted name
    if instance.output == "layer":
        _warn_if_blank(name, attributions, recorded.get("layer"))
    return Explanation(
        attributions=attributions.to(inputs.dtype),
        targets=resolved.indices,
        method=name,
        options=recorded,
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
        name = next((n for n in list_methods() if type(method) is get_method(n)), None)
        return name or type(method).__name__, method
    return method, get_method(method).create(**options)


def _warn_if_blank(name: str, attributions: Tensor, layer: object) -> None:
    """Warn when layer maps are all zeros: usually a layer that carries no gradient to the
    target (e.g. the patch tokens of a ViT's last block), not an explanation."""
    blank = attributions.detach().flatten(1).eq(0).all(1)
    count = int(blank.sum())
    if count == 0:
        return
    where = f"of layer {layer!r} " if isinstance(layer, str) else ""
    warnings.warn(
        f"{name}: the maps {where}are all zeros for {count} of {len(blank)} inputs: the layer "
        "carries no gradient to the target (for a vision transformer's last block only the class "
        "token does), or there is no positive evidence; try layer=None (automatic) or another "
        "layer",
        RuntimeWarning,
        stacklevel=3,
    )


def _check_inputs(inputs: object) -> None:
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
