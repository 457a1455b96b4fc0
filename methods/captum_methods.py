"""captum's attribution classes as methods: ``captum:NAME`` for every ``captum.attr`` class that
takes a model and returns input-shaped attributions.

The family is found by introspecting ``captum.attr`` (no list of names is kept here): a member is
a public attribution class with an ``attribute`` method that is not a layer or neuron method,
whose constructor takes the model (``model`` or ``forward_func``) and needs nothing else but a
``layer``. Each member is a frozen dataclass generated from captum's signatures: its fields are
the constructor's and ``attribute()``'s keyword arguments with captum's defaults, so unknown
option names are rejected with the accepted list, and ``saliency methods`` and the CLI show them.

Run under saliency's contract: class targets (None/int/sequence) are resolved first and passed
as captum's ``target``; a callable target wraps the forward. The model is in eval mode with
frozen parameters (see :func:`saliency.explain`); whatever captum attaches to the modules
(DeepLift's saved inputs, LRP's rules and swapped weights, hooks) is undone afterwards, and
captum's inputs are a copy of ours. Where captum takes ``internal_batch_size`` or
``perturbations_per_eval``, the engine's ``batch_size`` (or its memory-bounded automatic size)
sets it unless given; other classes are called on chunks of that many samples.

Differences from calling captum by hand, each one an addition: ``layer`` (GuidedGradCam) also
takes a dotted name or ``None`` for the automatic layer; a number for a ``baselines`` argument
that captum only accepts as a tensor (GradientShap, DeepLiftShap) means a constant input; an
argument whose captum default is not a plain value (e.g. FeaturePermutation's ``perm_func``)
defaults to ``None``, meaning captum's default; ``seed`` runs the call under a forked torch
generator seeded with it (for the methods that sample). ``return_convergence_delta`` and
``additional_forward_args`` are not options (the result is the attribution tensor); extra model
inputs come from ``explain(..., forward_args=(...))``, passed as captum's
``additional_forward_args`` (captum expands them along with its points). captum has no
``create_graph``: these methods refuse it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import random
import re
import types
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from importlib.metadata import PackageNotFoundError, version
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from saliency.engine import Engine
from saliency.errors import InvalidOptionError, ModelOutputError, accepted
from saliency.forward_args import ForwardArgs
from saliency.layers import LayerSpec
from saliency.methods.base import Method
from saliency.model_state import modules_preserved
from saliency.targets import Target, check_outputs
from saliency.validation import is_int, is_real, require_int

PREFIX = "captum:"
_MODEL_ARGUMENTS = ("model", "forward_func")
_NOT_OPTIONS = frozenset({"target", "additional_forward_args", "return_convergence_delta"})
_BATCHING = frozenset({"internal_batch_size", "perturbations_per_eval"})
_PLAIN = (type(None), bool, int, float, str)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CaptumMethod(Method):
    """A captum attribution class called under saliency's contract (see the module docstring).

    Class attributes (set per generated member, whose last field is ``seed``):
        captum_class: the ``captum.attr`` class.
        constructor_options: the fields passed to its constructor (besides the model).
        attribute_options: the fields passed to its ``attribute()``.
        captum_defaulted: fields whose captum default is not a plain value: ``None`` here
            leaves the argument out, so captum uses its default.
        number_as_tensor: ``baselines`` fields that captum takes only as tensors: a number
            becomes a constant ``(1, C, H, W)`` tensor.
        renamed: captum's argument name of each field renamed ``captum_<name>`` because
            :func:`saliency.explain` has a parameter of that name.
    """

    captum_class: ClassVar[type[Any]]
    constructor_options: ClassVar[tuple[str, ...]] = ()
    attribute_options: ClassVar[tuple[str, ...]] = ()
    takes_forward_args: ClassVar[bool] = False
    captum_defaulted: ClassVar[frozenset[str]] = frozenset()
    number_as_tensor: ClassVar[frozenset[str]] = frozenset()
    renamed: ClassVar[Mapping[str, str]] = {}
    supports_create_graph = False

    @classmethod
    def create(cls, **options: Any) -> CaptumMethod:
        names = cls.option_names()
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.init
            and f.name not in options
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing and not set(options) - set(names):
            raise InvalidOptionError(
                f"{cls.registered_name()} needs the option {missing[0]!r} (a required argument of "
                f"captum's {cls.captum_class.__name__}); accepted: {accepted(names)}"
            )
        return super().create(**options)

    @classmethod
    def registered_name(cls) -> str:
        """``captum:NAME``."""
        return PREFIX + cls.captum_class.__name__

    def __post_init__(self) -> None:
        for option in dataclasses.fields(self):
            value = getattr(self, option.name)
            _check_value(option.name, value, option.type)
            if option.name in _BATCHING | {"seed"} and value is not None:
                require_int(option.name, value, 0 if option.name == "seed" else 1)

    def check_forward_args(self, forward_args: ForwardArgs) -> None:
        name = self.registered_name()
        if not self.takes_forward_args:
            raise InvalidOptionError(
                f"{name} cannot pass forward_args to the model (captum's "
                f"{self.captum_class.__name__}.attribute takes no additional_forward_args); "
                "accepted: forward_args=None"
            )
        if forward_args.kwargs:
            raise InvalidOptionError(
                f"{name} passes forward_args as captum's additional_forward_args, which are "
                f"positional: got keyword arguments {sorted(forward_args.kwargs)}; accepted: a "
                "tensor or a tuple"
            )

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        engine.complete(target)
        classes = target.indices
        forward = _Scores(engine, None if classes is not None else target)
        constructor = self._constructor_arguments(engine, inputs)
        batching = _BATCHING & set(self.attribute_options)
        per_pass = engine.points_per_pass(inputs.shape[1:], inputs.device)
        gradients = self.derivative_order > 0
        # Samples per call: classes that batch their passes get the whole batch at once.
        size = len(inputs) if batching else per_pass
        parts = []
        seed = getattr(self, "seed", None)
        # Perturbation methods need no gradients: no graph is built, whatever captum does.
        grad_mode = nullcontext() if gradients else torch.no_grad()
        with modules_preserved(engine.model), _seeded(seed, inputs.device), grad_mode:
            attribution = self.captum_class(forward, **constructor)
            # LRP puts the weights back with load_state_dict, an in-place copy that bumps every
            # parameter's version; modules_preserved swaps swapped data back instead.
            if hasattr(attribution, "_restore_state"):
                attribution._restore_state = lambda: None
            for start in range(0, len(inputs), size):
                chunk = inputs[start : start + size].detach().clone().requires_grad_(gradients)
                arguments = self._attribute_arguments(chunk, per_pass)
                if classes is not None:
                    arguments["target"] = classes[start : start + size]
                else:
                    arguments["target"] = 0
                if engine.forward_args is not None:
                    rows = torch.arange(start, start + len(chunk), device=inputs.device)
                    arguments["additional_forward_args"] = engine.forward_args.select(rows).args
                parts.append(attribution.attribute(chunk, **arguments))
        return torch.cat(parts).detach().to(inputs.dtype)

    def _constructor_arguments(self, engine: Engine, inputs: Tensor) -> dict[str, Any]:
        arguments = {}
        for name in self.constructor_options:
            value = getattr(self, name)
            if name == "layer":
                value = engine.find_layer(value, inputs)
            elif value is None and name in self.captum_defaulted:
                continue
            arguments[self.renamed.get(name, name)] = value
        return arguments

    def _attribute_arguments(self, chunk: Tensor, per_pass: int) -> dict[str, Any]:
        arguments = {}
        for name in self.attribute_options:
            value = getattr(self, name)
            if value is None and name in self.captum_defaulted:
                continue
            if value is None and name == "internal_batch_size":
                value = max(per_pass, len(chunk))
            elif value is None and name == "perturbations_per_eval":
                value = max(1, per_pass // len(chunk))
            elif name in self.number_as_tensor and is_real(value):
                value = torch.full_like(chunk[:1], float(value)).detach()
            arguments[self.renamed.get(name, name)] = value
        return arguments


class _Scores(nn.Module):
    """The model as captum sees it: the engine's forward (its autocast precision), ``(m, K)``
    class scores checked, or the ``(m, 1)`` scores of a callable target.

    The model is a submodule, so captum's module hooks (DeepLift, LRP, GuidedBackprop) reach its
    layers."""

    def __init__(self, engine: Engine, function: Target | None) -> None:
        super().__init__()
        self.model = engine.model
        self.engine = engine
        self.function = function

    def forward(self, points: Tensor, *extra: Any) -> Tensor:
        outputs = self.engine.forward(points, *extra)
        if self.function is None:
            scores = check_outputs(outputs, len(points))
        else:
            samples = torch.arange(len(points), device=points.device)
            scores = self.function.scores(outputs, samples)[:, None]
        if points.requires_grad and torch.is_grad_enabled() and not scores.requires_grad:
            raise ModelOutputError(
                "the target scores do not depend on the model input through autograd; a "
                "gradient method needs a differentiable model (no torch.no_grad, .detach() or "
                "numpy inside forward)"
            )
        return scores


@contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """The global generators captum draws from — torch's, numpy's (GradientShap, baseline
    sampling) and Python's — seeded with ``seed`` in the block and restored after (``None``:
    left alone, as captum uses them)."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            np.random.seed(seed)
            random.seed(seed)
            yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


# ------------------------------------------------------------------------------ the family


class CaptumFamily:
    """The ``captum:*`` method family (see :class:`saliency.methods.registry.MethodFamily`)."""

    @functools.cache  # noqa: B019 - one family object for the process
    def members(self) -> tuple[str, ...]:
        import captum.attr

        return tuple(
            name
            for name in sorted(dir(captum.attr))
            if not name.startswith("_") and _is_member(getattr(captum.attr, name))
        )

    @functools.cache  # noqa: B019 - one family object for the process
    def method(self, member: str) -> type[Method]:
        if member not in self.members():
            raise InvalidOptionError(
                f"captum.attr has no attribution class {member!r} of this family; accepted: "
                f"{accepted(self.members())}"
            )
        import captum.attr

        return _make_method(getattr(captum.attr, member))


CAPTUM = CaptumFamily()


def _is_member(candidate: object) -> bool:
    from captum.attr import Attribution
    from captum.attr._utils.attribution import InternalAttribution

    if not (
        inspect.isclass(candidate)
        and issubclass(candidate, Attribution)
        and not issubclass(candidate, InternalAttribution)
        and callable(getattr(candidate, "attribute", None))
    ):
        return False
    parameters = list(inspect.signature(candidate.__init__).parameters.values())[1:]
    if not parameters or parameters[0].name not in _MODEL_ARGUMENTS:
        return False
    return all(
        p.default is not p.empty or p.name == "layer" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        for p in parameters[1:]
    )


def _options(function: Any, skip: int) -> list[inspect.Parameter]:
    parameters = list(inspect.signature(function).parameters.values())[skip:]
    return [
        p
        for p in parameters
        if p.name not in _NOT_OPTIONS and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]


def _make_method(captum_class: type[Any]) -> type[CaptumMethod]:
    """The frozen dataclass of one captum class, its fields from captum's signatures."""
    from captum.attr import GradientAttribution

    constructor = _options(captum_class.__init__, 2)  # self, the model
    attribute = _options(captum_class.attribute, 2)  # self, inputs
    extra = "additional_forward_args" in inspect.signature(captum_class.attribute).parameters
    own = [*constructor, *attribute]
    names = [_field_name(p.name) for p in own]
    if len(set(names)) != len(names) or "seed" in names:
        raise TypeError(f"captum.attr.{captum_class.__name__}: option names clash: {names}")
    hints = _signature_hints(captum_class)
    specs: list[tuple[str, Any, Any]] = []
    defaulted: set[str] = set()
    number_as_tensor: set[str] = set()
    for parameter, field_name in zip(own, names, strict=True):
        annotation = hints.get(parameter.name, Any)
        default = parameter.default
        if parameter.name == "layer":
            annotation, default = LayerSpec, None
        elif parameter.name in _BATCHING:
            annotation, default = int | None, None
        elif default is not parameter.empty and not _is_plain(default):
            annotation, default = annotation | None, None
            defaulted.add(field_name)
        if parameter.name == "baselines" and not _accepts_numbers(annotation):
            annotation = float | annotation
            number_as_tensor.add(field_name)
        field: Any = dataclasses.field() if default is parameter.empty else default
        specs.append((field_name, annotation, field))
    specs.append(("seed", int | None, None))
    name = captum_class.__name__
    doc = (
        f"captum's {name}: {_first_sentence(captum_class)}\n\n"
        f"Options: captum's arguments of ``{name}(...)`` and ``{name}.attribute(...)``, with "
        "captum's defaults (see :mod:`saliency.methods.captum_methods` for the differences), "
        "and ``seed``."
    )
    cls = dataclasses.make_dataclass(
        f"Captum{name}",
        specs,
        bases=(CaptumMethod,),
        frozen=True,
        kw_only=True,
        namespace={
            "__module__": __name__,
            "__doc__": doc,
            "captum_class": captum_class,
            "constructor_options": tuple(names[: len(constructor)]),
            "attribute_options": tuple(names[len(constructor) :]),
            "takes_forward_args": extra,
            "captum_defaulted": frozenset(defaulted),
            "number_as_tensor": frozenset(number_as_tensor),
            "renamed": {n: p.name for n, p in zip(names, own, strict=True) if n != p.name},
            "derivative_order": 1 if issubclass(captum_class, GradientAttribution) else 0,
            "needs_module": list(inspect.signature(captum_class.__init__).parameters)[1] == "model",
            "paper": f"captum.attr.{name} (captum {_captum_version()})",
        },
    )
    return cls


def __getattr__(name: str) -> type[CaptumMethod]:
    """``CaptumNAME`` classes by name (so that instances pickle)."""
    member = name.removeprefix("Captum")
    if name.startswith("Captum") and member in CAPTUM.members():
        return typing.cast(type[CaptumMethod], CAPTUM.method(member))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ------------------------------------------------------------------------------- helpers


def _field_name(argument: str) -> str:
    """The option name of a captum argument: its own, or ``captum_<name>`` where it would clash
    with a parameter of :func:`saliency.explain` (IntegratedGradients' ``method``)."""
    from saliency.explain import explain

    return f"captum_{argument}" if argument in inspect.signature(explain).parameters else argument


def _signature_hints(captum_class: type[Any]) -> dict[str, Any]:
    hints: dict[str, Any] = {}
    for function in (captum_class.attribute, captum_class.__init__):
        try:
            hints.update(typing.get_type_hints(function))
        except Exception:  # an annotation captum names only for type checkers
            signature = inspect.signature(function)
            hints.update(
                {
                    p.name: p.annotation
                    for p in signature.parameters.values()
                    if p.annotation is not p.empty and not isinstance(p.annotation, str)
                }
            )
    return hints


def _is_plain(value: object) -> bool:
    if isinstance(value, tuple):
        return all(_is_plain(v) for v in value)
    return isinstance(value, _PLAIN)


def _members(annotation: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return tuple(m for arg in typing.get_args(annotation) for m in _members(arg))
    return (annotation,)


def _accepts_numbers(annotation: Any) -> bool:
    return annotation is Any or any(m in (int, float) for m in _members(annotation))


def _check_value(name: str, value: object, annotation: Any) -> None:
    """Check values whose annotation is a plain type (or None of one); captum checks the rest."""
    members = _members(annotation)
    if not all(m in _PLAIN for m in members):
        return
    fits = (
        (value is None and type(None) in members)
        or (isinstance(value, bool) and bool in members)
        or (is_int(value) and (int in members or float in members))
        or (is_real(value) and float in members)
        or (isinstance(value, str) and str in members)
    )
    if not fits:
        names = " or ".join("None" if m is type(None) else m.__name__ for m in members)
        raise InvalidOptionError(f"{name}={value!r}; accepted: {names}")


def _first_sentence(cls: type[Any]) -> str:
    """The first sentence of the class docstring: up to a full stop after a word of three or
    more letters (so "et. al." does not end it)."""
    paragraph = " ".join((inspect.getdoc(cls) or cls.__name__).split("\n\n")[0].split())
    end = re.search(r"(?<=[a-z]{3})\.(\s|$)", paragraph)
    return paragraph[: end.start()] + "." if end else paragraph


@functools.cache
def _captum_version() -> str:
    try:
        return version("captum")
    except PackageNotFoundError:
        return "unknown version"
