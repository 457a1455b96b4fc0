"""Noisy linear imputation (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for
Attribution Methods", ICML, arXiv:2202.00449): fill removed pixels from their neighbours.

Each removed pixel :math:`i` takes the weighted mean of its in-image 8-neighbours :math:`j`,
weight :math:`w_{ij} = 1/6` for the four direct and :math:`1/12` for the four diagonal ones,
where the neighbours may themselves be removed. The removed values :math:`x_U` solve, per
channel, the sparse linear system

.. math:: D_i\\,x_i - \\sum_{j \\in U} w_{ij}\\,x_j = \\sum_{j \\notin U} w_{ij}\\,x_j
          \\quad (i \\in U),\\qquad D_i = \\sum_{j \\in \\mathcal N(i)} w_{ij},

a Laplace equation with the kept pixels as boundary values. Its matrix is symmetric positive
definite whenever a pixel is kept, so it is solved by Jacobi-preconditioned conjugate gradients,
every system of the batch and every channel at once, with the stencil as a 3×3 convolution, on
the inputs' device, in float64 (float32 on MPS). *Noisy* imputation then adds
:math:`\\mathcal N(0, \\sigma^2)` noise to the imputed pixels, which hides the mask that a purely
linear fill would leak to the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from saliency.errors import InvalidOptionError
from saliency.explain import _check_inputs
from saliency.metrics.relevance import as_masks
from saliency.validation import require_float, require_int

__all__ = ["linear_imputation", "noisy_linear_imputation"]

_DIRECT, _DIAGONAL = 1 / 6, 1 / 12
# Convergence is checked (a host synchronisation) once per this many iterations.
_CHECK_EVERY = 8


def _stencil(dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.tensor(
        [[_DIAGONAL, _DIRECT, _DIAGONAL], [_DIRECT, 0.0, _DIRECT], [_DIAGONAL, _DIRECT, _DIAGONAL]],
        dtype=dtype,
        device=device,
    ).view(1, 1, 3, 3)


def linear_imputation(
    inputs: Tensor,
    removed: Tensor,
    *,
    tolerance: float = 1e-8,
    max_iterations: int | None = None,
) -> Tensor:
    """The inputs with every removed pixel replaced by its linear imputation (no noise).

    Args:
        inputs: ``(N, C, H, W)`` float images.
        removed: ``(N, H, W)`` or ``(N, 1, H, W)`` masks, non-zero where a pixel (all its
            channels) is removed.
        tolerance: Stop when every system's residual is at most ``tolerance`` × its right-hand
            side (Euclidean norms).
        max_iterations: Conjugate-gradient iterations at most (None: H·W, where exact
            arithmetic would have converged).

    Returns:
        ``(N, C, H, W)`` in the inputs' dtype; kept pixels are the inputs' own values. A sample
        with every pixel removed has no boundary values and is filled with zeros.
    """
    _check_inputs(inputs)
    height, width = inputs.shape[-2:]
    if height * width < 2:
        raise InvalidOptionError(f"imputation needs at least 2 pixels, got {height}×{width}")
    require_float("tolerance", tolerance, 0.0, exclusive=True)
    if max_iterations is not None:
        require_int("max_iterations", max_iterations, 1)
    unknown = as_masks(removed, inputs[:, 0], name="removed").unsqueeze(1)
    precise = torch.float32 if inputs.device.type == "mps" else torch.float64
    stencil = _stencil(precise, inputs.device)
    count, channels = inputs.shape[:2]
    inside = unknown.to(precise)  # (N, 1, H, W)
    values = inputs.detach().to(precise)

    def neighbours(field: Tensor) -> Tensor:
        """Σ_j w_ij field_j for every pixel, channel by channel (zero outside the image)."""
        flat = field.reshape(-1, 1, height, width)
        return F.conv2d(flat, stencil, padding=1).view(field.shape)

    degree = neighbours(torch.ones(1, 1, height, width, dtype=precise, device=inputs.device))

    def operator(field: Tensor) -> Tensor:
        return inside * (degree * field - neighbours(field * inside))

    def dot(first: Tensor, second: Tensor) -> Tensor:
        return (first * second).sum(dim=(2, 3), keepdim=True)  # (N, C, 1, 1): one per system

    rhs = inside * neighbours(values * (1 - inside))
    solution = torch.zeros_like(rhs)
    residual = rhs.clone()
    preconditioned = residual / degree
    direction = preconditioned.clone()
    rz = dot(residual, preconditioned)
    limit = (tolerance * rhs.flatten(2).norm(dim=2)).view(count, channels, 1, 1)
    tiny = torch.finfo(precise).tiny
    for iteration in range(max_iterations or height * width):
        if iteration % _CHECK_EVERY == 0:
            norms = residual.flatten(2).norm(dim=2).view_as(limit)
            if bool((norms <= limit).all()):
                break
        product = operator(direction)
        curvature = dot(direction, product)
        step = torch.where(curvature > 0, rz / curvature.clamp_min(tiny), 0.0)
        solution = solution + step * direction
        residual = residual - step * product
        preconditioned = residual / degree
        rz_next = dot(residual, preconditioned)
        momentum = torch.where(rz > 0, rz_next / rz.clamp_min(tiny), 0.0)
        direction = preconditioned + momentum * direction
        rz = rz_next
    filled = torch.where(unknown, solution, values)
    return filled.to(inputs.dtype)


def noisy_linear_imputation(
    inputs: Tensor,
    removed: Tensor,
    *,
    noise: float = 0.01,
    seed: int = 0,
    tolerance: float = 1e-8,
    max_iterations: int | None = None,
) -> Tensor:
    """:func:`linear_imputation` plus :math:`\\mathcal N(0, \\text{noise}^2)` on removed pixels.

    The noise comes from a generator on the inputs' device seeded with ``seed``.

    Args:
        inputs: ``(N, C, H, W)`` float images.
        removed: ``(N, H, W)`` or ``(N, 1, H, W)`` masks of the removed pixels.
        noise: Standard deviation σ of the added noise, in input units (ROAD: 0.01 on [0, 1]).
        seed: Seeds the noise.
        tolerance: See :func:`linear_imputation`.
        max_iterations: See :func:`linear_imputation`.
    """
    require_float("noise", noise, 0.0)
    require_int("seed", seed, 0)
    filled = linear_imputation(inputs, removed, tolerance=tolerance, max_iterations=max_iterations)
    generator = torch.Generator(device=inputs.device).manual_seed(seed)
    jitter = torch.randn(
        filled.shape, generator=generator, device=filled.device, dtype=filled.dtype
    )
    unknown = as_masks(removed, inputs[:, 0], name="removed").unsqueeze(1)
    return torch.where(unknown, filled + noise * jitter, filled)
