"""Reference inputs x′ for path methods such as integrated gradients."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from saliency.errors import InvalidOptionError, accepted
from saliency.validation import is_real

BaselineName = Literal["blur", "uniform noise"]
BASELINE_NAMES: tuple[str, ...] = get_args(BaselineName)
BaselineSpec = float | Tensor | BaselineName

# Blur baseline: σ as a fraction of the image's larger side; strong enough to remove object
# shapes while keeping the colour distribution (Sturmfels et al. 2020, "Visualizing the Impact
# of Feature Attribution Baselines").
_BLUR_SIGMA_FRACTION = 0.1


def make_baseline(spec: BaselineSpec, inputs: Tensor, seed: int = 0) -> Tensor:
    """The baseline x′ for ``inputs``, expanded to their shape, dtype and device.

    Args:
        spec: a number (constant image), a tensor broadcastable to the inputs, or a name:
            ``"blur"`` (Gaussian blur, σ = 0.1·max(H, W), reflect padding) or ``"uniform noise"``
            (uniform in each sample's [min, max], drawn from ``seed``).
        inputs: ``(N, C, H, W)``.
        seed: the seed of the noise baseline.
    """
    if is_real(spec) and math.isfinite(float(spec)):
        return torch.full_like(inputs, float(spec))
    if isinstance(spec, Tensor):
        return _broadcast(spec, inputs)
    if isinstance(spec, str) and spec in _NAMED:
        return _NAMED[spec](inputs, seed)
    raise _invalid(spec)


def gaussian_blur(inputs: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` images with reflect padding."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=inputs.device, dtype=inputs.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = inputs.shape[1]
    out = inputs
    for dim in (2, 3):
        size = out.shape[dim]
        pad = min(radius, size - 1)
        # Images smaller than the kernel: truncate it (reflect padding needs pad < size).
        taps = kernel[radius - pad : radius + pad + 1]
        shape = (1, 1, -1, 1) if dim == 2 else (1, 1, 1, -1)
        weight = (
            (taps / taps.sum()).reshape(shape).expand(channels, 1, *taps.reshape(shape).shape[2:])
        )
        padding = (0, 0, pad, pad) if dim == 2 else (pad, pad, 0, 0)
        if pad:
            out = F.pad(out, padding, mode="reflect")
        out = F.conv2d(out, weight, groups=channels)
    return out


def _blur(inputs: Tensor, _seed: int) -> Tensor:
    return gaussian_blur(inputs, _BLUR_SIGMA_FRACTION * max(inputs.shape[-2:]))


def _uniform_noise(inputs: Tensor, seed: int) -> Tensor:
    generator = torch.Generator(device=inputs.device).manual_seed(seed)
    noise = torch.rand(inputs.shape, generator=generator, device=inputs.device, dtype=inputs.dtype)
    flat = inputs.flatten(1)
    low = flat.amin(1).view(-1, *[1] * (inputs.ndim - 1))
    high = flat.amax(1).view(-1, *[1] * (inputs.ndim - 1))
    return low + noise * (high - low)


_NAMED: dict[str, Callable[[Tensor, int], Tensor]] = {
    "blur": _blur,
    "uniform noise": _uniform_noise,
}


def _broadcast(baseline: Tensor, inputs: Tensor) -> Tensor:
    try:
        torch.broadcast_shapes(baseline.shape, inputs.shape)
        return baseline.to(device=inputs.device, dtype=inputs.dtype).expand_as(inputs)
    except RuntimeError:
        raise InvalidOptionError(
            f"baseline of shape {tuple(baseline.shape)} does not broadcast to the inputs' shape "
            f"{tuple(inputs.shape)}"
        ) from None


def _invalid(spec: object) -> InvalidOptionError:
    return InvalidOptionError(
        f"baseline={spec!r}; accepted: a finite number, a tensor broadcastable to the inputs, or "
        f"one of {accepted(BASELINE_NAMES)}"
    )
