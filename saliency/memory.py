"""Memory budgets, and the measured memory cost of a point, for the engine's chunk size.

The engine's automatic chunk size is ``budget // cost per point``, capped (see
:func:`saliency.engine.automatic_chunk_size`). The budget defaults to a fraction of the free
device memory (CUDA) or of the available RAM (CPU, capped); the cost per point is measured on
the first gradient chunk by :class:`CostMeter`.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.module import register_module_forward_hook

CUDA_FREE_FRACTION = 0.6
"""Default CUDA budget: this fraction of the free memory (the driver's free memory plus the
blocks PyTorch's caching allocator holds but does not use)."""
CPU_AVAILABLE_FRACTION = 0.25
"""Default CPU budget: this fraction of the available RAM (``MemAvailable``) ..."""
CPU_BUDGET_CAP = 8 << 30
"""... and at most this many bytes."""
CPU_FALLBACK_BUDGET = 2 << 30
"""The CPU budget where the available RAM cannot be read."""

SAVED_FACTOR = 1.25
"""Peak memory of forward + backward relative to the tensors autograd saves for backward, with a
margin (measured CPU peak RSS: 1.05–1.1× the saved bytes for ResNet-18/50 at 224²)."""
LARGEST_OUTPUT_COPIES = 2
"""Transient memory: the input and output of the largest layer (also where nothing is saved,
e.g. the layers before a hooked layer)."""
POINT_COPIES = 4
"""Point-sized tensors per point besides the model's: the points, their gradients, the
contribution and the method's intermediates."""


def available_ram() -> int | None:
    """The available RAM in bytes (``MemAvailable`` of /proc/meminfo, else sysconf), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def default_memory_budget(device: torch.device) -> int:
    """Bytes the engine may use for one chunk on ``device`` when no budget is given."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return max(1, int((free + cached) * CUDA_FREE_FRACTION))
    ram = available_ram()
    if ram is None:
        return CPU_FALLBACK_BUDGET
    return max(1, min(CPU_BUDGET_CAP, int(ram * CPU_AVAILABLE_FRACTION)))


class CostMeter:
    """Measures the memory that the forward + backward of one chunk of points needs.

    Inside :meth:`measure` it counts the bytes of the tensors autograd saves for backward
    (``saved_tensors_hooks``; each storage once; the model's parameters and buffers, which do
    not grow with the chunk, excluded), the largest module output (a global forward hook,
    removed afterwards) and, on CUDA, the caching allocator's peak above the memory allocated
    on entry (``torch.cuda.max_memory_allocated``; the peak statistics of the device are reset
    for this). None of it needs a host synchronisation.
    """

    def __init__(self, model: object, device: torch.device) -> None:
        self.device = device
        self.saved_bytes = 0
        self.peak_bytes: int | None = None
        self.point_bytes = 0
        self.largest_output_bytes = 0
        self._seen: set[int] = set()
        self._exclude: set[int] = set()
        if isinstance(model, nn.Module):
            for tensor in itertools.chain(model.parameters(), model.buffers()):
                pointer = _storage_pointer(tensor)
                if pointer is not None:
                    self._exclude.add(pointer)

    def note_points(self, points: Tensor) -> None:
        """Record the size of one point (called with the chunk's points)."""
        self.point_bytes = points[0].numel() * points.element_size() if len(points) else 0

    @contextmanager
    def measure(self) -> Iterator[CostMeter]:
        cuda = self.device.type == "cuda"
        if cuda:
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        handle = register_module_forward_hook(self._output)
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack):
                yield self
        finally:
            handle.remove()
        if cuda:
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - base

    def per_point(self, count: int) -> int:
        """Estimated bytes per point of a chunk of ``count`` points (≥ 1)."""
        count = max(1, count)
        estimate = (
            SAVED_FACTOR * self.saved_bytes / count
            + LARGEST_OUTPUT_COPIES * self.largest_output_bytes / count
            + POINT_COPIES * self.point_bytes
        )
        if self.peak_bytes is not None:
            estimate = max(estimate, self.peak_bytes / count)
        return max(1, math.ceil(estimate))

    def _pack(self, tensor: Tensor) -> Tensor:
        pointer = _storage_pointer(tensor)
        if pointer is not None and pointer not in self._seen and pointer not in self._exclude:
            self._seen.add(pointer)
            self.saved_bytes += tensor.untyped_storage().nbytes()
        return tensor

    def _output(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, Tensor):
            size = output.numel() * output.element_size()
            self.largest_output_bytes = max(self.largest_output_bytes, size)


def _unpack(tensor: Any) -> Any:
    return tensor


def _storage_pointer(tensor: Tensor) -> int | None:
    try:
        pointer = tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError, TypeError):  # sparse, meta, tensor subclasses
        return None
    return pointer or None
