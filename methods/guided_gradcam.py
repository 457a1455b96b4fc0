"""Guided Grad-CAM: guided backpropagation weighted by the upsampled Grad-CAM map."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from saliency.engine import Engine
from saliency.methods.base import Method
from saliency.methods.gradcam import GradCAM
from saliency.methods.guided_backprop import GuidedBackprop
from saliency.targets import Target


@dataclass(frozen=True)
class GuidedGradCAM(Method):
    r"""Guided backpropagation times the Grad-CAM map upsampled to the input (bilinear).

    .. math:: a(x) = \frac{\partial^{GB} f_t}{\partial x} \odot
              \mathrm{up}\Big(\mathrm{ReLU}\big(\textstyle\sum_k \alpha_k A^k\big)\Big)

    shape ``(N, C, H, W)``: the CAM ``(N, 1, H, W)`` (upsampled bilinearly,
    ``align_corners=False``) weights every channel. Equals captum's
    ``GuidedGradCam(interpolate_mode="bilinear")`` where captum's guided backprop is right
    (``nn.ReLU`` modules). Selvaraju et al. (2017), "Grad-CAM: Visual Explanations from Deep
    Networks via Gradient-based Localization", ICCV, arXiv:1610.02391.

    Options:
        layer: Grad-CAM's layer: a dotted module name, a module, or ``None`` for the last
            module whose output is an ``(N, C, h, w)`` map with h·w > 1.
    """

    layer: str | nn.Module | None = None

    paper = "Selvaraju et al. 2017, arXiv:1610.02391"
    compiles = False
    needs_module = True

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        # Grad-CAM first: its pass at the inputs also completes a pending (argmax) target.
        cam = GradCAM(layer=self.layer, relu=True).attribute(engine, inputs, target)
        return GuidedBackprop().attribute(engine, inputs, target) * cam
