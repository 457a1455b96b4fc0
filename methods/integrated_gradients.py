"""Integrated gradients with Gauss–Legendre quadrature."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from saliency.baselines import BASELINE_NAMES, BaselineSpec, make_baseline
from saliency.engine import Chunk, Engine, Points
from saliency.errors import InvalidOptionError
from saliency.methods.base import Method
from saliency.targets import Target
from saliency.validation import require_bool, require_int


@dataclass(frozen=True)
class IntegratedGradients(Method):
    r"""Path integral of gradients from a baseline x′ to the input x.

    .. math:: a_i = (x_i - x'_i) \int_0^1 \partial_i f_t(x' + \alpha (x - x'))\,d\alpha
              \approx (x_i - x'_i) \sum_{k=1}^{m} w_k\, \partial_i f_t(x' + \alpha_k (x - x'))

    with Gauss–Legendre nodes α_k and weights w_k on [0, 1] (exact for polynomial integrands of
    degree 2m − 1; far less biased than the trapezoid rule). Completeness:
    Σ_i a_i ≈ f_t(x) − f_t(x′). Sundararajan, Taly & Yan (2017), "Axiomatic Attribution for Deep
    Networks", ICML, arXiv:1703.01365.

    Options:
        steps: quadrature nodes m.
        baseline: a number, a tensor broadcastable to the inputs, ``"blur"`` or ``"uniform noise"``.
        seed: seed of the ``"uniform noise"`` baseline.
        return_error: also compute the completeness error Σa − (f(x) − f(x′)) per sample
            (``Explanation.extras["completeness_error"]``; two more forward passes).
    """

    steps: int = 50
    baseline: BaselineSpec = 0.0
    seed: int = 0
    return_error: bool = False

    paper = "Sundararajan et al. 2017, arXiv:1703.01365"

    def __post_init__(self) -> None:
        require_int("steps", self.steps, 1)
        require_int("seed", self.seed, 0)
        require_bool("return_error", self.return_error)
        if isinstance(self.baseline, str) and self.baseline not in BASELINE_NAMES:
            raise InvalidOptionError(
                f"baseline={self.baseline!r}; accepted names: {', '.join(BASELINE_NAMES)}, or a "
                "number or tensor"
            )

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        baseline = make_baseline(self.baseline, inputs, self.seed)
        delta = inputs - baseline
        nodes, weights = gauss_legendre(self.steps, inputs.device)
        shape = (-1,) + (1,) * (inputs.ndim - 1)

        def make(index: Tensor) -> Tensor:
            sample, step = index // self.steps, index % self.steps
            return baseline[sample] + nodes[step].to(inputs.dtype).view(shape) * delta[sample]

        def weighted(chunk: Chunk) -> Tensor:
            return chunk.grads * weights[chunk.index % self.steps].to(chunk.grads.dtype).view(shape)

        points = Points(len(inputs), self.steps, inputs.shape[1:], inputs.device, make)
        return (delta * engine.accumulate(points, target, weighted)).to(inputs.dtype)

    def extras(
        self, engine: Engine, inputs: Tensor, target: Target, attributions: Tensor
    ) -> dict[str, Tensor]:
        if not self.return_error:
            return {}
        baseline = make_baseline(self.baseline, inputs, self.seed)
        gap = engine.target_scores(inputs, target) - engine.target_scores(baseline, target)
        total = attributions.detach().flatten(1).sum(1).float()
        return {"completeness_error": total - gap}


@lru_cache(maxsize=32)
def _gauss_legendre_cpu(steps: int) -> tuple[Tensor, Tensor]:
    x, w = np.polynomial.legendre.leggauss(steps)
    return torch.from_numpy(0.5 * (x + 1)), torch.from_numpy(0.5 * w)


def gauss_legendre(steps: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Nodes α_k and weights w_k of the ``steps``-point Gauss–Legendre rule on [0, 1] (float64)."""
    nodes, weights = _gauss_legendre_cpu(steps)
    return nodes.to(device), weights.to(device)
