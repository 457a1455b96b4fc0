"""The pipeline's worker processes: decoding and encoding away from the device process.

Pillow releases the GIL while it decodes, resizes and encodes, but not around everything a
worker does (format probing, EXIF, colour conversion, building tensors), so on a machine with
many cores threads leave the device waiting. Workers are forked processes (Linux), like
PyTorch's DataLoader workers: they inherit the loaded modules instead of importing torch again,
run torch with one thread, ignore Ctrl-C (the main process decides what happens), and get the
model's input pipeline and the image size limit once, when they start. Where fork is not
available, the same functions run in threads of the main process.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import stat
import sys
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import PIL.Image
import torch
from torch import Tensor

from saliency.cli.model_input import ModelInput
from saliency.cli.plan import Job
from saliency.errors import ImageLoadError, SaliencyError
from saliency.images import open_image

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
        self._pool, self.kind = start_workers(*self._arguments)
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
        self._pool, self.kind = start_workers(*self._arguments)
        self.restarts += 1

    def shutdown(self) -> None:
        """Wait for the tasks in flight, cancel queued ones, and stop the workers."""
        self._pool.shutdown(wait=True, cancel_futures=True)


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
            count, mp_context=context, initializer=_start_process, initargs=initargs
        )
        return pool, "processes"
    _configure(*initargs)
    return ThreadPoolExecutor(count, thread_name_prefix="saliency-worker"), "threads"


def _start_process(model_input: ModelInput, max_image_pixels: int | None) -> None:
    # The main process handles Ctrl-C: it still collects the writes in flight.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)  # as DataLoader workers: a forked OpenMP team is not usable
    _configure(model_input, max_image_pixels)


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
