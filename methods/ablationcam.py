"""Ablation-CAM: channel weights from the drop of the score when a channel is switched off."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from saliency.attention import is_attention_module
from saliency.engine import Engine, Points
from saliency.errors import LayerNotFoundError
from saliency.methods.gradcam import GradCAM
from saliency.targets import Target


@dataclass(frozen=True)
class AblationCAM(GradCAM):
    r"""Channel weights from how much the target score drops when the channel is zeroed.

    .. math:: L = \mathrm{ReLU}\Big(\sum_k w_k A^k\Big),\quad
              w_k = \frac{f_t(x) - f_t(x \mid A^k = 0)}{f_t(x)}

    (w = 0 where f_t(x) = 0). Channel k is zeroed at the layer by a forward hook scoped to
    each chunk of the N·C ablated passes, which the engine runs memory-bounded and without
    gradients (unless ``create_graph``): C forward passes per sample. pytorch-grad-cam also
    sets ablated channels to 0, except for layers without a zero anywhere in the batch,
    where it uses min − 10⁷. Desai & Ramaswamy (2020), "Ablation-CAM: Visual Explanations
    for Deep Convolutional Network via Gradient-free Localization", WACV,
    doi:10.1109/WACV45572.2020.9093360.

    Options:
        layer: as for ``gradcam``.
        relu: as for ``gradcam``.
    """

    derivative_order: ClassVar[int] = 0
    paper = "Desai & Ramaswamy 2020, doi:10.1109/WACV45572.2020.9093360"

    @classmethod
    def applies_to(cls, model: object) -> bool:
        # Zeroing channels needs a spatial (N, C, h, w) layer output: not a transformer's tokens.
        return not (
            isinstance(model, nn.Module) and any(is_attention_module(m) for m in model.modules())
        )

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        layer = self.resolve_layer(engine, inputs)
        activations, scores = self.layer_maps(engine, inputs, target)
        samples, channels = activations.shape[:2]
        points = Points(
            samples, channels, inputs.shape[1:], inputs.device, lambda i: inputs[i // channels]
        )
        ablated = engine.scores(
            points, target, edit=lambda index: ablating(layer, index % channels)
        ).view(samples, channels)
        base = scores[:, None]
        nonzero = base != 0
        weights = torch.where(nonzero, (base - ablated) / torch.where(nonzero, base, 1), 0)
        maps = self.combine(weights[..., None, None], activations)
        return self.finish(maps, inputs.shape[-2:]).to(inputs.dtype)


@contextmanager
def ablating(layer: nn.Module, channels: Tensor) -> Iterator[None]:
    """Inside the block, row i of ``layer``'s ``(m, C, h, w)`` output has channel
    ``channels[i]`` set to 0."""

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Tensor:
        if not (isinstance(output, Tensor) and output.ndim == 4 and len(output) == len(channels)):
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise LayerNotFoundError(
                f"Ablation-CAM zeroes channels of an (N, C, h, w) layer output; layer "
                f"{type(layer).__name__} returned {shape} for {len(channels)} inputs"
            )
        off = torch.arange(output.shape[1], device=output.device) == channels[:, None]
        return output.masked_fill(off[:, :, None, None], 0)

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
