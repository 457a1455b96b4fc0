"""Score-CAM: channel weights from the scores of the input masked by each upsampled channel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from saliency.engine import Engine, Points
from saliency.methods.gradcam import GradCAM
from saliency.targets import Target


@dataclass(frozen=True)
class ScoreCAM(GradCAM):
    r"""Channel weights from the target scores of the input masked by each channel; no gradients.

    .. math:: L = \mathrm{ReLU}\Big(\sum_k w_k A^k\Big),\quad
              w = \mathrm{softmax}_k\big(f_t(x \odot M_k)\big),\quad
              M_k = \frac{U(A^k) - \min U(A^k)}{\max U(A^k) - \min U(A^k)}

    where U upsamples bilinearly to the input's H×W (``align_corners=False``, as the authors'
    code and as the maps themselves; pytorch-grad-cam's upsampler aligns corners) and
    M_k = 0 for a constant channel. The N·C masked inputs are built and scored chunk by chunk
    through the engine (memory-bounded, without gradients unless ``create_graph``), so the
    cost is C forward passes per sample. Wang et al. (2020), "Score-CAM: Score-Weighted
    Visual Explanations for Convolutional Neural Networks", CVPR Workshops,
    arXiv:1910.01279.

    Options:
        layer: as for ``gradcam``.
        relu: as for ``gradcam``.
    """

    derivative_order: ClassVar[int] = 0
    paper = "Wang et al. 2020, arXiv:1910.01279"

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        activations, _ = self.layer_maps(engine, inputs, target)
        samples, channels = activations.shape[:2]
        size = inputs.shape[-2:]

        def masked(index: Tensor) -> Tensor:
            sample = index // channels
            maps = activations[sample, index % channels].unsqueeze(1)
            maps = maps.to(torch.promote_types(maps.dtype, torch.float32))
            up = F.interpolate(maps, size=size, mode="bilinear", align_corners=False).flatten(1)
            low = up.amin(dim=1, keepdim=True)
            spread = up.amax(dim=1, keepdim=True) - low
            mask = torch.where(spread > 0, (up - low) / torch.where(spread > 0, spread, 1), 0)
            return inputs[sample] * mask.view(-1, 1, *size).to(inputs.dtype)

        points = Points(samples, channels, inputs.shape[1:], inputs.device, masked)
        scores = engine.scores(points, target).view(samples, channels)
        weights = torch.softmax(scores, dim=1)[..., None, None]
        return self.finish(self.combine(weights, activations), size).to(inputs.dtype)
