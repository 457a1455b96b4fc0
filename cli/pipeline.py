"""The streaming pipeline of a run: decode in workers → batch on the device → encode in workers.

```
jobs ─▶ worker processes (open_image, resize) ─▶ main process: batches of images, one
explain_many() of the one-pass methods and explain() of each other, the overlays rendered at full
size, on the device ─▶ worker processes (encode, atomic write)
```

Decoding runs ahead of the device and writing runs behind it, so the device does not wait on
one core. Only the main process runs torch on the device; the workers run Pillow. Pillow
releases the GIL while it decodes, resizes and encodes, but not around everything a worker does
(format probing, EXIF, colour conversion, building tensors), so on a machine with many cores
threads would leave the device waiting: workers are forked processes (Linux), like PyTorch's
DataLoader workers. They inherit the loaded modules instead of importing torch again, run torch
with one thread, ignore Ctrl-C (the main process decides what happens), and get the model's
input pipeline and the image size limit once, when they start. Where fork is not available, the
same functions run in threads of the main process. The time the device spends waiting for
decoded images is measured: :attr:`Pipeline.device_idle`.

Memory stays bounded for any number of inputs: at most ``3 × batch`` images are in flight
(decoding, batched, or being written), and admission also pauses while the decoded images in
flight hold more than a pixel budget. One input's failure (decoding, a method, writing, even a
worker process dying on it) is recorded for that input and the run goes on. On Ctrl-C, queued
decoding is cancelled, finished computations are still written, then the interrupt propagates.
Every file is written under a temporary name and renamed, into folders checked to stay inside
the output folder.

The main thread owns the run's state: results from the workers are collected there.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import PIL.Image
import torch
from torch import Tensor, nn

from saliency.cli.journal import append_line
from saliency.cli.model import ModelInput
from saliency.cli.plan import Job
from saliency.engine import Precision
from saliency.errors import ImageLoadError, SaliencyError
from saliency.explain import explain, explain_many
from saliency.explanation import Explanation
from saliency.framing import Framing, render_framed
from saliency.images import open_image
from saliency.methods.registry import get_method
from saliency.output_files import file_stem
from saliency.rendering import render
from saliency.run_folder import (
    output_folder,
    output_name,
    top_probabilities,
    write_overlay,
    write_raw,
)

# Decoded pixels in flight (originals, kept until their overlays are written): ~0.8 GB of RGB.
PIXEL_BUDGET = 256_000_000
_IN_FLIGHT_BATCHES = 3


class Events(Protocol):
    """Where the pipeline reports results (called from the main thread only)."""

    def decoded(self, job: Job, width: int, height: int) -> None: ...
    def predicted(
        self, job: Job, indices: list[int], probabilities: list[float], target: int
    ) -> None: ...
    def method_done(
        self, job: Job, method: str, overlay: str, raw: str | None, seconds: float
    ) -> None: ...
    def journal_line(
        self, job: Job, method: str, overlay: str, raw: str | None, seconds: float
    ) -> tuple[str, bytes] | None: ...
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
        channels_last: Run the model in channels-last memory format.
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
    channels_last: bool = False


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
        device_seconds: Time the main process spent explaining and rendering batches.
        wall_seconds: Time from the first admitted job to the last recorded result.
    """

    compute: Compute
    output: OutputSpec
    events: Events
    workers: int
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
        pending = list(jobs)
        if not pending:
            return
        count = worker_count(self.workers, len(pending))
        self._pool = Workers(count, self.compute.model_input, PIL.Image.MAX_IMAGE_PIXELS)
        started = time.perf_counter()
        try:
            self._loop(iter(pending))
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
            # Inputs that need the same methods are explained together, in one explain_many.
            groups: dict[tuple[str, ...], list[int]] = {}
            for i, item in enumerate(items):
                wanted = tuple(m for m in self.compute.methods if m in item.job.methods)
                if wanted:
                    groups.setdefault(wanted, []).append(i)
            for methods, chosen in groups.items():
                subset = inputs if len(chosen) == len(items) else inputs[chosen]
                self._explain_many(methods, [items[i] for i in chosen], subset)

    def _explain_many(self, methods: tuple[str, ...], items: list[_Item], inputs: Tensor) -> None:
        """Run the methods on a batch, in order: those that share one pass from one explain_many
        (if it fails, one by one), the others one by one (:meth:`_explain`, which isolates the
        culprit)."""
        compute = self.compute
        sharing = [m for m in methods if get_method(m).shares_pass()]
        explanations: dict[str, Explanation] = {}
        if len(sharing) > 1:
            started = time.perf_counter()
            try:
                explanations = explain_many(
                    compute.model,
                    inputs,
                    {method: self._options(method, items) for method in sharing},
                    compute.target,
                    batch_size=compute.chunk_size,
                    precision=compute.precision,
                    compile=compute.compile,
                    memory_budget=compute.memory_budget,
                    channels_last=compute.channels_last,
                )
                if compute.device.type == "cuda":
                    torch.cuda.synchronize(compute.device)
            except Exception:
                explanations = {}
            # The pass is shared: each method is charged an equal part of its time.
            seconds = (time.perf_counter() - started) / len(items) / len(sharing)
        for method in methods:
            if method in explanations:
                self._emit(method, items, explanations[method], seconds)
            else:
                self._explain(method, items, inputs)

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
                channels_last=compute.channels_last,
                **self._options(method, items),
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
        self._emit(method, items, explanation, seconds)

    def _options(self, method: str, items: list[_Item]) -> dict[str, Any]:
        """The method's options for these inputs: a ``query`` box, given in image pixels, as
        each input's mask of the model's input pixels (see :meth:`ModelInput.query_masks`)."""
        options = dict(self.compute.methods[method])
        box = options.get("query")
        if isinstance(box, tuple):
            sizes = [item.original.size for item in items]
            options["query"] = self.compute.model_input.query_masks(box, sizes)
        return options

    def _emit(
        self, method: str, items: list[_Item], explanation: Explanation, seconds: float
    ) -> None:
        """Record the predictions, render the overlays and queue their writing."""
        self._record_predictions(items, explanation.outputs, explanation.targets)
        for index, item in enumerate(items):
            attributions = explanation.attributions[index : index + 1]
            try:
                framing = self.compute.model_input.framing(item.original.size)
                picture = render_overlay(self.output, attributions, item.original, framing)
            except Exception as exc:
                self.events.method_failed(item.job, method, describe(exc))
                self._resolve(item)
                continue
            raw = attributions[0].float().cpu().numpy() if self.output.save_raw else None
            relpath = item.job.relpath
            names = (
                output_name(relpath, method, self.output.extension),
                (output_name(relpath, method, "npy") if raw is not None else None),
            )
            journal = self.events.journal_line(item.job, method, *names, seconds)
            self._write_slots.acquire()
            task = (self.output, relpath, method, picture, raw, journal)
            future = self._pool.submit(write_method_outputs, *task)
            future.add_done_callback(lambda _: self._write_slots.release())
            self._writes.append(_Write(future, item, method, seconds, task))

    def _record_predictions(
        self, items: list[_Item], outputs: Tensor | None, targets: Tensor | None
    ) -> None:
        pending = [i for i, item in enumerate(items) if not item.predicted]
        if outputs is None or targets is None or not pending:
            return
        indices, probabilities = top_probabilities(outputs)
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


# ---- writing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputSpec:
    """What to write for every (input, method) pair.

    Attributes:
        out: The output folder.
        extension: The overlay format (one of :data:`FORMATS`).
        save_raw: Also write the raw float32 attributions as ``.npy``.
        render_options: Keyword options of :func:`saliency.render`.
    """

    out: Path
    extension: str
    save_raw: bool
    render_options: Mapping[str, Any]


def render_overlay(
    spec: OutputSpec,
    attributions: Tensor,
    original: PIL.Image.Image,
    framing: Framing | None = None,
) -> PIL.Image.Image:
    """The overlay of one map on the decoded image, at the image's size.

    Runs in the device thread: rendering is torch work on the attributions' device, and torch
    ops from several threads at once oversubscribe the CPU's intra-op thread pool.

    Args:
        spec: What to write (the render options).
        attributions: ``(1, C, h, w)`` raw attributions at the model's input size.
        original: The decoded image.
        framing: How the image became the model's input (``--fit``): the map is drawn back
            through it (None: stretched over the whole image, for a custom transform).
    """
    if framing is not None:
        return render_framed(attributions, original, framing, **spec.render_options)
    (picture,) = render(attributions, [original], as_pil=True, **spec.render_options)
    return picture


def write_method_outputs(
    spec: OutputSpec,
    relpath: str,
    method: str,
    picture: PIL.Image.Image,
    raw: np.ndarray | None,
    journal: tuple[str, bytes] | None = None,
) -> tuple[str, str | None]:
    """Encode and write one pair's files (runs in the writers), then journal them.

    Args:
        spec: What to write.
        relpath: The input's relpath.
        method: The method name (checked to be a safe file name).
        picture: The rendered overlay.
        raw: The raw float32 attributions to save, when asked for.
        journal: The run journal and the pair's line, appended once the files are in place
            (see :mod:`saliency.cli.journal`).

    Returns:
        The manifest paths of the overlay and of the raw array (None when not asked for).
    """
    folder = output_folder(spec.out, relpath, create=True)
    write_overlay(folder / f"{file_stem(method)}.{spec.extension}", picture, spec.extension)
    raw_path = None
    if raw is not None:
        write_raw(folder / f"{file_stem(method)}.npy", raw)
        raw_path = output_name(relpath, method, "npy")
    if journal is not None:
        append_line(*journal)
    return output_name(relpath, method, spec.extension), raw_path


# ---- workers ---------------------------------------------------------------------------------


# Set once per worker by its initializer (and for the thread fallback, in this process).
_model_input: ModelInput | None = None

_T = TypeVar("_T")


class WorkerCrashed(SaliencyError):
    """A worker process died (a crash in a decoder, or killed for memory) while doing a task,
    also when the task was run again in a fresh worker."""


class Workers:
    """A pool of :func:`start_workers` that survives a worker's death.

    A worker that dies (e.g. a decoder crashing on a malicious file, or the kernel killing it
    for memory) breaks a process pool: every task in flight fails. The pool is then started
    again, and each failed task is run once more, alone, when its result is asked for; a task
    whose second run also kills its worker raises :class:`WorkerCrashed`, which the pipeline
    records for that input only.
    """

    def __init__(self, count: int, model_input: ModelInput, max_image_pixels: int | None) -> None:
        self._arguments = (count, model_input, max_image_pixels)
        self._pool, _ = start_workers(*self._arguments)
        self.restarts = 0

    def submit(self, function: Callable[..., _T], *arguments: Any) -> Future[_T]:
        """Schedule ``function(*arguments)`` (restarting a broken pool first)."""
        try:
            return self._pool.submit(function, *arguments)
        except BrokenProcessPool:
            self._restart()
            return self._pool.submit(function, *arguments)

    def result(self, future: Future[_T], function: Callable[..., _T], *arguments: Any) -> _T:
        """The result of ``future``, a task ``function(*arguments)``, run once more if a dying
        worker took it down."""
        try:
            return future.result()
        except BrokenProcessPool:
            pass
        try:
            return self.submit(function, *arguments).result()
        except BrokenProcessPool as exc:
            self._restart()
            raise WorkerCrashed(
                "a worker process died while working on it, twice (a crash in a decoder or "
                "encoder, or killed for lack of memory)"
            ) from exc

    def _restart(self) -> None:
        try:
            self._pool.submit(int)  # raises when the pool is broken; else a no-op task
            return
        except BrokenProcessPool:
            pass
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool, _ = start_workers(*self._arguments)
        self.restarts += 1

    def shutdown(self) -> None:
        """Wait for the tasks in flight, cancel queued ones, and stop the workers."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def worker_count(requested: int, jobs: int) -> int:
    """How many workers to start: ``requested``, but no more than the CPUs this process may use
    or the inputs there are (a fork pool starts all its processes at once), and at least one."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(requested, cpus, jobs))


def start_workers(
    count: int, model_input: ModelInput, max_image_pixels: int | None
) -> tuple[Executor, str]:
    """A pool of ``count`` workers for :func:`decode` and write tasks, and its kind.

    Args:
        count: The number of workers.
        model_input: How decoded images become model pixels.
        max_image_pixels: Pillow's decompression-bomb limit for the workers (None: no limit).

    Returns:
        ``(pool, "processes")`` where fork is available, else ``(pool, "threads")``.
    """
    initargs = (model_input, max_image_pixels)
    if sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("fork")
        pool = ProcessPoolExecutor(
            count,
            mp_context=context,
            initializer=_start_process,
            initargs=(os.getpid(), *initargs),
        )
        return pool, "processes"
    _configure(*initargs)
    return ThreadPoolExecutor(count, thread_name_prefix="saliency-worker"), "threads"


def _start_process(parent: int, model_input: ModelInput, max_image_pixels: int | None) -> None:
    # The main process handles Ctrl-C and SIGTERM: it still collects the writes in flight.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    exit_with_parent(parent)
    torch.set_num_threads(1)  # as DataLoader workers: a forked OpenMP team is not usable
    _configure(model_input, max_image_pixels)


_PR_SET_PDEATHSIG = 1
WATCH_PARENT_SECONDS = 1.0


def exit_with_parent(parent: int) -> None:
    """End this (worker) process when ``parent`` dies, even by SIGKILL: otherwise an orphaned
    worker would live on, holding the terminal or a pipe (``saliency explain ... | tee``) open.

    Linux sends SIGKILL on the parent's death (``prctl(PR_SET_PDEATHSIG)``); a watchdog thread
    that polls the parent id covers the other cases (no prctl, or a parent that died first).
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCH_PARENT_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="saliency-parent-watch", daemon=True).start()


def _configure(model_input: ModelInput, max_image_pixels: int | None) -> None:
    global _model_input
    _model_input = model_input
    PIL.Image.MAX_IMAGE_PIXELS = max_image_pixels


def decode(job: Job) -> tuple[PIL.Image.Image, Tensor]:
    """Worker: the decoded RGB image and the model's pixels of one input."""
    if _model_input is None:
        raise RuntimeError("decode() runs in a pool made by start_workers()")
    try:
        mode = os.stat(job.source).st_mode
    except OSError:
        mode = stat.S_IFREG  # open_image names the problem
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise ImageLoadError(job.source, "not a regular file (a FIFO, socket or device)")
    image = open_image(job.source)
    return image, _model_input.pixels(image)
