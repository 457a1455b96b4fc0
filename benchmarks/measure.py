"""Timing and peak-memory measurement, and the alternating runner.

Peak memory:

* CPU: the process's peak resident set (``VmHWM`` in ``/proc/self/status``) is reset before each
  timed call by writing ``5`` to ``/proc/self/clear_refs``, after ``gc.collect()`` and glibc's
  ``malloc_trim(0)`` have handed freed memory back to the kernel; the peak is ``VmHWM`` after the
  call minus ``VmRSS`` before it. (``tracemalloc`` does not see torch's allocations.)
* CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus the
  memory allocated before the call.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def _status_kib(key: str) -> int | None:
    try:
        with open(_STATUS) as handle:
            text = handle.read()
    except OSError:
        return None
    match = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class CpuMemory:
    """Peak RSS increase of this process during a call (see the module docstring)."""

    kind = "peak RSS increase"

    def __init__(self) -> None:
        self.available = _status_kib("VmHWM") is not None and self._reset()
        self._base = 0

    @staticmethod
    def _reset() -> bool:
        try:
            with open(_CLEAR_REFS, "w") as handle:
                handle.write("5")
        except OSError:
            return False
        return True

    def start(self) -> None:
        gc.collect()
        _malloc_trim()
        if self.available:
            self._reset()
        self._base = _status_kib("VmRSS") or 0

    def peak_bytes(self) -> float | None:
        if not self.available:
            return None
        peak = _status_kib("VmHWM")
        return None if peak is None else max(0, peak - self._base) * 1024.0


class CudaMemory:
    """Peak CUDA memory allocated by torch during a call, above what was allocated before."""

    kind = "peak CUDA memory allocated"
    available = True

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._base = 0

    def start(self) -> None:
        gc.collect()
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        self._base = torch.cuda.memory_allocated(self.device)

    def peak_bytes(self) -> float | None:
        torch.cuda.synchronize(self.device)
        return float(torch.cuda.max_memory_allocated(self.device) - self._base)


Memory = CpuMemory | CudaMemory


def memory_kind(device: torch.device) -> str:
    return CudaMemory.kind if device.type == "cuda" else CpuMemory.kind


def memory_probe(device: torch.device) -> Memory:
    return CudaMemory(device) if device.type == "cuda" else CpuMemory()


@dataclass
class Case:
    """One thing to time: a call that explains ``images`` images.

    Attributes:
        group: Cases compared with each other (one method at one precision).
        library: ``saliency-kit``, ``captum``, ``pytorch-grad-cam`` or ``torch``.
        variant: The options, as shown in the table.
        run: One call; its result is discarded.
        images: Images explained per call.
        points: Forward+backward evaluations per image (steps, samples, 1).
        primary: The case the others of the group are compared with (ours, with defaults).
    """

    group: str
    library: str
    variant: str
    run: Callable[[], Any]
    images: int
    points: int = 1
    primary: bool = False


@dataclass
class Result:
    """The measurements of one case."""

    case: Case
    seconds: list[float] = field(default_factory=list)
    peaks: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def images_per_second(self) -> float | None:
        if self.error or not self.seconds:
            return None
        return self.case.images / statistics.median(self.seconds)

    @property
    def spread(self) -> tuple[float, float] | None:
        """Images/s of the slowest and the fastest repeat."""
        if self.error or not self.seconds:
            return None
        return self.case.images / max(self.seconds), self.case.images / min(self.seconds)

    @property
    def peak_bytes(self) -> float | None:
        return max(self.peaks) if self.peaks and not self.error else None


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, torch.OutOfMemoryError):
        return "out of memory"
    text = " ".join(str(exc).split())
    if len(text) > 120:
        text = text[:117] + "..."
    return f"{type(exc).__name__}: {text}"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def time_once(
    case: Case, device: torch.device, memory: Memory | None
) -> tuple[float, float | None]:
    """Seconds of one call of ``case`` and its peak memory (bytes; None when unknown)."""
    if memory is not None:
        memory.start()
    _synchronize(device)
    start = time.perf_counter()
    result = case.run()
    _synchronize(device)
    seconds = time.perf_counter() - start
    del result
    peak = memory.peak_bytes() if memory is not None else None
    return seconds, peak


def alternate(
    cases: list[Case],
    device: torch.device,
    repeats: int,
    warmup: int,
    log: Callable[[str], None] = print,
) -> list[Result]:
    """Time the cases in one process, interleaved: a warm-up of each, then ``repeats`` rounds.

    Round ``r`` runs the cases in the order rotated by ``r`` (ABC, BCA, CAB, ...), so that no
    case always runs first or right after the same neighbour. A case that raises (e.g. out of
    memory) is recorded with its error and left out of the later rounds.
    """
    memory = memory_probe(device)
    results = [Result(case) for case in cases]
    for result in results:
        for _ in range(warmup):
            try:
                time_once(result.case, device, None)
            except Exception as exc:
                result.error = describe_error(exc)
                log(f"  {result.case.library} {result.case.variant}: {result.error}")
                _free(device)
                break
    for round_index in range(repeats):
        shift = round_index % len(results)
        for result in results[shift:] + results[:shift]:
            if result.error:
                continue
            try:
                seconds, peak = time_once(result.case, device, memory)
            except Exception as exc:
                result.error = describe_error(exc)
                log(f"  {result.case.library} {result.case.variant}: {result.error}")
                _free(device)
                continue
            result.seconds.append(seconds)
            if peak is not None:
                result.peaks.append(peak)
    for result in results:
        rate = result.images_per_second
        shown = result.error or f"{rate:.3g} images/s"
        log(f"  {result.case.group:<22} {result.case.library:<16} {result.case.variant}: {shown}")
    return results
