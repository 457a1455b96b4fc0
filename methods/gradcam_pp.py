"""Grad-CAM++: pixel-wise weights of the positive gradients, closed form or exact."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from saliency.engine import Chunk
from saliency.methods.gradcam import GradCAM
from saliency.validation import require_bool


@dataclass(frozen=True)
class GradCAMPlusPlus(GradCAM):
    r"""Grad-CAM with each channel weighted by its positive gradients, pixel by pixel.

    .. math:: L = \mathrm{ReLU}\Big(\sum_k w_k A^k\Big),\quad
              w_k = \sum_{u,v} \alpha^k_{uv}\, \mathrm{ReLU}(g^k_{uv}),\quad
              \alpha^k_{uv} = \frac{D_2}{2 D_2 + \sum_{a,b} A^k_{ab}\, D_3}

    with g = ∂f_t/∂A^k_uv and, by default, the paper's closed form D₂ = g², D₃ = g³ (α = 0
    where g = 0). The paper derives α for Y = exp(f_t), with D_n = exp(−f_t) ∂ⁿY/∂(A^k_uv)ⁿ;
    that is the closed form when f_t is linear in A (a ReLU network after the layer, almost
    everywhere). ``exact=True`` computes the true derivatives,

    .. math:: D_2 = g^2 + \frac{\partial^2 f_t}{\partial (A^k_{uv})^2},\quad
              D_3 = g^3 + 3g\,\frac{\partial^2 f_t}{\partial (A^k_{uv})^2}
                  + \frac{\partial^3 f_t}{\partial (A^k_{uv})^3}

    by double and triple backward passes, two per activation element (C·h·w of them per
    chunk: meant for small layers and analysis). The two differ wherever f_t curves in A: a
    smooth head (Softplus, GELU, attention), or a probability target. Unlike
    pytorch-grad-cam, the closed form adds no ε = 1e-6 to the denominator: that changes α by
    about ε / (2g²), per cents where |g| ≈ 1e-3…1e-2 (random-init torchvision models).
    Chattopadhay et al. (2018), "Grad-CAM++: Generalized Gradient-based Visual Explanations
    for Deep Convolutional Networks", WACV, arXiv:1710.11063.

    Options:
        layer: as for ``gradcam``.
        relu: as for ``gradcam``.
        exact: α from the true second and third derivatives instead of the closed form.
    """

    exact: bool = False

    paper = "Chattopadhay et al. 2018, arXiv:1710.11063"

    def __post_init__(self) -> None:
        super().__post_init__()
        require_bool("exact", self.exact)

    def needs_graph(self) -> bool:
        return self.exact

    def channel_weights(self, chunk: Chunk) -> Tensor:
        grads, activations = chunk.grads, chunk.activations
        assert activations is not None
        if self.exact:
            second, third = diagonal_derivatives(grads, activations)
            d2, d3 = grads.square() + second, grads.pow(3) + 3 * grads * second + third
        else:
            d2, d3 = grads.square(), grads.pow(3)
        denominator = 2 * d2 + activations.sum(dim=(2, 3), keepdim=True) * d3
        defined = (d2 != 0) & (denominator != 0)
        # A safe denominator where α is undefined keeps NaN out of second-order gradients.
        alpha = torch.where(defined, d2 / torch.where(defined, denominator, 1), 0)
        return (alpha * F.relu(grads)).sum(dim=(2, 3), keepdim=True)


def diagonal_derivatives(grads: Tensor, activations: Tensor) -> tuple[Tensor, Tensor]:
    r""":math:`\partial^2 f / \partial a_j^2` and :math:`\partial^3 f / \partial a_j^3` for every
    element j of ``activations``, from ``grads`` = ∂f/∂a computed with ``create_graph``.

    One double and one triple backward pass per element (samples batched): a diagonal needs
    one pass per element. Zero where f is linear in the activations.
    """
    if not grads.requires_grad:  # f is linear in the activations: no curvature
        return torch.zeros_like(activations), torch.zeros_like(activations)
    flat = grads.flatten(1)
    seconds, thirds = [], []
    for j in range(flat.shape[1]):
        seconds.append(_derivative(flat[:, j], activations, j))
        thirds.append(_derivative(seconds[-1], activations, j))
    return (
        torch.stack(seconds, dim=1).view_as(activations),
        torch.stack(thirds, dim=1).view_as(activations),
    )


def _derivative(values: Tensor, activations: Tensor, j: int) -> Tensor:
    """∂ values_i / ∂ activations_i,j for each sample i (values: ``(m,)``), with its graph."""
    if not values.requires_grad:
        return torch.zeros_like(values)
    (row,) = torch.autograd.grad(
        values.sum(), activations, create_graph=True, retain_graph=True, materialize_grads=True
    )
    return row.flatten(1)[:, j]
