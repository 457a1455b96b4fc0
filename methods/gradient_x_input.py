"""Gradient times input."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from saliency.engine import Engine, Share
from saliency.methods.base import Method
from saliency.targets import Target


@dataclass(frozen=True)
class GradientXInput(Method):
    r"""The input times the gradient of the target score, feature by feature.

    .. math:: a_i(x) = x_i \, \frac{\partial f_t(x)}{\partial x_i}

    (integrated gradients from a zero baseline for a linear model; captum's ``InputXGradient``).
    Shrikumar, Greenside, Shcherbina & Kundaje (2016), "Not Just a Black Box: Learning Important
    Features Through Propagating Activation Differences", arXiv:1605.01713.
    """

    paper = "Shrikumar et al. 2016, arXiv:1605.01713"

    def share(self, engine: Engine, inputs: Tensor) -> Share:
        return Share(finish=lambda gradients: inputs * gradients)

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        return engine.share_pass(inputs, target, [self.share(engine, inputs)])[0]
