"""XGrad-CAM: gradients averaged with the activations' own spatial distribution as weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saliency.engine import Chunk
from saliency.methods.gradcam import GradCAM


@dataclass(frozen=True)
class XGradCAM(GradCAM):
    r"""Grad-CAM with each gradient weighted by its activation's share of the channel's sum.

    .. math:: L = \mathrm{ReLU}\Big(\sum_k \alpha_k A^k\Big),\quad
              \alpha_k = \sum_{u,v} \frac{A^k_{uv}}{\sum_{a,b} A^k_{ab}}\,
              \frac{\partial f_t}{\partial A^k_{uv}}

    (α_k = 0 for a channel whose sum is 0). The weights that best satisfy the paper's
    sensitivity and conservation axioms. Fu et al. (2020), "Axiom-based Grad-CAM: Towards
    Accurate Visualization and Explanation of CNNs", BMVC, arXiv:2008.02312.

    Options:
        layer: as for ``gradcam``.
        relu: as for ``gradcam``.
    """

    paper = "Fu et al. 2020, arXiv:2008.02312"

    def channel_weights(self, chunk: Chunk) -> Tensor:
        activations = chunk.activations
        assert activations is not None
        total = activations.sum(dim=(2, 3), keepdim=True)
        weighted = (chunk.grads * activations).sum(dim=(2, 3), keepdim=True)
        nonzero = total != 0
        return torch.where(nonzero, weighted / torch.where(nonzero, total, 1), 0)
