r"""Path integrals of gradients, the quadrature shared by the path methods.

A :class:`Path` gives, for each sample i, points γ_i(α) for α ∈ [0, 1] from a baseline γ_i(0) to
the input γ_i(1), and their velocities γ'_i(α). Path methods (integrated gradients, Blur IG, ...)
attribute

.. math:: a_i = \int_0^1 \nabla f_t(\gamma(\alpha)) \odot \gamma'(\alpha)\,d\alpha,
          \qquad \sum_i a_i = f_t(\gamma(1)) - f_t(\gamma(0))

evaluated here with a fixed Gauss–Legendre rule (:func:`integrate`) or adaptively to a tolerance
(:mod:`saliency.methods.adaptive_quadrature`). Points are made chunk by chunk by the engine, so
memory stays bounded whatever ``N × steps`` is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from saliency.engine import Chunk, Engine, Points
from saliency.targets import Target

PathFunction = Callable[[Tensor, Tensor], Tensor]
"""``(samples (m,), alphas (m,)) -> (m, *shape)``: one row per (sample, α) pair."""


@dataclass(frozen=True)
class Path:
    """One path γ_i: [0, 1] → input space per sample.

    Attributes:
        start: ``(N, ...)`` γ(0), the baseline.
        end: ``(N, ...)`` γ(1), the input.
        point: γ at (sample, α) pairs; ``None``: the straight line ``start + α (end − start)``.
        velocity: γ' at (sample, α) pairs; ``None``: the straight line's ``end − start``.
    """

    start: Tensor
    end: Tensor
    point: PathFunction | None = None
    velocity: PathFunction | None = None

    @property
    def samples(self) -> int:
        return len(self.end)

    @property
    def straight(self) -> bool:
        return self.point is None

    def points(self, samples: Tensor, alphas: Tensor) -> Tensor:
        """γ_{samples}(alphas), in the inputs' dtype."""
        if self.point is not None:
            return self.point(samples, alphas)
        start = self.start[samples]
        scale = alphas.to(start.dtype).view((-1,) + (1,) * (start.ndim - 1))
        return start + scale * (self.end[samples] - start)

    def velocities(self, samples: Tensor, alphas: Tensor) -> Tensor:
        """γ'_{samples}(alphas)."""
        if self.velocity is not None:
            return self.velocity(samples, alphas)
        return (self.end - self.start)[samples]


def integrate(engine: Engine, target: Target, path: Path, steps: int) -> Tensor:
    r"""``∫_0^1 ∇f_t(γ(α)) ⊙ γ'(α) dα`` per sample with the ``steps``-point Gauss–Legendre rule.

    On a straight line the constant velocity multiplies the weighted gradient sum once, at the
    end (as captum does), instead of every point.
    """
    nodes, weights = gauss_legendre(steps, path.end.device)
    shape = (-1,) + (1,) * (path.end.ndim - 1)

    def make(index: Tensor) -> Tensor:
        return path.points(index // steps, nodes[index % steps])

    def weighted(chunk: Chunk) -> Tensor:
        step = chunk.index % steps
        grads = chunk.grads * weights[step].to(chunk.grads.dtype).view(shape)
        if path.straight:
            return grads
        return grads * path.velocities(chunk.samples, nodes[step])

    points = Points(path.samples, steps, path.end.shape[1:], path.end.device, make)
    total = engine.accumulate(points, target, weighted)
    if path.straight:
        total = (path.end - path.start) * total
    return total.to(path.end.dtype)


@lru_cache(maxsize=32)
def _gauss_legendre_cpu(steps: int) -> tuple[Tensor, Tensor]:
    x, w = np.polynomial.legendre.leggauss(steps)
    return torch.from_numpy(0.5 * (x + 1)), torch.from_numpy(0.5 * w)


def gauss_legendre(steps: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Nodes α_k and weights w_k of the ``steps``-point Gauss–Legendre rule on [0, 1] (float64)."""
    nodes, weights = _gauss_legendre_cpu(steps)
    return nodes.to(device), weights.to(device)


@lru_cache(maxsize=32)
def _gauss_log_cpu(steps: int) -> tuple[Tensor, Tensor]:
    # Lanczos on a discrete measure with the same moments up to degree 2M − 1: the product of
    # two M-point Gauss–Legendre rules (the density of αβ for α, β uniform is −ln s). The
    # Jacobi matrix of order n needs moments up to 2n − 1 only, so M = n + 8 is exact; full
    # reorthogonalisation keeps float64 accurate (the direct moment route is ill-conditioned).
    alpha, weight = _gauss_legendre_cpu(steps + 8)
    points = (alpha[:, None] * alpha[None, :]).flatten()
    vector = (weight[:, None] * weight[None, :]).flatten().sqrt()
    basis = [vector / vector.norm()]
    diagonal: list[Tensor] = []
    off: list[Tensor] = []
    for k in range(steps):
        w = points * basis[k]
        diagonal.append(basis[k] @ w)
        for _ in range(2):  # twice is enough (Kahan–Parlett)
            for q in basis:
                w = w - (q @ w) * q
        if k + 1 < steps:
            off.append(w.norm())
            basis.append(w / off[-1])
    jacobi = torch.diag(torch.stack(diagonal))
    if off:
        band = torch.stack(off)
        jacobi = jacobi + torch.diag(band, 1) + torch.diag(band, -1)
    nodes, vectors = torch.linalg.eigh(jacobi)
    # μ₀ = ∫₀¹ −ln s ds = 1
    return nodes, vectors[0].square()


def gauss_log(steps: int, device: torch.device) -> tuple[Tensor, Tensor]:
    r"""Nodes s_k and weights w_k of the ``steps``-point Gauss rule for
    :math:`\int_0^1 g(s)\,(-\ln s)\,ds` (float64): exact for polynomials g of degree
    2·steps − 1, as the ``steps × steps`` Gauss–Legendre product rule is for the same integral
    written as :math:`\int_0^1\!\int_0^1 g(\alpha\beta)\,d\alpha\,d\beta`."""
    nodes, weights = _gauss_log_cpu(steps)
    return nodes.to(device), weights.to(device)


def completeness_error(attributions: Tensor, gap: Tensor) -> Tensor:
    """``Σ a − gap`` per sample, summed in float64 and returned in the wider of float32 and
    the attributions' dtype: a float64 run is not rounded to float32 (near scores of 1e4
    float32 alone would be off by ~1e-4)."""
    dtype = torch.promote_types(attributions.dtype, torch.float32)
    total = attributions.detach().flatten(1).double().sum(1)
    return (total - gap.double()).to(dtype)
