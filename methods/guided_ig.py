"""Guided IG: integrated gradients along a path chosen by the gradients themselves."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from saliency.baselines import BASELINE_NAMES, BaselineSpec, make_baseline
from saliency.engine import Engine, Points
from saliency.errors import InvalidOptionError
from saliency.methods.base import Method
from saliency.targets import Target
from saliency.validation import require_float, require_int

# Relative and absolute tolerance of "the L1 distance reached its target" (PAIR's EPSILON).
_CLOSE = 1e-9


@dataclass(frozen=True)
class GuidedIG(Method):
    r"""Attribution along an adaptive path: at each step, move the features of smallest |∂f|.

    At step k of m the path has covered a fraction k/m of the L1 distance from the baseline x′
    to x: it moves the ``fraction`` of features with the smallest absolute gradient (those that
    change f least) towards x, each kept within ``max_dist`` (in units of the straight line's
    α) of the straight path, and attributes

    .. math:: a = \sum_{k} \big(x^{(k+1)} - x^{(k)}\big) \odot \nabla f_t\big(x^{(k)}\big),
              \qquad \sum_i a_i \approx f_t(x) - f_t(x')

    ``max_dist=0`` or ``fraction=1`` is integrated gradients (left Riemann sum). One gradient
    pass per step, batched over the samples; the path state is kept in float64, as PAIR
    saliency's reference implementation does. Kapishnikov, Venugopalan, Avci, Wedin, Terry &
    Birdal (2021), "Guided Integrated Gradients: an Adaptive Path Method for Removing Noise",
    CVPR, arXiv:2106.09788.

    ``create_graph=True`` is refused: the path is chosen by ranking gradients.

    Options:
        steps: gradient passes m (PAIR's default: 200).
        fraction: the fraction of features moved in each inner iteration.
        max_dist: how far (in α) a feature may run ahead of the straight path, in [0, 1].
        baseline: a number, a tensor broadcastable to the inputs, ``"blur"`` or
            ``"uniform noise"`` (as for integrated gradients).
        seed: seed of the ``"uniform noise"`` baseline.
    """

    supports_create_graph: ClassVar[bool] = False

    steps: int = 200
    fraction: float = 0.25
    max_dist: float = 0.02
    baseline: BaselineSpec = 0.0
    seed: int = 0

    paper = "Kapishnikov et al. 2021, arXiv:2106.09788"

    def __post_init__(self) -> None:
        require_int("steps", self.steps, 1)
        require_float("fraction", self.fraction, 0.0, exclusive=True, maximum=1.0)
        require_float("max_dist", self.max_dist, 0.0, maximum=1.0)
        require_int("seed", self.seed, 0)
        if isinstance(self.baseline, str) and self.baseline not in BASELINE_NAMES:
            raise InvalidOptionError(
                f"baseline={self.baseline!r}; accepted names: {', '.join(BASELINE_NAMES)}, or a "
                "number or tensor"
            )

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        if engine.create_graph:
            raise InvalidOptionError(
                "guided_ig does not support create_graph=True: its path is chosen by ranking "
                "gradients, which has no useful derivative; use integrated_gradients or blur_ig"
            )
        end = inputs.detach().flatten(1).double()
        start = make_baseline(self.baseline, inputs.detach(), self.seed).flatten(1).double()
        x = start.clone()
        attributions = torch.zeros_like(end)
        total = (end - start).abs().sum(1)
        for step in range(self.steps):
            points = x.to(inputs.dtype).view(inputs.shape)
            gradient = engine.accumulate(Points.of(points), target).flatten(1).double()
            x = self._step(x, start, end, total, gradient, step, attributions)
        return attributions.view(inputs.shape).to(inputs.dtype)

    def _step(
        self,
        x: Tensor,
        start: Tensor,
        end: Tensor,
        total: Tensor,
        gradient: Tensor,
        step: int,
        attributions: Tensor,
    ) -> Tensor:
        """Move ``x`` one step along the guided path; add (Δx ⊙ ∇f) to ``attributions``."""
        alpha = (step + 1) / self.steps
        alpha_min, alpha_max = max(alpha - self.max_dist, 0.0), min(alpha + self.max_dist, 1.0)
        diff = end - start
        x_min, x_max = start + alpha_min * diff, start + alpha_max * diff
        # The L1 distance to x after this step.
        goal = total * (1 - (step + 1) / self.steps)
        # Samples already at the input (x = x′) get no attribution.
        active = total > 0
        selected_count = max(1, math.floor(self.fraction * (x.shape[1] - 1)) + 1)
        while bool(active.any()):
            old = x
            progress = torch.where(diff != 0, (x - start) / diff, torch.full_like(x, alpha_max))
            x = torch.where(active[:, None] & (progress < alpha_min), x_min, x)
            current = (x - end).abs().sum(1)
            close = (current - goal).abs() <= torch.maximum(
                _CLOSE * torch.maximum(current.abs(), goal.abs()), torch.full_like(current, _CLOSE)
            )
            moving = active & ~close
            # The features of smallest |gradient| among those not yet at x_max move first:
            # "fraction" is a quantile (lower interpolation) over all features, as in PAIR.
            magnitude = torch.where(x == x_max, torch.inf, gradient.abs())
            threshold = magnitude.kthvalue(selected_count, dim=1, keepdim=True).values
            chosen = (magnitude <= threshold) & (magnitude != torch.inf) & moving[:, None]
            reach = ((x - x_max).abs() * chosen).sum(1)
            gamma = torch.where(reach > 0, (current - goal) / reach, torch.inf)
            step_to = torch.where(
                (gamma > 1)[:, None], x_max, x + gamma.clamp(max=1)[:, None] * (x_max - x)
            )
            x = torch.where(chosen, step_to, x)
            attributions += (x - old) * gradient
            # Not there yet: again with the features left (none left: nothing can move).
            active = moving & (gamma > 1) & (reach > 0)
        return x
