"""The batched gradient engine under every method.

Methods describe *points* (the inputs, path interpolations, noisy copies, ...) and how each
point's gradient contributes to its sample's attribution; the engine evaluates target scores and
∂score/∂points (or ∂score/∂activations of a hooked layer) in memory-bounded chunks, and sums the
contributions per sample. Points are generated chunk by chunk, so memory stays bounded whatever
``N × steps × samples`` is.

Performance options (all opt-in or automatic, and measured):

- chunk size: ``batch_size=None`` sizes chunks from a memory budget (``memory_budget`` bytes;
  default a fraction of the free CUDA memory or of the available RAM) divided by the memory cost
  of one point, measured on the first gradient chunk (a probe of 2 points, 8 on CUDA, part of
  the real work); on CPU it is also capped near the best throughput. A CUDA
  out-of-memory error halves the chunk and retries it.
- ``compile=True``: ``torch.compile`` of the model forward for first-order gradient chunks,
  cached per model (:mod:`saliency.compiled`); falls back to eager with one warning.
- ``precision``: autocast of the forward pass.

The chunk loop never synchronises with the device: no ``.item()``, no host copies; chunk
indices are made on the device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Literal, Protocol, TypeVar, get_args

import torch
from torch import Tensor, nn

from saliency import compiled as compiled_forwards
from saliency.attention import differentiable_attention
from saliency.errors import InvalidOptionError, LayerNotFoundError, ModelOutputError
from saliency.forward_args import ForwardArgs
from saliency.layers import Capture, LayerSpec, capture_output, find_layer
from saliency.memory import CostMeter, default_memory_budget
from saliency.targets import PendingTarget, Target, class_scores, pending_base
from saliency.validation import check_choice, require_bool, require_int

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# On CPU the forward + backward throughput of a convolutional network stops growing at about 16
# images of 224² per chunk: ResNet-18, 2 threads, best of 3 runs (a training job was sharing the
# CPU), images/s at chunk 1, 2, 4, 8, 16, 32, 64: 2.8, 3.4, 4.2, 4.9, 7.3, 7.5, 5.3; at 112²,
# chunk 4–128: 35, 41, 48, 50, 50, 43. This many input elements per chunk is 16 such images;
# smaller inputs get proportionally more points per chunk, up to 64.
_CPU_ELEMENTS_PER_CHUNK = 16 * 3 * 224 * 224
_CPU_MAX_CHUNK = 64
_CUDA_MAX_CHUNK = 1024
# Memory of forward + backward relative to the input before any measurement (ResNet-50 keeps
# ~100 MB of activations per 224² fp32 image, ~170× its input): sizes no-grad passes and the
# first (probe) gradient chunk.
_ACTIVATION_FACTOR = 200
# Points of the first gradient chunk, whose memory cost sizes the chunks after it (more on
# CUDA, where the measured peak includes fixed costs such as convolution workspaces).
_PROBE_POINTS = 2
_CUDA_PROBE_POINTS = 8

_T = TypeVar("_T")


@dataclass(frozen=True)
class Points:
    """``samples × repeats`` points; point ``p`` belongs to sample ``p // repeats``.

    Attributes:
        samples: the number of input samples N.
        repeats: points per sample (1, steps, ...).
        shape: the shape of one point, e.g. ``(C, H, W)``.
        device: where the points live.
        make: builds the points with the given indices, shape ``(m, *shape)``.
    """

    samples: int
    repeats: int
    shape: torch.Size
    device: torch.device
    make: Callable[[Tensor], Tensor]
    source: Tensor | None = None
    """The tensor whose rows the points are, when they are a tensor's rows (:meth:`of`)."""

    @property
    def count(self) -> int:
        return self.samples * self.repeats

    @classmethod
    def of(cls, inputs: Tensor) -> Points:
        """The inputs themselves, one point per sample."""
        return cls(
            len(inputs), 1, inputs.shape[1:], inputs.device, lambda index: inputs[index], inputs
        )


@dataclass(frozen=True)
class Chunk:
    """One evaluated chunk of points."""

    index: Tensor
    """``(m,)`` point indices."""
    samples: Tensor
    """``(m,)`` sample index of each point."""
    points: Tensor
    scores: Tensor
    """``(m,)`` target scores, float32 at least (float64 for a float64 model)."""
    grads: Tensor
    """∂score/∂points, or ∂score/∂activations when a layer is hooked."""
    activations: Tensor | None
    """The hooked layer's output, when a layer is hooked."""
    recorded: tuple[Tensor, ...] = ()
    """What a :class:`Recorder` recorded in the chunk's forward (e.g. attention maps)."""
    recorded_grads: tuple[Tensor, ...] = ()
    """∂score/∂ each recorded tensor."""


@dataclass(frozen=True)
class Pass:
    """One chunk of points evaluated without gradients (:meth:`Engine.accumulate_forward`)."""

    index: Tensor
    samples: Tensor
    points: Tensor
    outputs: Any
    """The model's raw outputs for the points."""
    recorded: tuple[Tensor, ...] = ()
    """What a :class:`Recorder` recorded in the forward."""


class Recorder(Protocol):
    """Records tensors during forward passes (e.g. :class:`saliency.attention.AttentionRecord`)."""

    def take(self) -> Sequence[Tensor]:
        """What was recorded since the last call."""
        ...




@dataclass(frozen=True)
class Share:
    """What one method takes from a pass that it may share with other methods.

    A one-pass method (its attributions come from a single forward and backward of the inputs
    themselves) returns one from :meth:`Method.share <saliency.methods.Method.share>`;
    :meth:`Engine.share_pass` evaluates each chunk once for all the shares given to it.

    Attributes:
        layer: differentiate with respect to this module's output (the share's chunks hold the
            layer's ``activations`` and ``grads`` = ∂score/∂activations), or ``None`` for the
            input gradient (``grads`` = ∂score/∂points, ``activations`` None).
        contribution: maps the share's view of an evaluated chunk to per-point tensors
            ``(m, ...)``, summed per sample; default the gradients.
        finish: turns the ``(N, ...)`` sums into the attributions; default: the sums.
    """

    layer: nn.Module | None = None
    contribution: Callable[[Chunk], Tensor] | None = None
    finish: Callable[[Tensor], Tensor] | None = None


@dataclass
class _Sizing:
    """The automatic chunk size for one point shape."""

    size: int
    measured: bool = False
    """Sized from the measured cost of a gradient chunk (else a conservative guess)."""
    limit: int | None = None
    """The cap left by an out-of-memory error."""


@dataclass(frozen=True)
class EngineOptions:
    """How the engine evaluates gradients: the common options of every method, checked here once.

    :func:`saliency.explain`, :func:`saliency.hvp`, the metrics and the command line build one
    from their keyword arguments (``EngineOptions(batch_size=8, precision="bf16")``); an
    invalid value raises :class:`~saliency.errors.InvalidOptionError` before any work.

    Attributes:
        batch_size: maximum points per forward/backward chunk; ``None`` sizes chunks from
            ``memory_budget`` and the measured memory cost of a point (capped near the best
            throughput on CPU), and halves them on CUDA out-of-memory.
        create_graph: keep the autograd graph so that results can be differentiated again.
        precision: ``"fp32"``, or ``"bf16"``/``"fp16"`` autocast of the forward pass; scores and
            accumulation stay in float32.
        compile: run first-order gradient chunks through ``torch.compile`` of the model forward
            (cached per model and point shape; inductor, or ``$SALIENCY_COMPILE_BACKEND``).
            ``create_graph=True`` and hooked layers (Grad-CAM family) run eagerly; a model that
            fails to compile runs eagerly, with one warning.
        memory_budget: bytes one chunk may use (automatic chunk sizes only); ``None`` = 60% of
            the free CUDA memory, or on CPU 25% of the available RAM, at most 8 GiB.
        channels_last: evaluate 4-D points in the channels-last memory format (and, through
            :func:`saliency.explain`, the model's 4-D weights for the call): faster
            convolutions on CPU and on tensor cores; the sums run in another order, so results
            differ from the contiguous ones in the last bits.
    """

    batch_size: int | None = None
    create_graph: bool = False
    precision: Precision = "fp32"
    compile: bool = False
    memory_budget: int | None = None
    channels_last: bool = False

    def __post_init__(self) -> None:
        require_int("batch_size", self.batch_size, 1, none="automatic")
        require_bool("create_graph", self.create_graph)
        check_choice("precision", self.precision, Precision)
        require_bool("compile", self.compile)
        require_int("memory_budget", self.memory_budget, 1, none="automatic", unit="bytes")
        require_bool("channels_last", self.channels_last)


@dataclass
class Engine:
    """Evaluates target scores and their gradients in memory-bounded chunks.

    ``Engine(model, EngineOptions(batch_size=8))``; the options are also readable on the engine
    (``engine.create_graph``), and :meth:`with_options` gives an engine for the same model with
    some of them changed.

    Attributes:
        model: maps an ``(m, C, H, W)`` tensor to outputs (``(m, K)`` scores for class targets).
        options: how gradients are evaluated (:class:`EngineOptions`).
        forward_args: extra model arguments with one row per sample, given to the model with
            the rows of each chunk's points (``model(points, *args, **kwargs)``); see
            :mod:`saliency.forward_args`.
    """

    model: Callable[..., Any]
    options: EngineOptions = EngineOptions()
    forward_args: ForwardArgs | None = None
    _sizes: dict[torch.Size, _Sizing] = field(default_factory=dict, init=False, repr=False)
    _budgets: dict[torch.device, int] = field(default_factory=dict, init=False, repr=False)
    _meter: CostMeter | None = field(default=None, init=False, repr=False)
    _compiled: compiled_forwards.ModelCache | None = field(default=None, init=False, repr=False)
    _samples: Tensor | None = field(default=None, init=False, repr=False)
    """The sample of each point of the chunk being evaluated (with ``forward_args``)."""
    _origin: Engine | None = field(default=None, init=False, repr=False)
    """The engine of the inputs themselves, for an engine of other rows (:meth:`for_rows`)."""

    def __post_init__(self) -> None:
        if not isinstance(self.options, EngineOptions):
            raise InvalidOptionError(
                f"options={self.options!r}; accepted: an EngineOptions, e.g. "
                "EngineOptions(batch_size=8)"
            )

    @property
    def batch_size(self) -> int | None:
        return self.options.batch_size

    @property
    def create_graph(self) -> bool:
        return self.options.create_graph

    @property
    def precision(self) -> Precision:
        return self.options.precision

    @property
    def compile(self) -> bool:
        return self.options.compile

    @property
    def memory_budget(self) -> int | None:
        return self.options.memory_budget

    def with_options(self, **changes: Any) -> Engine:
        """An engine for the same model with the given options changed (checked again), e.g.
        ``engine.with_options(create_graph=True)`` for a pass that needs a second backward."""
        engine = Engine(self.model, replace(self.options, **changes), self.forward_args)
        engine._origin = self._origin
        return engine

    def for_rows(self, index: Tensor) -> Engine:
        """An engine whose ``forward_args`` row ``j`` is this one's row ``index[j]``: for points
        of other samples than the inputs' (e.g. noisy copies, sample ``index[j]``'s copy ``j``).
        Without ``forward_args``, this engine itself."""
        if self.forward_args is None:
            return self
        engine = Engine(self.model, self.options, self.forward_args.select(index))
        engine._origin = self._origin or self  # targets are completed on the inputs' rows
        return engine

    def forward(self, points: Tensor, *extra: Any) -> Any:
        """The model's output at ``points``, under the engine's autocast precision (eager).

        With ``forward_args``, the model also gets the rows of the points' samples: those of
        the chunk being evaluated, or for a pass outside the chunks (a layer probe of
        ``inputs[:1]``) those of the first inputs. ``extra`` arguments, if given, are passed
        instead (a caller that slices them itself, e.g. captum).
        """
        with self._autocast(points.device):
            points = self._laid_out(points)
            if extra or self.forward_args is None:
                return self.model(points, *extra)
            samples = self._samples
            if samples is None or len(samples) != len(points):
                samples = self.forward_args.first(len(points), points.device)
            return self.forward_args.call(self.model, points, samples)

    def find_layer(self, spec: LayerSpec, inputs: Tensor) -> nn.Module:
        """The module ``spec`` gives (see :func:`saliency.layers.find_layer`); the automatic
        choice is probed with a forward of ``inputs[:1]`` and remembered for the model, the
        inputs' shape, dtype and device and the engine's precision, so that every later call
        with such inputs (a method's next batch, or the CLI's run after its check) reuses it."""
        signature = (inputs.shape[1:], inputs.dtype, inputs.device, self.precision)
        return find_layer(self.model, spec, lambda: self.forward(inputs[:1]), signature)

    def _laid_out(self, points: Tensor) -> Tensor:
        """``points`` in the engine's memory format (a differentiable copy if it changes)."""
        if self.options.channels_last and points.ndim == 4:
            return points.contiguous(memory_format=torch.channels_last)
        return points

    def predict(self, inputs: Tensor) -> Tensor:
        """Float32 model outputs at ``inputs``, without gradients, in chunks."""
        points = Points.of(inputs)

        def scores(index: Tensor) -> Any:
            return class_scores(self.forward(points.make(index)))

        with torch.no_grad():
            outputs = list(self._map_chunks(points, scores))
        if not all(isinstance(o, Tensor) for o in outputs):
            raise ModelOutputError(
                f"the model returned a {type(outputs[0]).__name__}; a class target needs (N, K) "
                "scores: a tensor, an output with .logits, a dict with 'logits' or a tuple whose "
                "first element holds them. For other outputs pass a callable target"
            )
        return torch.cat(outputs).float()

    def target_scores(self, inputs: Tensor, target: Target) -> Tensor:
        """Target scores ``(N,)`` at ``inputs``, without gradients, in float32 at least (float64
        stays float64: completeness errors are differences of scores)."""
        points = Points.of(inputs)

        def step(index: Tensor) -> Tensor:
            return _at_least_float32(target.scores(self.forward(points.make(index)), index))

        with self._completing(target), torch.no_grad():
            return torch.cat(list(self._map_chunks(points, step)))

    def complete(self, target: Target) -> None:
        """Make the classes of a pending target known (see :meth:`_completing`)."""
        with self._completing(target):
            pass

    @contextmanager
    def _completing(
        self, target: Target, points: Points | None = None
    ) -> Iterator[PendingTarget | None]:
        """Where a pending target (classes from the model outputs at the inputs) is completed.

        When the pass inside evaluates exactly the target's inputs (``points``), it yields the
        target for the pass to observe, and marks it complete after the pass: the pass is also
        the prediction. Otherwise the target is completed first, by one no-grad forward of the
        inputs, and it yields None. Any other target passes through (None).
        """
        pending = pending_base(target)
        if pending is None or pending.complete:
            yield None
        elif points is not None and pending.observes(points.source):
            yield pending
            pending.finish()
        else:
            pending.require((self._origin or self).predict)
            yield None

    def scores(
        self,
        points: Points,
        target: Target,
        edit: Callable[[Tensor], AbstractContextManager[object]] | None = None,
    ) -> Tensor:
        """Target scores ``(points.count,)`` of every point, chunk by chunk, in float32 at least
        (float64 stays float64: forward-only methods take differences of scores).

        For methods that need many forward passes and no gradient (Score-CAM, Ablation-CAM): the
        points are made one chunk at a time, so memory stays bounded. Without ``create_graph``
        the passes run under ``torch.no_grad``; with it the scores keep their graph.

        Args:
            points: the points to score; point ``p`` is scored for sample ``p // repeats``.
            target: selects each point's score.
            edit: given a chunk's point indices, a context entered around that chunk's forward
                pass (e.g. a hook that changes a layer's output for those points).
        """

        def step(index: Tensor) -> Tensor:
            values = points.make(index)
            with edit(index) if edit is not None else nullcontext():
                outputs = self.forward(values)
            return _at_least_float32(target.scores(outputs, index // points.repeats))

        with self._completing(target), nullcontext() if self.create_graph else torch.no_grad():
            return torch.cat(list(self._map_chunks(points, step)))

    def layer_outputs(
        self, inputs: Tensor, layer: nn.Module, target: Target
    ) -> tuple[Tensor, Tensor]:
        """The output of ``layer`` ``(N, ...)`` and the target scores ``(N,)`` (float32 at least)
        at ``inputs``, chunk by chunk; without gradients unless ``create_graph``.

        A pending target (classes from the outputs at the inputs) is completed by this pass.
        """
        points = Points.of(inputs)
        with (
            self._completing(target, points) as observer,
            capture_output(layer, as_leaf=False) as captured,
            nullcontext() if self.create_graph else torch.no_grad(),
        ):

            def step(index: Tensor) -> tuple[Tensor, Tensor]:
                captured.value = None
                outputs = self.forward(points.make(index))
                if observer is not None:
                    observer.observe(outputs, index)
                if captured.value is None:
                    raise LayerNotFoundError(
                        f"layer {type(layer).__name__} was not called in the model's forward pass"
                    )
                return captured.value, _at_least_float32(target.scores(outputs, index))

            parts = list(self._map_chunks(points, step))
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def accumulate(
        self,
        points: Points,
        target: Target,
        contribution: Callable[[Chunk], Tensor] | None = None,
        layer: nn.Module | None = None,
        recorder: Recorder | None = None,
    ) -> Tensor:
        """Sum each point's contribution into its sample: ``out[i] = Σ_{p ∈ i} c(p)``.

        Args:
            points: the points to evaluate.
            target: selects each point's score.
            contribution: maps an evaluated chunk to per-point tensors ``(m, ...)``; default the
                gradients themselves.
            layer: hook this module and differentiate with respect to its output instead of the
                points (``Chunk.activations`` holds the output as an ``(m, D, h, w)`` map, also
                for token layers: see :func:`saliency.layers.capture_output`).
            recorder: what it records during each forward is differentiated too
                (``Chunk.recorded`` and ``Chunk.recorded_grads``), in the same backward pass.

        Returns:
            ``(N, ...)`` sums, float32 at least (float64 stays float64).

        A pending target (classes from the model outputs at the inputs) is completed by this
        pass when the points are those inputs, else by a no-grad forward first.
        """
        (total,) = self._accumulate_shares(
            points, target, [Share(layer, contribution)], recorder=recorder
        )
        return total

    def share_pass(self, inputs: Tensor, target: Target, shares: Sequence[Share]) -> list[Tensor]:
        """The attributions of several one-pass methods from ONE forward and ONE backward per
        chunk of ``inputs`` (the entry point of :func:`saliency.explain_many`).

        The chunk is evaluated once with the union of what the shares need: every distinct
        ``share.layer`` is hooked (its output kept in the graph when the input gradient is also
        needed), and a single ``torch.autograd.grad(scores.sum(), [points, *layer outputs])``
        gives ∂score/∂points and each layer's ∂score/∂activations. Each share sees its own view
        of the chunk (the one :meth:`accumulate` with its ``layer`` would give), its
        contributions are summed per sample and ``share.finish`` makes the attributions; so
        each result equals the method's own :meth:`~saliency.methods.Method.attribute`.

        Args:
            inputs: the ``(N, ...)`` inputs, one point each.
            target: selects each point's score; a pending target is completed by this pass.
            shares: what each method takes from the pass (:meth:`Method.share
                <saliency.methods.Method.share>`).

        Returns:
            One attributions tensor per share, in order.
        """
        totals = self._accumulate_shares(Points.of(inputs), target, shares)
        return [
            total if share.finish is None else share.finish(total)
            for share, total in zip(shares, totals, strict=True)
        ]

    def _accumulate_shares(
        self,
        points: Points,
        target: Target,
        shares: Sequence[Share],
        recorder: Recorder | None = None,
    ) -> list[Tensor]:
        """Per-sample sums of each share's contributions, one forward + backward per chunk."""
        layers: list[nn.Module] = []
        for share in shares:
            if share.layer is not None and not any(share.layer is known for known in layers):
                layers.append(share.layer)
        wants_points = any(share.layer is None for share in shares)
        # Backward may stop at the hooked layers (a detached leaf) only when nothing before them
        # is differentiated: no input gradient, no second-order graph.
        as_leaf = not (wants_points or self.create_graph)
        views = [
            0 if share.layer is None else int(wants_points) + _position(layers, share.layer)
            for share in shares
        ]
        totals: list[Tensor | None] = [None] * len(shares)
        with ExitStack() as stack:
            observer = stack.enter_context(self._completing(target, points))
            captures = [stack.enter_context(capture_output(m, as_leaf=as_leaf)) for m in layers]

            def step(index: Tensor) -> tuple[Tensor, list[Tensor]]:
                chunks = self._evaluate(
                    points, index, target, captures, wants_points, observer, recorder
                )
                parts = [
                    chunks[view].grads
                    if share.contribution is None
                    else share.contribution(chunks[view])
                    for share, view in zip(shares, views, strict=True)
                ]
                return chunks[0].samples, parts

            for samples, parts in self._map_chunks(points, step, gradients=True):
                for position, part in enumerate(parts):
                    total = totals[position]
                    if total is None:
                        dtype = torch.promote_types(part.dtype, torch.float32)
                        total = part.new_zeros((points.samples, *part.shape[1:]), dtype=dtype)
                    totals[position] = _add_rows(total, samples, part)
        result = [total for total in totals if total is not None]
        assert len(result) == len(shares), "Points with zero samples"
        return result

    def _evaluate(
        self,
        points: Points,
        index: Tensor,
        target: Target,
        captures: Sequence[Capture],
        wants_points: bool,
        observer: PendingTarget | None = None,
        recorder: Recorder | None = None,
    ) -> list[Chunk]:
        samples = index // points.repeats
        values = points.make(index)
        if not (self.create_graph and values.requires_grad):
            values = values.detach().requires_grad_(wants_points or self.create_graph)
        if self._meter is not None:
            self._meter.note_points(values)
        differentiate = partial(
            self._differentiate,
            values,
            samples,
            index,
            target,
            captures,
            wants_points,
            observer=observer,
            recorder=recorder,
        )
        # A recorder's tensors come from the eager forward (a compiled graph would hide them).
        compiled = (
            None
            if recorder is not None
            else self._compiled_forward(points, values, hooked=bool(captures))
        )
        if compiled is None:
            return differentiate(self.forward)
        run = partial(self._run_compiled, compiled)
        if compiled.verified:
            return differentiate(run)
        # The first forward + backward compiles (the backward lazily): a failure here falls
        # back to eager. An error of the model itself is raised again by the eager run.
        try:
            chunks = differentiate(run)
        except Exception as error:
            out_of_memory = _out_of_memory(error)
            if out_of_memory is not None:
                raise out_of_memory from None
            message = compiled_forwards.describe(error)
        else:
            compiled.verified = True
            return chunks
        chunks = differentiate(self.forward)
        assert self._compiled is not None
        self._compiled.fail(compiled, self.model, message)
        return chunks

    def _differentiate(
        self,
        values: Tensor,
        samples: Tensor,
        index: Tensor,
        target: Target,
        captures: Sequence[Capture],
        wants_points: bool,
        forward: Callable[[Tensor], Any],
        *,
        observer: PendingTarget | None,
        recorder: Recorder | None = None,
    ) -> list[Chunk]:
        """One forward and one backward: a chunk per differentiated tensor (the points first
        when ``wants_points``, then each captured layer output); a recorder's tensors are
        differentiated in the same backward and given to every chunk."""
        with self._second_order():
            outputs = forward(values)
        if observer is not None:
            observer.observe(outputs, samples)
        recorded = tuple(recorder.take()) if recorder is not None else ()
        scores = _at_least_float32(target.scores(outputs, samples))
        layer_outputs = [capture.value for capture in captures]
        if not scores.requires_grad or any(value is None for value in layer_outputs):
            raise ModelOutputError(
                "the target scores do not depend on the model input through autograd; the model "
                "must be differentiable (no torch.no_grad, .detach() or numpy inside forward)"
            )
        wrt = [values] if wants_points else []
        wrt += [value for value in layer_outputs if value is not None]
        all_grads = torch.autograd.grad(
            scores.sum(),
            [*wrt, *recorded],
            create_graph=self.create_graph,
            materialize_grads=True,
        )
        grads, recorded_grads = all_grads[: len(wrt)], tuple(all_grads[len(wrt) :])
        if not self.create_graph:
            scores = scores.detach()
            recorded = tuple(r.detach() for r in recorded)
        chunks = []
        for position, (tensor, grad) in enumerate(zip(wrt, grads, strict=True)):
            activations = None if wants_points and position == 0 else tensor
            if activations is not None and not self.create_graph:
                activations = activations.detach()
            chunks.append(
                Chunk(index, samples, values, scores, grad, activations, recorded, recorded_grads)
            )
        return chunks

    def accumulate_forward(
        self,
        points: Points,
        target: Target,
        contribution: Callable[[Pass], Tensor],
        recorder: Recorder | None = None,
    ) -> Tensor:
        """Like :meth:`accumulate` for contributions that need no gradients: forward passes
        only (with their graph when ``create_graph``), in the same memory-bounded chunks.

        A pending target is completed on the way when the points are the inputs.
        """
        total: Tensor | None = None

        def step(index: Tensor) -> tuple[Tensor, Tensor]:
            samples = index // points.repeats
            values = points.make(index)
            if not self.create_graph:
                values = values.detach()
            with self._second_order():
                outputs = self.forward(values)
            if observer is not None:
                observer.observe(outputs, samples)
            recorded = tuple(recorder.take()) if recorder is not None else ()
            return samples, contribution(Pass(index, samples, values, outputs, recorded))

        with (
            self._completing(target, points) as observer,
            torch.enable_grad() if self.create_graph else torch.no_grad(),
        ):
            for samples, part in self._map_chunks(points, step):
                if total is None:
                    dtype = torch.promote_types(part.dtype, torch.float32)
                    total = part.new_zeros((points.samples, *part.shape[1:]), dtype=dtype)
                total = _add_rows(total, samples, part)
        assert total is not None, "Points with zero samples"
        return total

    def _second_order(self) -> AbstractContextManager[Any]:
        """Attention through a twice-differentiable kernel when the graph is kept."""
        return differentiable_attention() if self.create_graph else nullcontext()

    def _compiled_forward(
        self, points: Points, values: Tensor, hooked: bool
    ) -> compiled_forwards.CompiledForward | None:
        """The compiled forward for a first-order, input-space chunk, if ``compile`` is on.

        ``create_graph`` runs eagerly: compiled (AOTAutograd) graphs do not support double
        backward. So do hooked layers (a fresh hook each call would recompile every time), the
        probe chunk, whose saved tensors are measured, and a last chunk of a single point
        (dynamo specialises size 1: it would compile a graph for that one point).
        """
        if not self.compile or self.create_graph or hooked or self.forward_args is not None:
            return None
        if self._meter is not None:
            return None
        if len(values) == 1 and (self.batch_size or self._sizing(points).size) > 1:
            return None
        if self._compiled is None:
            self._compiled = compiled_forwards.model_cache(self.model)
        forward = self._compiled.forward(self.model, values)
        return None if forward.call is None else forward

    def _run_compiled(self, forward: compiled_forwards.CompiledForward, points: Tensor) -> Any:
        """The model's output at ``points`` through a compiled forward, under autocast."""
        assert forward.call is not None
        # One graph for every chunk size (the last chunk is usually smaller), not one each.
        torch._dynamo.maybe_mark_dynamic(points, 0)
        with self._autocast(points.device):
            return forward.call(self.model, self._laid_out(points))

    def _map_chunks(
        self, points: Points, step: Callable[[Tensor], _T], gradients: bool = False
    ) -> Iterator[_T]:
        """``step`` applied to the point indices chunk by chunk.

        With an automatic chunk size, the first gradient chunk (``gradients=True``) is a small
        probe whose measured memory sizes the chunks after it, and a CUDA out-of-memory error
        halves the chunk and retries it.
        """
        extras = self.forward_args
        if extras is not None and extras.rows != points.samples:
            raise InvalidOptionError(
                f"forward_args holds {extras.rows} rows but this pass evaluates points of "
                f"{points.samples} samples; accepted: methods whose points are the inputs' "
                "(a method that evaluates other samples must map them with Engine.for_rows)"
            )
        start = 0
        outer = self._samples
        while start < points.count:
            size, meter = self._next_size(points, gradients)
            stop = min(points.count, start + size)
            index = torch.arange(start, stop, device=points.device)
            self._meter = meter
            self._samples = index // points.repeats if extras is not None else None
            try:
                with meter.measure() if meter is not None else nullcontext():
                    result = step(index)
            except torch.OutOfMemoryError:
                if stop - start == 1 or self.batch_size is not None:
                    raise
                sizing = self._sizing(points)
                sizing.size = sizing.limit = (stop - start) // 2
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            finally:
                self._meter = None
                self._samples = outer
            if meter is not None:
                self._settle(points, meter.per_point(stop - start))
            yield result
            start = stop

    def _next_size(self, points: Points, gradients: bool) -> tuple[int, CostMeter | None]:
        if self.batch_size is not None:
            return self.batch_size, None
        sizing = self._sizing(points)
        # No probe when the conservative guess already fits every point in one chunk: a probe
        # would split a small batch in two and cost a second pass for nothing.
        if gradients and not sizing.measured and points.count > sizing.size:
            probe = _CUDA_PROBE_POINTS if points.device.type == "cuda" else _PROBE_POINTS
            return min(sizing.size, probe), CostMeter(self.model, points.device)
        return sizing.size, None

    def _sizing(self, points: Points) -> _Sizing:
        sizing = self._sizes.get(points.shape)
        if sizing is None:
            budget = self._budget(points.device)
            size = automatic_chunk_size(points.shape, points.device, memory_budget=budget)
            sizing = self._sizes[points.shape] = _Sizing(size)
        return sizing

    def _settle(self, points: Points, per_point_bytes: int) -> None:
        """Size the chunks from the measured memory cost of a point."""
        sizing = self._sizing(points)
        size = automatic_chunk_size(
            points.shape,
            points.device,
            memory_budget=self._budget(points.device),
            per_point_bytes=per_point_bytes,
        )
        sizing.size = size if sizing.limit is None else min(size, sizing.limit)
        sizing.measured = True

    def _budget(self, device: torch.device) -> int:
        if self.memory_budget is not None:
            return self.memory_budget
        if device not in self._budgets:
            self._budgets[device] = default_memory_budget(device)
        return self._budgets[device]

    def chunk_size(self, point_shape: torch.Size) -> int | None:
        """The automatic chunk size in use for points of ``point_shape`` (None: not sized yet,
        or an explicit ``batch_size``)."""
        sizing = None if self.batch_size is not None else self._sizes.get(point_shape)
        return None if sizing is None else sizing.size

    def points_per_pass(self, point_shape: torch.Size, device: torch.device) -> int:
        """Points of ``point_shape`` one forward + backward pass may take: ``batch_size``, else
        the automatic size (measured, once a gradient chunk of that shape ran; else the
        conservative guess). For code that batches passes itself (captum's
        ``internal_batch_size``)."""
        if self.batch_size is not None:
            return self.batch_size
        sizing = self._sizes.get(point_shape)
        if sizing is not None:
            return sizing.size
        return automatic_chunk_size(point_shape, device, memory_budget=self._budget(device))

    def block_size(self, point: Tensor, count: int) -> int:
        """How many copies of ``point``-sized batches to materialise at once (≥ 1, ≤ count)."""
        budget = self._budget(point.device) // 4
        per_copy = max(1, point.numel() * point.element_size())
        return max(1, min(count, budget // per_copy))

    def _autocast(self, device: torch.device) -> AbstractContextManager[Any]:
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[self.precision])


def _add_rows(total: Tensor, samples: Tensor, part: Tensor) -> Tensor:
    """``total`` with ``part``'s rows added to rows ``samples``: in place, unless a graph is kept
    through either (an out-of-place sum would copy the whole total for every chunk)."""
    part = part.to(total.dtype)
    if total.requires_grad or part.requires_grad:
        return total.index_add(0, samples, part)
    return total.index_add_(0, samples, part)


def automatic_chunk_size(
    point_shape: torch.Size,
    device: torch.device,
    memory_budget: int | None = None,
    per_point_bytes: int | None = None,
) -> int:
    """A chunk size whose forward + backward fits ``memory_budget`` bytes on ``device``.

    Args:
        point_shape: the shape of one point, e.g. ``(C, H, W)``.
        device: where the chunk runs.
        memory_budget: bytes for one chunk; ``None`` = the default budget of the device
            (:func:`saliency.memory.default_memory_budget`).
        per_point_bytes: the measured memory cost of one point; ``None`` = a conservative guess
            (200× a float32 point).

    Returns:
        ``budget // per_point_bytes``, at least 1, and at most 1024 on CUDA; on CPU at most the
        size beyond which throughput no longer grows (about 16 points of 3×224×224, more for
        smaller points, at most 64).
    """
    numel = max(1, point_shape.numel())
    budget = default_memory_budget(device) if memory_budget is None else memory_budget
    per_point = numel * 4 * _ACTIVATION_FACTOR if per_point_bytes is None else per_point_bytes
    by_memory = budget // max(1, per_point)
    if device.type == "cuda":
        cap = _CUDA_MAX_CHUNK
    else:
        cap = max(1, min(_CPU_MAX_CHUNK, _CPU_ELEMENTS_PER_CHUNK // numel))
    return int(max(1, min(cap, by_memory)))


def _at_least_float32(values: Tensor) -> Tensor:
    return values.to(torch.promote_types(values.dtype, torch.float32))


def _out_of_memory(error: BaseException) -> torch.OutOfMemoryError | None:
    """The out-of-memory error behind ``error`` (a compiler may wrap it), if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, torch.OutOfMemoryError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _position(modules: Sequence[nn.Module], module: nn.Module) -> int:
    """The index of ``module`` in ``modules``, by identity (modules compare by identity, but
    a user's module may define ``__eq__``)."""
    return next(i for i, known in enumerate(modules) if known is module)
