"""Grad-CAM: class activation maps weighted by spatially averaged gradients."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saliency.engine import Chunk, Engine, Share
from saliency.layers import find_layer
from saliency.methods.base import Method
from saliency.targets import Target
from saliency.validation import require_bool


@dataclass(frozen=True)
class GradCAM(Method):
    r"""Feature maps of a layer weighted by their spatially averaged gradients.

    .. math:: L = \mathrm{ReLU}\Big(\sum_k \alpha_k A^k\Big),\quad
              \alpha_k = \frac{1}{hw} \sum_{u,v} \frac{\partial f_t}{\partial A^k_{uv}}

    upsampled bilinearly (``align_corners=False``) to the input's H×W; shape ``(N, 1, H, W)``.
    Selvaraju et al. (2017), "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization", ICCV, arXiv:1610.02391.

    Options:
        layer: a dotted module name, a module, or ``None`` for the last module whose output is
            an ``(N, C, h, w)`` map with h·w > 1.
        relu: keep only positive evidence (the paper's definition).
    """

    layer: str | nn.Module | None = None
    relu: bool = True

    output = "layer"
    paper = "Selvaraju et al. 2017, arXiv:1610.02391"

    def __post_init__(self) -> None:
        require_bool("relu", self.relu)

    def channel_weights(self, chunk: Chunk) -> Tensor:
        """α_k per point and channel, shape ``(m, C, 1, 1)``."""
        return chunk.grads.mean(dim=(2, 3), keepdim=True)

    def share(self, engine: Engine, inputs: Tensor) -> Share:
        signature = (inputs.shape[1:], inputs.dtype, inputs.device, engine.precision)
        layer = find_layer(engine.model, self.layer, lambda: engine.forward(inputs[:1]), signature)
        size = inputs.shape[-2:]

        def cam(chunk: Chunk) -> Tensor:
            assert chunk.activations is not None
            weights = self.channel_weights(chunk)
            maps = (weights * chunk.activations).sum(dim=1, keepdim=True)
            # bf16/fp16 activations are upsampled in float32; float64 stays float64.
            maps = maps.to(torch.promote_types(maps.dtype, torch.float32))
            if self.relu:
                maps = F.relu(maps)
            return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)

        return Share(layer, cam, finish=lambda maps: maps.to(inputs.dtype))

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        return engine.share_pass(inputs, target, [self.share(engine, inputs)])[0]
