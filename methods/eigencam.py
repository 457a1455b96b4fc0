"""Eigen-CAM: the layer's activations projected on their first principal component."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from saliency.engine import Engine
from saliency.methods.gradcam import GradCAM
from saliency.targets import Target


@dataclass(frozen=True)
class EigenCAM(GradCAM):
    r"""The activations at each position projected on their first principal component.

    .. math:: L = \mathrm{ReLU}\big(\bar A\, v_1\big),\quad
              \bar A_{(uv),k} = A^k_{uv} - \frac{1}{hw}\sum_{a,b} A^k_{ab}

    with v₁ the first right singular vector of the centred hw × C matrix Ā, per sample.
    Class-agnostic (the target is not used) and gradient-free: one forward pass. A singular
    vector's sign is arbitrary; here Σ_k v₁k ≥ 0, so that the map correlates positively with
    the centred sum of the channels (where the layer is more active than on average is
    positive; p · Ā1 = σ₁² Σ_k v₁k). Muhammad & Yeasin (2020), "Eigen-CAM: Class Activation
    Map using Principal Components", IJCNN, arXiv:2008.00299.

    Options:
        layer: as for ``gradcam``.
        relu: as for ``gradcam``.
    """

    derivative_order: ClassVar[int] = 0
    paper = "Muhammad & Yeasin 2020, arXiv:2008.00299"

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        activations, _ = self.layer_maps(engine, inputs, target)
        return self.finish(principal_projection(activations), inputs.shape[-2:]).to(inputs.dtype)


def principal_projection(activations: Tensor) -> Tensor:
    """``(N, C, h, w)`` activations → ``(N, 1, h, w)`` projections on the first component."""
    n, _, h, w = activations.shape
    values = activations.to(torch.promote_types(activations.dtype, torch.float32))
    positions = values.flatten(2).transpose(1, 2)  # (N, hw, C)
    centred = positions - positions.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    first = vh[:, 0]
    first = torch.where(first.sum(dim=1, keepdim=True) < 0, -first, first)
    return (centred @ first.unsqueeze(2)).view(n, 1, h, w)
