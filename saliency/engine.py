"""The batched gradient engine under every method.

Methods describe *points* (the inputs, path interpolations, noisy copies, ...) and how each
point's gradient contributes to its sample's attribution; the engine evaluates target scores and
∂score/∂points (or ∂score/∂activations of a hooked layer) in memory-bounded chunks, and sums the
contributions per sample. Points are generated chunk by chunk, so memory stays bounded whatever
``N × steps × samples`` is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args

import torch
from torch import Tensor, nn

from saliency.errors import InvalidOptionError, ModelOutputError, accepted
from saliency.layers import capture_output
from saliency.targets import Target

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# On CPU the throughput of a convolutional network stops growing at a few dozen 224² images per
# chunk; this many input elements per chunk is about 16 such images.
_CPU_ELEMENTS_PER_CHUNK = 16 * 3 * 224 * 224
# Activation memory of forward + backward relative to the input, for sizing CUDA chunks from the
# free memory (ResNet-50 keeps ~100 MB of activations per 224² fp32 image, ~170× its input).
_CUDA_ACTIVATION_FACTOR = 200
_CUDA_MAX_CHUNK = 1024
_CPU_BLOCK_BYTES = 1 << 30

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

    @property
    def count(self) -> int:
        return self.samples * self.repeats

    @classmethod
    def of(cls, inputs: Tensor) -> Points:
        """The inputs themselves, one point per sample."""
        return cls(len(inputs), 1, inputs.shape[1:], inputs.device, lambda index: inputs[index])


@dataclass(frozen=True)
class Chunk:
    """One evaluated chunk of points."""

    index: Tensor
    """``(m,)`` point indices."""
    samples: Tensor
    """``(m,)`` sample index of each point."""
    points: Tensor
    scores: Tensor
    """``(m,)`` float32 target scores."""
    grads: Tensor
    """∂score/∂points, or ∂score/∂activations when a layer is hooked."""
    activations: Tensor | None
    """The hooked layer's output, when a layer is hooked."""


@dataclass
class Engine:
    """Evaluates target scores and their gradients in memory-bounded chunks.

    Attributes:
        model: maps an ``(m, C, H, W)`` tensor to outputs (``(m, K)`` scores for class targets).
        batch_size: maximum points per forward/backward chunk; ``None`` picks one from the free
            device memory (CUDA) or a CPU-friendly size, and halves it on CUDA out-of-memory.
        create_graph: keep the autograd graph so that results can be differentiated again.
        precision: ``"fp32"``, or ``"bf16"``/``"fp16"`` autocast of the forward pass; scores and
            accumulation stay in float32.
    """

    model: Callable[[Tensor], Any]
    batch_size: int | None = None
    create_graph: bool = False
    precision: Precision = "fp32"
    _chunk_size: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.batch_size is not None and (
            not isinstance(self.batch_size, int)
            or isinstance(self.batch_size, bool)
            or self.batch_size < 1
        ):
            raise InvalidOptionError(
                f"batch_size={self.batch_size!r}; accepted: a positive int, or None for automatic"
            )
        if self.precision not in PRECISIONS:
            raise InvalidOptionError(
                f"precision={self.precision!r}; accepted: {accepted(PRECISIONS)}"
            )
        if not isinstance(self.create_graph, bool):
            raise InvalidOptionError(f"create_graph={self.create_graph!r}; accepted: True, False")

    def forward(self, points: Tensor) -> Any:
        """The model's output at ``points``, under the engine's autocast precision."""
        with self._autocast(points.device):
            return self.model(points)

    def predict(self, inputs: Tensor) -> Tensor:
        """Float32 model outputs at ``inputs``, without gradients, in chunks."""
        points = Points.of(inputs)
        with torch.no_grad():
            outputs = list(self._map_chunks(points, lambda i: self.forward(points.make(i))))
        if not all(isinstance(o, Tensor) for o in outputs):
            raise ModelOutputError(
                f"the model returned a {type(outputs[0]).__name__}; a class target needs an "
                "(N, K) tensor of scores. For other outputs pass a callable target"
            )
        return torch.cat(outputs).float()

    def target_scores(self, inputs: Tensor, target: Target) -> Tensor:
        """Float32 target scores ``(N,)`` at ``inputs``, without gradients."""
        points = Points.of(inputs)

        def step(index: Tensor) -> Tensor:
            return target.scores(self.forward(points.make(index)), index).float()

        with torch.no_grad():
            return torch.cat(list(self._map_chunks(points, step)))

    def accumulate(
        self,
        points: Points,
        target: Target,
        contribution: Callable[[Chunk], Tensor] | None = None,
        layer: nn.Module | None = None,
    ) -> Tensor:
        """Sum each point's contribution into its sample: ``out[i] = Σ_{p ∈ i} c(p)``.

        Args:
            points: the points to evaluate.
            target: selects each point's score.
            contribution: maps an evaluated chunk to per-point tensors ``(m, ...)``; default the
                gradients themselves.
            layer: hook this module and differentiate with respect to its output instead of the
                points (``Chunk.activations`` holds the output).

        Returns:
            ``(N, ...)`` sums, float32 at least (float64 stays float64).
        """
        capture = (
            capture_output(layer, as_leaf=not self.create_graph) if layer is not None else None
        )
        total: Tensor | None = None
        with capture if capture is not None else nullcontext(None) as captured:

            def step(index: Tensor) -> tuple[Tensor, Tensor]:
                chunk = self._evaluate(points, index, target, captured)
                part = contribution(chunk) if contribution is not None else chunk.grads
                return chunk.samples, part

            for samples, part in self._map_chunks(points, step):
                if total is None:
                    dtype = torch.promote_types(part.dtype, torch.float32)
                    total = part.new_zeros((points.samples, *part.shape[1:]), dtype=dtype)
                total = total.index_add(0, samples, part.to(total.dtype))
        assert total is not None, "Points with zero samples"
        return total

    def _evaluate(self, points: Points, index: Tensor, target: Target, captured: Any) -> Chunk:
        samples = index // points.repeats
        values = points.make(index)
        if not (self.create_graph and values.requires_grad):
            values = values.detach().requires_grad_(captured is None or self.create_graph)
        outputs = self.forward(values)
        scores = target.scores(outputs, samples).float()
        wrt = values if captured is None else captured.value
        if not scores.requires_grad or wrt is None:
            raise ModelOutputError(
                "the target scores do not depend on the model input through autograd; the model "
                "must be differentiable (no torch.no_grad, .detach() or numpy inside forward)"
            )
        (grads,) = torch.autograd.grad(
            scores.sum(), wrt, create_graph=self.create_graph, materialize_grads=True
        )
        activations = None if captured is None else wrt
        if not self.create_graph:
            scores = scores.detach()
            activations = None if activations is None else activations.detach()
        return Chunk(index, samples, values, scores, grads, activations)

    def _map_chunks(self, points: Points, step: Callable[[Tensor], _T]) -> Iterator[_T]:
        """``step`` applied to the point indices chunk by chunk.

        A CUDA out-of-memory error with an automatic chunk size halves the chunk and retries it.
        """
        start = 0
        while start < points.count:
            size = self._size_for(points)
            index = torch.arange(start, min(points.count, start + size), device=points.device)
            try:
                result = step(index)
            except torch.OutOfMemoryError:
                if size == 1 or self.batch_size is not None:
                    raise
                self._chunk_size = size // 2
                torch.cuda.empty_cache()
                continue
            yield result
            start += len(index)

    def _size_for(self, points: Points) -> int:
        if self.batch_size is not None:
            return self.batch_size
        if self._chunk_size is None:
            self._chunk_size = automatic_chunk_size(points.shape, points.device)
        return self._chunk_size

    def block_size(self, point: Tensor, count: int) -> int:
        """How many copies of ``point``-sized batches to materialise at once (≥ 1, ≤ count)."""
        if point.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(point.device)
            budget = free // 4
        else:
            budget = _CPU_BLOCK_BYTES
        per_copy = max(1, point.numel() * point.element_size())
        return max(1, min(count, budget // per_copy))

    def _autocast(self, device: torch.device) -> AbstractContextManager[Any]:
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[self.precision])


def automatic_chunk_size(point_shape: torch.Size, device: torch.device) -> int:
    """A chunk size that keeps forward + backward memory bounded on ``device``."""
    numel = max(1, point_shape.numel())
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        per_point = numel * 4 * _CUDA_ACTIVATION_FACTOR
        return max(1, min(_CUDA_MAX_CHUNK, int(free * 0.6) // per_point))
    return max(1, min(64, _CPU_ELEMENTS_PER_CHUNK // numel))
