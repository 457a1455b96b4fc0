"""Noisy linear imputation (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for
Attribution Methods", ICML, arXiv:2202.00449): fill removed pixels from their neighbours.

Each removed pixel :math:`i` takes the weighted mean of its in-image 8-neighbours :math:`j`,
weight :math:`w_{ij} = 1/6` for the four direct and :math:`1/12` for the four diagonal ones,
where the neighbours may themselves be removed. The removed values :math:`x_U` solve, per
channel, the sparse linear system

.. math:: D_i\\,x_i - \\sum_{j \\in U} w_{ij}\\,x_j = \\sum_{j \\notin U} w_{ij}\\,x_j
          \\quad (i \\in U),\\qquad D_i = \\sum_{j \\in \\mathcal N(i)} w_{ij},

a Laplace equation with the kept pixels as boundary values. Its matrix is symmetric positive
definite whenever a pixel is kept, so it is solved by conjugate gradients, every system of the
batch and every channel at once, on the inputs' device, in float64 (float32 for tolerances from
1e-5 on, and on MPS). Plain conjugate gradients need iterations in proportion to the width of
the removed regions (hundreds at 96²); a multigrid V-cycle as preconditioner (ℓ1-Jacobi
smoothing, Galerkin coarse grids assembled from the 3×3 stencil, a dense solve on the coarsest
grid) brings that to tens, whatever the image size. *Noisy* imputation then adds
:math:`\\mathcal N(0, \\sigma^2)` noise to the imputed pixels, which hides the mask that a purely
linear fill would leak to the model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from saliency.errors import InvalidOptionError
from saliency.explain import check_inputs
from saliency.metrics.relevance import as_masks
from saliency.validation import require_float, require_int

__all__ = ["linear_imputation", "noisy_linear_imputation"]

_DIRECT, _DIAGONAL = 1 / 6, 1 / 12
# The 3×3 neighbourhood in raster order; index 4 is the pixel itself.
_OFFSETS = tuple((row, col) for row in (-1, 0, 1) for col in (-1, 0, 1))
_WEIGHTS = tuple(0.0 if o == (0, 0) else _DIRECT if 0 in o else _DIAGONAL for o in _OFFSETS)
_CENTRE = 4
# Multigrid: coarsen while a level has more nodes than this, then solve it densely.
_COARSEST = 64
_SMOOTHING_STEPS = 1
# float32 solves reach relative residuals of about this much, at half the memory traffic.
_FLOAT32_TOLERANCE = 1e-5


def _span(offset: int, size: int) -> tuple[slice, slice]:
    """Target and source index ranges of a shift by ``offset`` along an axis of ``size``."""
    return slice(max(0, -offset), size - max(0, offset)), slice(
        max(0, offset), size + min(0, offset)
    )


def _shift(field: Tensor, row: int, col: int) -> Tensor:
    """``out[p] = field[p + (row, col)]``, zero outside the grid."""
    result = torch.zeros_like(field)
    (rows_to, rows_from), (cols_to, cols_from) = (
        _span(row, field.shape[-2]),
        _span(col, field.shape[-1]),
    )
    result[..., rows_to, cols_to] = field[..., rows_from, cols_from]
    return result


def _apply(stencil: Tensor, field: Tensor) -> Tensor:
    """A 9-point operator given per node, ``(m, 9, h, w)``, on ``(m, C, h, w)`` fields."""
    height, width = field.shape[-2:]
    result = stencil[:, _CENTRE : _CENTRE + 1] * field
    for index, (row, col) in enumerate(_OFFSETS):
        if index != _CENTRE:
            (rows_to, rows_from), (cols_to, cols_from) = _span(row, height), _span(col, width)
            # in place on the overlapping window: no padded copy of the field
            result[..., rows_to, cols_to].addcmul_(
                stencil[:, index : index + 1, rows_to, cols_to], field[..., rows_from, cols_from]
            )
    return result


@dataclass(frozen=True)
class _Level:
    """One grid of the multigrid hierarchy: its operator and the nodes it acts on."""

    stencil: Tensor  # (m, 9, h, w); rows of inactive nodes are the identity
    active: Tensor  # (m, 1, h, w) 0/1


def _restrict_last(field: Tensor) -> Tensor:
    """Full weighting along the last axis: ``c_j = ½ f_{2j−1} + f_{2j} + ½ f_{2j+1}``."""
    coarse = field[..., 0::2].clone()
    odd = field[..., 1::2]
    coarse[..., : odd.shape[-1]] += 0.5 * odd
    coarse[..., 1:] += 0.5 * odd[..., : coarse.shape[-1] - 1]
    return coarse


def _prolong_last(coarse: Tensor, size: int) -> Tensor:
    """Linear interpolation along the last axis, the adjoint of :func:`_restrict_last`."""
    fine = coarse.new_zeros(*coarse.shape[:-1], size)
    fine[..., 0::2] = coarse
    odd = fine[..., 1::2]
    odd += 0.5 * coarse[..., : odd.shape[-1]]
    odd[..., : coarse.shape[-1] - 1] += 0.5 * coarse[..., 1:]
    return fine


def _restrict(level: _Level, field: Tensor) -> Tensor:
    """Full-weighting restriction of the active part: the adjoint of :func:`_prolong`."""
    rows = _restrict_last(field * level.active)
    return _restrict_last(rows.transpose(-1, -2)).transpose(-1, -2)


def _prolong(level: _Level, coarse: Tensor) -> Tensor:
    """Bilinear interpolation to ``level``'s grid, kept to its active nodes."""
    height, width = level.active.shape[-2:]
    columns = _prolong_last(coarse.transpose(-1, -2), height).transpose(-1, -2)
    return _prolong_last(columns, width) * level.active


def _coarsen(level: _Level) -> _Level:
    """The Galerkin operator R A P of the next grid, assembled by probing.

    Its stencil reaches one node, so the 9 probes that mark every third node in each direction
    separate all its coefficients.
    """
    count, _, height, width = level.active.shape
    coarse_shape = ((height + 1) // 2, (width + 1) // 2)
    device, dtype = level.stencil.device, level.stencil.dtype
    rows = torch.arange(coarse_shape[0], device=device)[:, None]
    cols = torch.arange(coarse_shape[1], device=device)[None, :]
    stencil = level.stencil.new_zeros(count, 9, *coarse_shape)
    support = _restrict(level, torch.ones_like(level.active))
    coarse = _Level(stencil, (support > 0).to(dtype))
    for phase_row in range(3):
        for phase_col in range(3):
            probe = ((rows % 3 == phase_row) & (cols % 3 == phase_col)).to(dtype)
            probe = probe.expand(count, 1, *coarse_shape)
            response = _restrict(level, _apply(level.stencil, _prolong(level, probe)))
            # node q sees the probe at q + o with o ≡ phase − q (mod 3), o in {-1, 0, 1}²
            offset_row = (phase_row - rows + 1) % 3
            offset_col = (phase_col - cols + 1) % 3
            index = (offset_row * 3 + offset_col).expand(count, 1, *coarse_shape)
            stencil.scatter_add_(1, index, response)
    identity = torch.zeros_like(stencil)
    identity[:, _CENTRE] = 1.0
    stencil.copy_(torch.where(coarse.active.bool(), stencil, identity))
    return coarse


def _dense(level: _Level) -> Tensor:
    """The coarsest operator as ``(m, n, n)`` matrices."""
    count, _, height, width = level.stencil.shape
    nodes = torch.arange(height * width, device=level.stencil.device)
    node_rows, node_cols = nodes // width, nodes % width
    matrix = level.stencil.new_zeros(count, height * width, height * width)
    flat = level.stencil.flatten(2)
    for index, (row, col) in enumerate(_OFFSETS):
        valid = (
            (node_rows + row >= 0)
            & (node_rows + row < height)
            & (node_cols + col >= 0)
            & (node_cols + col < width)
        )
        source = nodes[valid]
        matrix[:, source, source + row * width + col] = flat[:, index, source]
    return matrix


class _Multigrid:
    """A symmetric V-cycle (ℓ1-Jacobi smoothing, Galerkin coarse grids, dense coarsest solve):
    a fixed SPD preconditioner, so conjugate gradients keep their guarantees."""

    def __init__(self, fine: _Level) -> None:
        self.levels = [fine]
        while self.levels[-1].active.shape[-2:].numel() > _COARSEST:
            self.levels.append(_coarsen(self.levels[-1]))
        # Masked prolongation can make coarse columns dependent (one removed pixel seen by four
        # coarse nodes): the coarse operators are only semi-definite, so pseudo-inverse.
        self.coarsest = torch.linalg.pinv(_dense(self.levels[-1]), hermitian=True)
        # ℓ1-Jacobi smoothing, 1 / Σ_j |a_ij|: convergent on every level, which keeps the
        # V-cycle positive definite (Galerkin levels reach λ_max(D⁻¹A) ≈ 4, where plain damped
        # Jacobi would amplify).
        self.relax = [1 / level.stencil.abs().sum(dim=1, keepdim=True) for level in self.levels]

    def __call__(self, residual: Tensor, depth: int = 0) -> Tensor:
        level = self.levels[depth]
        if depth == len(self.levels) - 1:
            flat = residual.flatten(2).transpose(1, 2)  # (m, n, C)
            return (self.coarsest @ flat).transpose(1, 2).reshape(residual.shape)
        relax = self.relax[depth]
        solution = residual * relax
        for _ in range(_SMOOTHING_STEPS - 1):
            solution.addcmul_(residual - _apply(level.stencil, solution), relax)
        defect = residual - _apply(level.stencil, solution)
        solution += _prolong(level, self(_restrict(level, defect), depth + 1))
        for _ in range(_SMOOTHING_STEPS):
            solution.addcmul_(residual - _apply(level.stencil, solution), relax)
        return solution * level.active


def _fine_level(unknown: Tensor) -> _Level:
    """The imputation operator on the full grid: the system's rows for removed pixels, the
    identity for kept ones (whose values are not unknowns)."""
    inside = unknown
    ones = torch.ones_like(inside)
    columns = []
    degree = torch.zeros_like(inside)
    for (row, col), weight in zip(_OFFSETS, _WEIGHTS, strict=True):
        if weight:
            degree = degree + weight * _shift(ones, row, col)
            columns.append(-weight * inside * _shift(inside, row, col))
        else:
            columns.append(inside)  # replaced below by the degree
    stencil = torch.cat(columns, dim=1)
    stencil[:, _CENTRE : _CENTRE + 1] = inside * degree + (1 - inside)
    return _Level(stencil, inside)


def linear_imputation(
    inputs: Tensor,
    removed: Tensor,
    *,
    tolerance: float = 1e-8,
    max_iterations: int = 200,
) -> Tensor:
    """The inputs with every removed pixel replaced by its linear imputation (no noise).

    Args:
        inputs: ``(N, C, H, W)`` float images.
        removed: ``(N, H, W)`` or ``(N, 1, H, W)`` masks, non-zero where a pixel (all its
            channels) is removed.
        tolerance: Stop when every system's residual is at most ``tolerance`` × its right-hand
            side (Euclidean norms). The solve runs in float64 below 1e-5 and in float32 from
            1e-5 on (about float32's floor; twice as fast), and always in float32 on MPS.
        max_iterations: Preconditioned conjugate-gradient iterations at most (10–40 reach 1e-8,
            whatever the image size); a warning says when they did not suffice.

    Returns:
        ``(N, C, H, W)`` in the inputs' dtype; kept pixels are the inputs' own values. A sample
        with every pixel removed has no boundary values and is filled with zeros.
    """
    check_inputs(inputs)
    height, width = inputs.shape[-2:]
    if height * width < 2:
        raise InvalidOptionError(f"imputation needs at least 2 pixels, got {height}×{width}")
    require_float("tolerance", tolerance, 0.0, exclusive=True)
    require_int("max_iterations", max_iterations, 1)
    unknown = as_masks(removed, inputs[:, 0], name="removed").unsqueeze(1)
    # Nothing to anchor a sample whose every pixel is removed: solve it as if none were.
    empty = unknown.flatten(1).all(dim=1).view(-1, 1, 1, 1)
    unknown_solved = unknown & ~empty
    coarse_enough = tolerance >= _FLOAT32_TOLERANCE or inputs.device.type == "mps"
    precise = torch.float32 if coarse_enough else torch.float64
    count, channels = inputs.shape[:2]
    inside = unknown_solved.to(precise)
    values = inputs.detach().to(precise)
    fine = _fine_level(inside)
    precondition = _Multigrid(fine)

    def dot(first: Tensor, second: Tensor) -> Tensor:
        return (first * second).sum(dim=(2, 3), keepdim=True)  # (N, C, 1, 1): one per system

    known = values * (1 - inside)
    rhs = inside * sum(
        weight * _shift(known, row, col)
        for (row, col), weight in zip(_OFFSETS, _WEIGHTS, strict=True)
        if weight
    )
    solution = torch.zeros_like(values)
    residual = rhs.clone()
    preconditioned = precondition(residual)
    direction = preconditioned.clone()
    rz = dot(residual, preconditioned)
    limit = (tolerance * rhs.flatten(2).norm(dim=2)).view(count, channels, 1, 1)
    tiny = torch.finfo(precise).tiny
    for iteration in range(max_iterations + 1):
        norms = residual.flatten(2).norm(dim=2).view_as(limit)
        if bool((norms <= limit).all()):
            break
        if iteration == max_iterations:
            worst = float((norms / rhs.flatten(2).norm(dim=2).view_as(limit)).max())
            warnings.warn(
                f"linear imputation stopped after {max_iterations} iterations at a relative "
                f"residual of {worst:.2g} (tolerance {tolerance:g})",
                RuntimeWarning,
                stacklevel=2,
            )
            break
        product = _apply(fine.stencil, direction)
        curvature = dot(direction, product)
        step = torch.where(curvature > 0, rz / curvature.clamp_min(tiny), 0.0)
        solution = solution + step * direction
        residual = residual - step * product
        preconditioned = precondition(residual)
        rz_next = dot(residual, preconditioned)
        momentum = torch.where(rz > 0, rz_next / rz.clamp_min(tiny), 0.0)
        direction = preconditioned + momentum * direction
        rz = rz_next
    filled = torch.where(unknown_solved, solution, values)
    filled = torch.where(empty, 0.0, filled)
    return filled.to(inputs.dtype)


def noisy_linear_imputation(
    inputs: Tensor,
    removed: Tensor,
    *,
    noise: float = 0.01,
    seed: int = 0,
    tolerance: float = 1e-8,
    max_iterations: int = 200,
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
