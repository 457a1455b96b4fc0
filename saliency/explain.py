"""``saliency.explain`` and ``saliency.explain_many``: the entry points that run registered
methods (``explain_many`` shares one pass among the one-pass methods)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import PIL.Image
from torch import Tensor, nn

from saliency.class_names import (
    ClassNames,
    check_class_names,
    class_names_of,
    fitting_class_names,
)
from saliency.engine import Engine, EngineOptions, Precision, Share
from saliency.errors import InvalidOptionError, LayerNotFoundError, accepted
from saliency.explanation import Explanation
from saliency.forward_args import ForwardArgs, ForwardArgsSpec
from saliency.methods.base import COMMON_OPTIONS, Method
from saliency.methods.registry import get_method, list_methods
from saliency.model_state import channels_last_weights, evaluation_state
from saliency.targets import FunctionTarget, PendingTarget, Target, TargetSpec, pending_target

Images = Tensor | Sequence[Tensor | PIL.Image.Image]
Methods = Sequence[str | Method] | Mapping[str, Mapping[str, Any]]


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
    channels_last: bool = False,
    images: Images | None = None,
    class_names: Sequence[str] | None = None,
    forward_args: ForwardArgsSpec = None,
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
        channels_last: run the model with its 4-D weights and the points in channels-last
            memory format for the call (faster convolutions on CPU and tensor cores; results
            differ from the default in the last bits, so not bit-identical to captum's).
        images: what the inputs show, for overlays (``(N, 3, H, W)`` in [0, 1] or uint8, or a
            list of tensors/PIL images of any size); default: the inputs rescaled per sample.
        class_names: one name per model output, for titles and legends; default: the names
            :func:`saliency.load_model` gave the model, a Hugging Face ``config.id2label``, or
            timm's ImageNet names (see :mod:`saliency.class_names`).
        forward_args: extra inputs of a model ``model(x, *args)`` or ``model(x, **kwargs)``: a
            tensor, a tuple (positional) or a dict (keyword arguments). Tensors have one row
            per sample (first dimension N); every method gives the model, with each chunk of
            points (path points, noisy copies, masked inputs, ...), the rows of the points'
            samples. Other values are passed as they are. Never differentiated. Captum
            methods take a tuple only (captum's ``additional_forward_args``).
        **options: the method's options (see ``saliency methods``).

    Returns:
        An :class:`Explanation` with raw, signed ``attributions`` in the inputs' dtype and
        device: ``(N, C, H, W)`` for input-space methods, ``(N, 1, H, W)`` for layer methods.
        ``targets`` holds the explained class of each sample (``None`` for a callable target)
        and ``target_scores`` the explained score at the inputs: the model output of that
        class, or the callable's value (one extra forward pass without gradients).
    """
    name, instance = _method(method, options)
    engine_options = EngineOptions(
        batch_size=batch_size,
        create_graph=create_graph,
        precision=precision,
        compile=compile,
        memory_budget=memory_budget,
        channels_last=channels_last,
    )
    chosen = [(name, instance)]
    return _explain_all(
        model, inputs, chosen, target, engine_options, images, class_names, forward_args
    )[name]


def explain_many(
    model: Callable[[Tensor], Any],
    inputs: Tensor,
    methods: Methods,
    target: TargetSpec = None,
    *,
    batch_size: int | None = None,
    create_graph: bool = False,
    precision: Precision = "fp32",
    compile: bool = False,
    memory_budget: int | None = None,
    channels_last: bool = False,
    images: Images | None = None,
    class_names: Sequence[str] | None = None,
    forward_args: ForwardArgsSpec = None,
    **options: Any,
) -> dict[str, Explanation]:
    """Explain the same inputs with several methods, sharing every pass that can be shared.

    The one-pass methods (those whose :meth:`~saliency.methods.Method.share` says what they
    take from a single forward and backward of the inputs: ``gradient``, ``gradient_x_input``,
    ``gradcam``, ...) are evaluated together, one forward and one backward per chunk for all of
    them; the others run their own passes as in :func:`explain`. A target given as ``None`` is
    resolved once, by the first pass over the inputs. Each result equals a separate
    :func:`explain` call with the same arguments.

    Args:
        model, inputs, target, batch_size, create_graph, precision, compile, memory_budget,
            channels_last, images, class_names, forward_args: as in :func:`explain`, for every
            method.
        methods: registered names or Method instances (``["gradient", "gradcam"]``), or a
            mapping from names to each method's own options
            (``{"gradcam": {"layer": "layer4"}, "gradient": {}}``).
        **options: method options; each applies to every method given by name that accepts
            it (``steps=8`` reaches ``integrated_gradients`` but not ``gradient``). An option
            that none of them accepts is an error, as are options a mapping gives a method that
            it does not accept.

    Returns:
        The explanations by method name, in the order of ``methods``. With
        ``create_graph=True`` the shared methods' attributions hang on one autograd graph:
        differentiate them together, or pass ``retain_graph=True`` to all but the last.
    """
    chosen = _methods(methods, options)
    engine_options = EngineOptions(
        batch_size=batch_size,
        create_graph=create_graph,
        precision=precision,
        compile=compile,
        memory_budget=memory_budget,
        channels_last=channels_last,
    )
    return _explain_all(
        model, inputs, chosen, target, engine_options, images, class_names, forward_args
    )


def _explain_all(
    model: Callable[[Tensor], Any],
    inputs: Tensor,
    chosen: list[tuple[str, Method]],
    target: TargetSpec,
    engine_options: EngineOptions,
    images: Images | None,
    class_names: Sequence[str] | None = None,
    forward_args: ForwardArgsSpec = None,
) -> dict[str, Explanation]:
    """Run the methods on ``inputs``: the one-pass ones in one shared pass, the others as they
    are, each with an engine of its own (chunk sizes measured as in a separate call)."""
    check_inputs(inputs)
    extras = ForwardArgs.of(forward_args, len(inputs))
    for name, instance in chosen:
        _check_capabilities(name, instance, model, engine_options.create_graph)
        if extras is not None:
            instance.check_forward_args(extras)
    check_model_fits(model, inputs, engine_options.precision)
    check_images(images, inputs)
    given_names = check_class_names(class_names)
    resolved = pending_target(target, inputs)
    create_graph = engine_options.create_graph
    results: dict[str, tuple[Tensor, dict[str, Tensor], dict[str, Any]]] = {}
    with (
        evaluation_state(model, keep_parameter_grads=create_graph),
        channels_last_weights(model, engine_options.channels_last),
    ):
        shared = Engine(model, engine_options, extras)
        shares = {
            name: share
            for name, instance in chosen
            if (share := _share(instance, shared, inputs)) is not None
        }
        if shares:
            computed = shared.share_pass(inputs, resolved, list(shares.values()))
            attributions = dict(zip(shares, computed, strict=True))
        for name, instance in chosen:
            if name in shares:
                engine, attribution = shared, attributions[name]
            else:
                engine = Engine(model, engine_options, extras)
                attribution = instance.attribute(engine, inputs, resolved)
            results[name] = (
                attribution,
                instance.extras(engine, inputs, resolved, attribution),
                instance.resolved_options(engine, inputs),
            )
        # Methods that evaluate the inputs themselves observed the outputs on the way.
        shared.complete(resolved)
        # A callable's scores are seen by no pass at the inputs alone: one more forward.
        function_scores = (
            shared.target_scores(inputs, resolved) if isinstance(resolved, FunctionTarget) else None
        )
    outputs = resolved.outputs if isinstance(resolved, PendingTarget) else None
    target_scores = _target_scores(resolved, outputs, function_scores)
    names = _class_names(model, given_names, outputs)
    return {
        name: _explanation(
            name,
            instance,
            inputs,
            resolved,
            outputs,
            images,
            *results[name],
            create_graph=create_graph,
            target_scores=target_scores,
            class_names=names,
        )
        for name, instance in chosen
    }


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
        stacklevel=4,
    )


def _target_scores(
    target: Target, outputs: Tensor | None, function_scores: Tensor | None
) -> Tensor | None:
    """``(N,)`` float32 explained scores at the inputs: the target class's output, or the
    callable target's value."""
    if function_scores is not None:
        return function_scores.detach().float()
    if outputs is None or target.indices is None:
        return None
    return outputs.gather(1, target.indices.to(outputs.device)[:, None])[:, 0]


def _class_names(
    model: object, given: ClassNames | None, outputs: Tensor | None
) -> ClassNames | None:
    """The given class names (checked against the outputs), else those known of the model."""
    count = None if outputs is None else int(outputs.shape[1])
    if given is not None:
        if fitting_class_names(given, count) is None:
            raise InvalidOptionError(
                f"class_names holds {len(given)} names but the model has {count} outputs; "
                "accepted: one name per output, in output order"
            )
        return given
    return fitting_class_names(class_names_of(model), count)


def _share(instance: Method, engine: Engine, inputs: Tensor) -> Share | None:
    """The method's part of a shared pass, if it opts into one (:meth:`Method.shares_pass`)."""
    return instance.share(engine, inputs) if instance.shares_pass() else None


def _explanation(
    name: str,
    instance: Method,
    inputs: Tensor,
    target: Target,
    outputs: Tensor | None,
    images: Images | None,
    attributions: Tensor,
    extras: dict[str, Tensor],
    options: dict[str, Any],
    *,
    create_graph: bool,
    target_scores: Tensor | None = None,
    class_names: ClassNames | None = None,
) -> Explanation:
    if not create_graph:
        attributions = attributions.detach()
    if instance.output == "layer":
        _warn_if_blank(name, attributions, options.get("layer"))
    return Explanation(
        attributions=attributions.to(inputs.dtype),
        targets=target.indices,
        method=name,
        options=options,
        inputs=inputs,
        images=images,
        outputs=outputs,
        extras=extras,
        target_scores=target_scores,
        class_names=class_names,
    )


def _methods(methods: Methods, options: dict[str, Any]) -> list[tuple[str, Method]]:
    """The named methods with the options that apply to each, and the given instances."""
    if isinstance(methods, str | Method):
        methods = [methods]
    own: Mapping[str, Mapping[str, Any]] = methods if isinstance(methods, Mapping) else {}
    given = list(methods)
    if not given:
        raise InvalidOptionError("methods is empty; give at least one method name")
    chosen: list[tuple[str, Method]] = []
    used: set[str] = set()
    for method in given:
        if isinstance(method, Method):
            chosen.append(_method(method, {}))
            continue
        if not isinstance(method, str):
            raise InvalidOptionError(
                f"methods holds a {type(method).__name__}; accepted: method names (see "
                "saliency.list_methods()) or Method instances"
            )
        names = get_method(method).option_names()
        shared = {key: value for key, value in options.items() if key in names}
        if len(given) == 1 and not own:
            shared = options  # one method: its own error for an unknown option
        used.update(shared)
        chosen.append(_method(method, {**shared, **own.get(method, {})}))
    unknown = sorted(set(options) - used)
    if unknown:
        by_name = [n for n in given if isinstance(n, str)]
        if not by_name:
            raise InvalidOptionError(
                f"options {unknown} were given with Method instances only; set them on the "
                "instances instead"
            )
        known = sorted({o for n in by_name for o in get_method(n).option_names()})
        raise InvalidOptionError(
            f"no method among {by_name} accepts the option {unknown[0]!r}; accepted: "
            f"{accepted(known) if known else 'none of their own'} and the common options "
            f"{accepted(COMMON_OPTIONS)}"
        )
    seen: set[str] = set()
    for name, _ in chosen:
        if name in seen:
            raise InvalidOptionError(f"method {name!r} is given twice in methods")
        seen.add(name)
    return chosen


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
