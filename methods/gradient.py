"""Vanilla gradient saliency."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from saliency.engine import Engine, Share
from saliency.methods.base import Method
from saliency.targets import Target


@dataclass(frozen=True)
class Gradient(Method):
    r"""Gradient of the target score with respect to each input feature.

    .. math:: a_i(x) = \frac{\partial f_t(x)}{\partial x_i}

    Raw and signed (captum's ``Saliency`` takes ``abs`` by default; rendering does that here).
    Simonyan, Vedaldi & Zisserman (2014), "Deep Inside Convolutional Networks: Visualising Image
    Classification Models and Saliency Maps", arXiv:1312.6034.
    """

    paper = "Simonyan et al. 2014, arXiv:1312.6034"

    def share(self, engine: Engine, inputs: Tensor) -> Share:
        return Share()

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        return engine.share_pass(inputs, target, [self.share(engine, inputs)])[0]
