"""Targets: which scalar score of the model output is explained for each sample.

A user passes a *target specification* (``None``, an ``int``, a sequence or tensor of ints, or a
callable); :func:`resolve_target` turns it into a :class:`Target` that selects one score per
evaluated point, whatever chunk of points the engine is evaluating.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias, runtime_checkable

import torch
from torch import Tensor

from saliency.errors import InvalidTargetError, ModelOutputError
from saliency.validation import is_int

ScoreFunction: TypeAlias = Callable[[Any], Tensor]
TargetSpec: TypeAlias = int | Sequence[int] | Tensor | ScoreFunction | None

ACCEPTED_TARGETS = (
    "None (each sample's highest-scoring class), an int class index, a sequence or 1-D integer "
    "tensor of N class indices, or a callable mapping the model output to N scores"
)


@runtime_checkable
class Target(Protocol):
    """Selects the explained score of each point from the model output of a chunk of points."""

    @property
    def indices(self) -> Tensor | None:
        """``(N,)`` class indices, or ``None`` for a callable target."""
        ...

    def scores(self, outputs: Any, samples: Tensor) -> Tensor:
        """The ``(m,)`` scores of ``m`` points; ``samples[j]`` is point ``j``'s sample index."""
        ...

    def repeat(self, times: int) -> Target:
        """The target for ``times`` stacked copies of the batch (copy-major order)."""
        ...


@dataclass(frozen=True)
class ClassTarget:
    """One class index per sample: ``score_j = outputs[j, indices[samples[j]]]``."""

    indices: Tensor

    def scores(self, outputs: Any, samples: Tensor) -> Tensor:
        outputs = check_outputs(outputs, len(samples))
        classes = self.indices.to(outputs.device)[samples.to(outputs.device)]
        return outputs.gather(1, classes[:, None]).squeeze(1)

    def repeat(self, times: int) -> ClassTarget:
        return ClassTarget(self.indices.repeat(times))


@dataclass(frozen=True)
class FunctionTarget:
    """A user function from the model output of ``m`` points to their ``(m,)`` scores."""

    function: ScoreFunction
    indices: Tensor | None = None

    def scores(self, outputs: Any, samples: Tensor) -> Tensor:
        scores = self.function(outputs)
        if not isinstance(scores, Tensor) or scores.shape != (len(samples),):
            shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise InvalidTargetError(
                f"target function returned {shape} for a chunk of {len(samples)} inputs; it must "
                f"return a tensor of shape ({len(samples)},), one score per input"
            )
        return scores

    def repeat(self, times: int) -> FunctionTarget:
        return self


@dataclass(eq=False)
class PendingTarget:
    """A class target for ``inputs`` that the model outputs at the inputs complete.

    The outputs are *observed* in the first pass that evaluates the inputs themselves (a plain
    gradient, Grad-CAM), so that pass is also the prediction: no separate forward. A method whose
    points are not the inputs (paths, noisy copies) makes the engine :meth:`require` them first,
    with one no-grad forward. Given class indices are checked against the number of classes when
    the outputs arrive.

    Attributes:
        inputs: the ``(N, ...)`` inputs being explained.
        given: ``(N,)`` class indices, or ``None`` for each sample's highest-scoring class.
        outputs: the float32 ``(N, K)`` outputs at the inputs, once observed.
    """

    inputs: Tensor
    given: Tensor | None = None
    outputs: Tensor | None = field(default=None, init=False)
    complete: bool = field(default=False, init=False)
    _classes: Tensor | None = field(default=None, init=False, repr=False)

    @property
    def indices(self) -> Tensor | None:
        """``(N,)`` class indices (``None`` until the outputs are observed)."""
        return self._classes if self.complete else None

    def observes(self, source: Tensor | None) -> bool:
        """Whether a pass over the points ``source`` completes this target."""
        return not self.complete and source is not None and source is self.inputs

    def observe(self, outputs: Any, samples: Tensor) -> None:
        """Record the model outputs of the inputs ``samples`` (idempotent)."""
        outputs = check_outputs(outputs, len(samples)).detach()
        if self.outputs is None or self._classes is None:
            if self.given is not None:
                _check_range(self.given, outputs.shape[1])
            shape = (len(self.inputs), outputs.shape[1])
            self.outputs = outputs.new_zeros(shape, dtype=torch.float32)
            self._classes = (
                self.given.to(outputs.device)
                if self.given is not None
                else torch.zeros(len(self.inputs), dtype=torch.long, device=outputs.device)
            )
        samples = samples.to(outputs.device)
        self.outputs[samples] = outputs.float()
        if self.given is None:
            self._classes[samples] = outputs.argmax(dim=1)

    def finish(self) -> None:
        """A pass that observed every input has ended."""
        if self.outputs is not None:
            self.complete = True

    def require(self, predict: Callable[[Tensor], Tensor]) -> None:
        """Complete the target with ``predict(inputs)`` unless a pass already observed them."""
        if not self.complete:
            outputs = predict(self.inputs)
            self.observe(outputs, torch.arange(len(self.inputs), device=outputs.device))
            self.complete = True

    def scores(self, outputs: Any, samples: Tensor) -> Tensor:
        if self._classes is None:
            raise InvalidTargetError("the target classes are not known before the outputs")
        return ClassTarget(self._classes).scores(outputs, samples)

    def repeat(self, times: int) -> Target:
        return RepeatedTarget(self, times)


@dataclass(frozen=True)
class RepeatedTarget:
    """A pending target for ``times`` stacked copies of its inputs (copy-major order)."""

    base: PendingTarget
    times: int

    @property
    def indices(self) -> Tensor | None:
        indices = self.base.indices
        return None if indices is None else indices.repeat(self.times)

    def scores(self, outputs: Any, samples: Tensor) -> Tensor:
        return self.base.scores(outputs, samples % len(self.base.inputs))

    def repeat(self, times: int) -> Target:
        return RepeatedTarget(self.base, self.times * times)


def pending_base(target: Target) -> PendingTarget | None:
    """The pending target behind ``target``, if its classes may still be unknown."""
    if isinstance(target, RepeatedTarget):
        return target.base
    return target if isinstance(target, PendingTarget) else None


def pending_target(spec: TargetSpec, inputs: Tensor) -> Target:
    """A target for ``inputs`` that needs no model outputs yet: a :class:`FunctionTarget` for a
    callable, else a :class:`PendingTarget` (the count of given indices is checked now)."""
    if callable(spec) and not isinstance(spec, Tensor):
        return FunctionTarget(spec)
    if spec is None:
        return PendingTarget(inputs)
    return PendingTarget(inputs, _as_indices(spec, len(inputs), inputs.device))


def class_scores(outputs: Any) -> Any:
    """The class scores inside a model output, by one rule (anything else is returned as is).

    A tensor is the scores; otherwise an object with a tensor ``logits`` attribute (a Hugging
    Face ``ModelOutput``), a mapping with a tensor ``"logits"`` entry, or a tuple or list whose
    first element is a tensor gives that tensor. :func:`check_outputs` then requires ``(N, K)``.
    """
    if isinstance(outputs, Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(outputs, Mapping) and isinstance(outputs.get("logits"), Tensor):
        return outputs["logits"]
    if isinstance(outputs, tuple | list) and outputs and isinstance(outputs[0], Tensor):
        return outputs[0]
    return outputs


def check_outputs(outputs: Any, count: int) -> Tensor:
    """The ``(count, K)`` class scores of a model output (see :func:`class_scores`).

    Raises:
        ModelOutputError: the output holds no ``(count, K)`` scores by that rule.
    """
    scores = class_scores(outputs)
    if not isinstance(scores, Tensor) or scores.ndim != 2 or scores.shape[0] != count:
        given = (
            f"a tensor of shape {tuple(scores.shape)}"
            if isinstance(scores, Tensor)
            else f"a {type(outputs).__name__}"
        )
        if isinstance(scores, Tensor) and scores is not outputs:
            given += f" (inside a {type(outputs).__name__})"
        raise ModelOutputError(
            f"the model returned {given} for {count} inputs; a class target needs scores of shape "
            f"({count}, K): a tensor, an output with .logits (Hugging Face), a dict with "
            "'logits', or a tuple whose first element holds them. For other outputs "
            "(segmentation, detection) pass a callable target that maps the output to one score "
            "per input"
        )
    return scores


def resolve_target(spec: TargetSpec, outputs: Tensor | None, count: int) -> Target:
    """Turn a target specification into a :class:`Target` for ``count`` samples.

    Args:
        spec: the user's target (see :data:`ACCEPTED_TARGETS`).
        outputs: the model's ``(count, K)`` scores at the inputs; ``None`` only for callables.
        count: the number of samples N.

    Raises:
        InvalidTargetError: a target of the wrong type, length or range.
        ModelOutputError: outputs that are not ``(count, K)`` scores.
    """
    if callable(spec) and not isinstance(spec, Tensor):
        return FunctionTarget(spec)
    if outputs is None:
        raise InvalidTargetError("class targets need the model outputs at the inputs")
    outputs = check_outputs(outputs, count)
    if spec is None:
        return ClassTarget(outputs.detach().argmax(dim=1))
    indices = _as_indices(spec, count, outputs.device)
    _check_range(indices, outputs.shape[1])
    return ClassTarget(indices)


def _as_indices(spec: object, count: int, device: torch.device) -> Tensor:
    if isinstance(spec, bool) or (isinstance(spec, Tensor) and spec.dtype == torch.bool):
        raise InvalidTargetError(f"target {spec!r} is a boolean; accepted: {ACCEPTED_TARGETS}")
    if isinstance(spec, int):
        return torch.full((count,), spec, dtype=torch.long, device=device)
    if isinstance(spec, Tensor):
        if spec.is_floating_point() or spec.is_complex() or spec.ndim > 1:
            raise InvalidTargetError(
                f"target tensor of dtype {spec.dtype} and shape {tuple(spec.shape)}; "
                f"accepted: {ACCEPTED_TARGETS}"
            )
        values = spec.to(device=device, dtype=torch.long).reshape(-1)
        if spec.ndim == 0:
            return values.expand(count).clone()
    elif isinstance(spec, Sequence) and not isinstance(spec, str):
        if not all(is_int(v) for v in spec):
            raise InvalidTargetError(
                f"target {spec!r} holds non-integers; accepted: {ACCEPTED_TARGETS}"
            )
        values = torch.tensor(list(spec), dtype=torch.long, device=device)
    else:
        raise InvalidTargetError(f"target {spec!r} is not accepted; accepted: {ACCEPTED_TARGETS}")
    if values.numel() != count:
        raise InvalidTargetError(
            f"target has {values.numel()} class indices for {count} inputs; give one per input "
            "or a single int for all"
        )
    return values


def _check_range(indices: Tensor, num_classes: int) -> None:
    bad = (indices < 0) | (indices >= num_classes)
    if bool(bad.any()):
        value = int(indices[bad][0])
        raise InvalidTargetError(
            f"target class {value} is out of range; the model has {num_classes} classes, so "
            f"accepted indices are 0 to {num_classes - 1}"
        )
