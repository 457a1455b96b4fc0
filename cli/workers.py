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
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

import PIL.Image
import torch
from torch import Tensor

from saliency.cli.model_input import ModelInput
from saliency.cli.plan import Job
from saliency.errors import ImageLoadError
from saliency.images import open_image

# Set once per worker by its initializer (and for the thread fallback, in this process).
_model_input: ModelInput | None = None


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
