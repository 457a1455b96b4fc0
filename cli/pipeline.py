"""The streaming pipeline of a run: decode in workers → batch on the device → encode in workers.

```
jobs ─▶ worker processes (open_image, resize) ─▶ main process: batches of images, explain() per
method and the overlays rendered at full size, on the device ─▶ worker processes (encode,
atomic write)
```

Decoding runs ahead of the device and writing runs behind it, so the device does not wait on
one core. Only the main process runs torch on the device; the workers (:mod:`saliency.cli.workers`,
forked processes, or threads where fork is unavailable) run Pillow. The time the device spends
waiting for decoded images is measured: :attr:`Pipeline.device_idle`.

Memory stays bounded for any number of inputs: at most ``3 × batch`` images are in flight
(decoding, batched, or being written), and admission also pauses while the decoded images in
flight hold more than a pixel budget. One input's failure (decoding, a method, writing, even a
worker process dying on it) is recorded for that input and the run goes on. On Ctrl-C, queued
decoding is cancelled, finished computations are still written, then the interrupt propagates.

The main thread owns the run's state: results from the workers are collected there.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import PIL.Image
import torch
from torch import Tensor, nn

from saliency.cli.model_input import ModelInput
from saliency.cli.outputs import OutputSpec, render_overlay, write_method_outputs
from saliency.cli.plan import Job
from saliency.cli.workers import Workers, decode
from saliency.engine import Precision
from saliency.errors import ImageLoadError, SaliencyError
from saliency.explain import explain

# Decoded pixels in flight (originals, kept until their overlays are written): ~0.8 GB of RGB.
PIXEL_BUDGET = 256_000_000
_IN_FLIGHT_BATCHES = 3
_TOP_CLASSES = 5


class Events(Protocol):
    """Where the pipeline reports results (called from the main thread only)."""

    def decoded(self, job: Job, width: int, height: int) -> None: ...
    def predicted(
        self, job: Job, indices: list[int], probabilities: list[float], target: int
    ) -> None: ...
    def method_done(
        self, job: Job, method: str, overlay: str, raw: str | None, seconds: float
    ) -> None: ...
    def method_failed(self, job: Job, method: str, message: str) -> None: ...
    def input_failed(self, job: Job, message: str) -> None: ...
    def finished(self, job: Job) -> None: ...


@dataclass(frozen=True)
class Compute:
    """How to explain a batch.

    Attributes:
        model: The model, on ``device``.
        model_input: How images become its input.
        device: Where it runs.
        methods: Each method to run, in order, with the options to create it.
        target: A class index for every input, or None for each input's top class.
        precision: The engine's autocast precision.
        chunk_size: The engine's maximum points per forward/backward (None: automatic).
        images_per_batch: Images explained together.
        compile: ``torch.compile`` the forward of gradient passes.
        memory_budget: Bytes one automatic pass may use (None: the engine's default).
    """

    model: nn.Module
    model_input: ModelInput
    device: torch.device
    methods: Mapping[str, Mapping[str, Any]]
    target: int | None
    precision: Precision
    chunk_size: int | None
    images_per_batch: int
    compile: bool = False
    memory_budget: int | None = None


@dataclass(eq=False)
class _Item:
    """A decoded input in flight."""

    job: Job
    original: PIL.Image.Image
    pixels: Tensor
    remaining: int
    predicted: bool = False


@dataclass(eq=False)
class _Write:
    """A writer task and what its result is recorded for."""

    future: Future[tuple[str, str | None]]
    item: _Item
    method: str
    seconds: float
    task: tuple[Any, ...]
    """The arguments of :func:`write_method_outputs`, to run it again after a worker died."""


def describe(exc: BaseException) -> str:
    """An exception as one line for a manifest entry."""
    if isinstance(exc, SaliencyError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return f"{type(exc).__name__}: {exc}"


def decode_reason(exc: BaseException) -> str:
    """Why an input could not be decoded, with the command-line fix where there is one."""
    if not isinstance(exc, ImageLoadError):
        return describe(exc)
    if exc.reason.startswith("image too large"):
        return f"{exc.reason}. With saliency explain: --max-image-pixels N (0: no limit)"
    return exc.reason


@dataclass
class Pipeline:
    """Runs jobs through decoding, the device and writing (see the module docstring).

    Args:
        compute: How to explain batches.
        output: What to write.
        events: Where results go.
        workers: Worker processes for decoding and encoding.

    Attributes:
        worker_kind: ``"processes"``, or ``"threads"`` where fork is unavailable (after
            :meth:`run`).
        device_seconds: Time the main process spent explaining and rendering batches.
        wall_seconds: Time from the first admitted job to the last recorded result.
    """

    compute: Compute
    output: OutputSpec
    events: Events
    workers: int
    worker_kind: str = field(init=False, default="")
    device_seconds: float = field(init=False, default=0.0)
    wall_seconds: float = field(init=False, default=0.0)
    _pool: Workers = field(init=False)
    _writes: deque[_Write] = field(init=False, default_factory=deque)
    _window: deque[tuple[Job, Future[tuple[PIL.Image.Image, Tensor]]]] = field(
        init=False, default_factory=deque
    )
    _write_slots: threading.Semaphore = field(init=False)
    _admitted: int = field(init=False, default=0)
    _pixels: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._write_slots = threading.Semaphore(
            _IN_FLIGHT_BATCHES * self.compute.images_per_batch * max(1, len(self.compute.methods))
        )

    @property
    def device_idle(self) -> float:
        """The fraction of the run's wall time the device was not explaining (0 to 1)."""
        if self.wall_seconds <= 0:
            return 0.0
        return max(0.0, 1.0 - self.device_seconds / self.wall_seconds)

    def run(self, jobs: Iterable[Job]) -> None:
        """Process every job; returns when all results are recorded.

        The workers get Pillow's current image size limit (``PIL.Image.MAX_IMAGE_PIXELS``).

        Raises:
            KeyboardInterrupt: After recording what was finished.
        """
        self._pool = Workers(self.workers, self.compute.model_input, PIL.Image.MAX_IMAGE_PIXELS)
        self.worker_kind = self._pool.kind
        started = time.perf_counter()
        try:
            self._loop(iter(jobs))
        except KeyboardInterrupt:
            for _, decoding in self._window:
                decoding.cancel()
            self._collect(block=True)
            raise
        finally:
            self._pool.shutdown()
            self.wall_seconds = time.perf_counter() - started

    # ---- scheduling ----------------------------------------------------------------------

    def _has_room(self) -> bool:
        limit = _IN_FLIGHT_BATCHES * self.compute.images_per_batch
        return self._admitted < limit and self._pixels < PIXEL_BUDGET

    def _loop(self, jobs: Iterator[Job]) -> None:
        window = self._window
        batch: list[_Item] = []
        exhausted = False
        while True:
            while not exhausted and self._has_room():
                job = next(jobs, None)
                if job is None:
                    exhausted = True
                    break
                self._admitted += 1
                window.append((job, self._pool.submit(decode, job)))
            if window and len(batch) < self.compute.images_per_batch:
                item = self._take(*window.popleft())
                if item is not None:
                    batch.append(item)
            elif batch:
                started = time.perf_counter()
                self._explain_batch(batch)
                self.device_seconds += time.perf_counter() - started
                batch = []
                self._collect(block=False)
            elif exhausted and not window:
                break
            else:  # full of images being written: wait for one to finish
                if not self._writes:
                    raise RuntimeError("saliency explain: the pipeline stalled (a bug)")
                self._collect(block=True, at_most=1)
        self._collect(block=True)

    # ---- decoding --------------------------------------------------------------------------

    def _take(self, job: Job, future: Future[tuple[PIL.Image.Image, Tensor]]) -> _Item | None:
        try:
            original, pixels = self._pool.result(future, decode, job)
        except Exception as exc:
            self.events.input_failed(job, decode_reason(exc))
            self._resolve_job(job, pixels=0)
            return None
        self._pixels += original.width * original.height
        self.events.decoded(job, original.width, original.height)
        return _Item(job, original, pixels, remaining=len(job.methods))

    # ---- the device ------------------------------------------------------------------------

    def _explain_batch(self, batch: list[_Item]) -> None:
        by_shape: dict[tuple[int, ...], list[_Item]] = {}
        for item in batch:  # custom model transforms may give several sizes
            by_shape.setdefault(tuple(item.pixels.shape), []).append(item)
        for items in by_shape.values():
            inputs = self.compute.model_input.batch(
                [item.pixels for item in items], self.compute.device
            )
            for method in self.compute.methods:
                chosen = [i for i, item in enumerate(items) if method in item.job.methods]
                if chosen:
                    subset = inputs if len(chosen) == len(items) else inputs[chosen]
                    self._explain(method, [items[i] for i in chosen], subset)

    def _explain(self, method: str, items: list[_Item], inputs: Tensor) -> None:
        """Run one method on a batch; on failure, retry image by image to isolate the culprit."""
        compute = self.compute
        started = time.perf_counter()
        try:
            explanation = explain(
                compute.model,
                inputs,
                method,
                compute.target,
                batch_size=compute.chunk_size,
                precision=compute.precision,
                compile=compute.compile,
                memory_budget=compute.memory_budget,
                **compute.methods[method],
            )
            if compute.device.type == "cuda":
                torch.cuda.synchronize(compute.device)
        except Exception as exc:
            if len(items) > 1:
                for index, item in enumerate(items):
                    self._explain(method, [item], inputs[index : index + 1])
                return
            self.events.method_failed(items[0].job, method, describe(exc))
            self._resolve(items[0])
            return
        seconds = (time.perf_counter() - started) / len(items)
        self._record_predictions(items, explanation.outputs, explanation.targets)
        for index, item in enumerate(items):
            attributions = explanation.attributions[index : index + 1]
            try:
                picture = render_overlay(self.output, attributions, item.original)
            except Exception as exc:
                self.events.method_failed(item.job, method, describe(exc))
                self._resolve(item)
                continue
            raw = attributions[0].float().cpu().numpy() if self.output.save_raw else None
            self._write_slots.acquire()
            task = (self.output, item.job.relpath, method, picture, raw)
            future = self._pool.submit(write_method_outputs, *task)
            future.add_done_callback(lambda _: self._write_slots.release())
            self._writes.append(_Write(future, item, method, seconds, task))

    def _record_predictions(
        self, items: list[_Item], outputs: Tensor | None, targets: Tensor | None
    ) -> None:
        pending = [i for i, item in enumerate(items) if not item.predicted]
        if outputs is None or targets is None or not pending:
            return
        top = outputs.softmax(dim=1).topk(min(_TOP_CLASSES, outputs.shape[1]), dim=1)
        indices, probabilities = top.indices.tolist(), top.values.tolist()
        chosen = targets.tolist()
        for i in pending:
            items[i].predicted = True
            self.events.predicted(items[i].job, indices[i], probabilities[i], int(chosen[i]))

    # ---- writing ---------------------------------------------------------------------------

    def _collect(self, block: bool, at_most: int | None = None) -> None:
        """Record finished writes, oldest first (``block``: wait for them)."""
        collected = 0
        while self._writes and (at_most is None or collected < at_most):
            write = self._writes[0]
            if not block and not write.future.done():
                return
            self._writes.popleft()
            collected += 1
            try:
                overlay, raw = self._pool.result(write.future, write_method_outputs, *write.task)
            except Exception as exc:
                message = f"cannot write outputs: {describe(exc)}"
                self.events.method_failed(write.item.job, write.method, message)
            else:
                self.events.method_done(write.item.job, write.method, overlay, raw, write.seconds)
            self._resolve(write.item)

    def _resolve(self, item: _Item) -> None:
        """One of the item's methods is recorded; the item is finished after the last."""
        item.remaining -= 1
        if item.remaining == 0:
            self._resolve_job(item.job, pixels=item.original.width * item.original.height)

    def _resolve_job(self, job: Job, pixels: int) -> None:
        self._admitted -= 1
        self._pixels -= pixels
        self.events.finished(job)
