"""Control maps: attribution-shaped maps that know nothing about the model.

A metric means little until it is set against what a map that ignores the model scores. Each
control is a non-negative ``(N, 1, H, W)`` map in the inputs' dtype, on the inputs' device,
scored with the same metrics as the methods (as the rows ``baseline:centre``,
``baseline:random`` and ``baseline:edges`` of a metrics table):

- ``"baseline:centre"``: a centred Gaussian, the same for every input (objects in photos sit
  near the centre more often than not),

  .. math:: G_{ij} = \\exp\\Big(-\\frac{(i - \\tfrac{H-1}{2})^2 + (j - \\tfrac{W-1}{2})^2}
            {2\\,(\\sigma \\min(H, W))^2}\\Big);

- ``"baseline:random"``: seeded uniform noise in [0, 1), independent per pixel;
- ``"baseline:edges"``: the Sobel edge magnitude of the image, the model-independent control of
  Adebayo et al. (2018, "Sanity Checks for Saliency Maps", arXiv:1810.03292), whose edge
  detector passes some localisation checks but no sanity check,

  .. math:: E_{ij} = \\sqrt{\\textstyle\\sum_c (S_x * x_c)_{ij}^2 + (S_y * x_c)_{ij}^2},\\qquad
            S_x = \\begin{pmatrix}-1&0&1\\\\-2&0&2\\\\-1&0&1\\end{pmatrix},\\ S_y = S_x^\\top,

  with the border pixels repeated (as ``scipy.ndimage.sobel``'s ``mode="reflect"``).

Non-negative maps score the same under every ``reduction`` of :mod:`saliency.metrics.relevance`.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from saliency.explain import check_inputs
from saliency.validation import check_choice, require_float, require_int

__all__ = ["CONTROLS", "Control", "centre_gaussian", "control_map", "random_noise", "sobel_edges"]

Control = Literal["baseline:centre", "baseline:random", "baseline:edges"]
CONTROLS: tuple[str, ...] = get_args(Control)
"""The control names, in table order."""


def _map_dtype(inputs: Tensor) -> torch.dtype:
    """Computation dtype: float32 at least (half-precision inputs are computed in float32)."""
    return torch.promote_types(inputs.dtype, torch.float32)


def centre_gaussian(inputs: Tensor, *, sigma: float = 0.25) -> Tensor:
    """``(N, 1, H, W)`` centred Gaussian, σ = ``sigma`` × min(H, W) pixels, 1 at the centre."""
    check_inputs(inputs)
    require_float("sigma", sigma, 0.0, exclusive=True)
    height, width = inputs.shape[-2:]
    dtype = _map_dtype(inputs)
    spread = sigma * min(height, width)
    rows = torch.arange(height, device=inputs.device, dtype=dtype) - (height - 1) / 2
    cols = torch.arange(width, device=inputs.device, dtype=dtype) - (width - 1) / 2
    square = rows[:, None] ** 2 + cols[None, :] ** 2
    gaussian = torch.exp(-square / (2 * spread**2))
    return gaussian.expand(len(inputs), 1, height, width).to(inputs.dtype).clone()


def random_noise(inputs: Tensor, *, seed: int = 0) -> Tensor:
    """``(N, 1, H, W)`` uniform noise in [0, 1) from a generator seeded with ``seed``.

    The generator lives on the inputs' device: the same seed gives the same maps on the same
    kind of device (CPU and CUDA generators differ).
    """
    check_inputs(inputs)
    require_int("seed", seed, 0)
    generator = torch.Generator(device=inputs.device).manual_seed(seed)
    shape = (len(inputs), 1, *inputs.shape[-2:])
    noise = torch.rand(shape, generator=generator, device=inputs.device, dtype=_map_dtype(inputs))
    return noise.to(inputs.dtype)


def sobel_edges(inputs: Tensor) -> Tensor:
    """``(N, 1, H, W)`` Sobel gradient magnitude over all channels (see the module docstring)."""
    check_inputs(inputs)
    dtype = _map_dtype(inputs)
    smooth = torch.tensor([1.0, 2.0, 1.0], device=inputs.device, dtype=dtype)
    derive = torch.tensor([-1.0, 0.0, 1.0], device=inputs.device, dtype=dtype)
    # Cross-correlation kernels: S_x differentiates along the width, S_y along the height.
    kernels = torch.stack([smooth[:, None] * derive[None, :], derive[:, None] * smooth[None, :]])
    channels = inputs.shape[1]
    images = inputs.detach().to(dtype).reshape(-1, 1, *inputs.shape[-2:])
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    derivatives = F.conv2d(padded, kernels.unsqueeze(1))  # (N·C, 2, H, W)
    squares = derivatives.square().reshape(len(inputs), channels * 2, *inputs.shape[-2:])
    return squares.sum(dim=1, keepdim=True).sqrt().to(inputs.dtype)


def control_map(name: Control, inputs: Tensor, *, seed: int = 0) -> Tensor:
    """The control map called ``name`` (one of :data:`CONTROLS`) for ``inputs``.

    Args:
        name: ``"baseline:centre"``, ``"baseline:random"`` or ``"baseline:edges"``.
        inputs: ``(N, C, H, W)`` float inputs.
        seed: Seeds ``"baseline:random"`` (the other controls are deterministic).

    Returns:
        A non-negative ``(N, 1, H, W)`` map in the inputs' dtype and device.
    """
    check_choice("control", name, Control)
    if name == "baseline:centre":
        return centre_gaussian(inputs)
    if name == "baseline:random":
        return random_noise(inputs, seed=seed)
    return sobel_edges(inputs)
