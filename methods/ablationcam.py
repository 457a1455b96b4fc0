"""Ablation-CAM: channel weights from the drop of the score when a channel is switched off."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from saliency.engine import Engine, Points
from saliency.errors import LayerNotFoundError
from saliency.layers import layer_layout, primary_output, with_primary_output
from saliency.methods.gradcam import GradCAM
from saliency.targets import Target
from saliency.tokens import Layout


@dataclass(frozen=True)
class AblationCAM(GradCAM):
    r"""Channel weights from how much the target score drops when the channel is zeroed.

    .. math:: L = \mathrm{ReLU}\Big(\sum_k w_k A^k\Big),\quad
              w_k = \frac{f_t(x) - f_t(x \mid A^k = 0)}{f_t(x)}

    (w = 0 where f_t(x) = 0). Channel k is zeroed at the layer by a forward hook scoped to
    each chunk of the N·C ablated passes, which the engine runs memory-bounded and without
    gradients (unless ``create_graph``): C forward passes per sample. pytorch-grad-cam also
    sets ablated channels to 0, except for layers without a zero anywhere in the batch,
    where it uses min − 10⁷. On a token layer channel k is feature k of every token (see
    :func:`ablating`). Desai & Ramaswamy (2020), "Ablation-CAM: Visual Explanations
    for Deep Convolutional Network via Gradient-free Localization", WACV,
    doi:10.1109/WACV45572.2020.9093360.

    Options:
        layer: as for ``gradcam``.
        relu: as for ``gradcam``.
    """

    derivative_order: ClassVar[int] = 0
    paper = "Desai & Ramaswamy 2020, doi:10.1109/WACV45572.2020.9093360"

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        layer = self.resolve_layer(engine, inputs)
        activations, scores = self.layer_maps(engine, inputs, target)
        channel_axis = _channel_axis(layer_layout(layer))
        samples, channels = activations.shape[:2]
        points = Points(
            samples, channels, inputs.shape[1:], inputs.device, lambda i: inputs[i // channels]
        )
        ablated = engine.scores(
            points, target, edit=lambda index: ablating(layer, index % channels, channel_axis)
        ).view(samples, channels)
        base = scores[:, None]
        nonzero = base != 0
        weights = torch.where(nonzero, (base - ablated) / torch.where(nonzero, base, 1), 0)
        maps = self.combine(weights[..., None, None], activations)
        return self.finish(maps, inputs.shape[-2:]).to(inputs.dtype)


def _channel_axis(layout: Layout | None) -> int:
    """Where a layer output keeps its channels: ``(N, C, h, w)``; ``(N, h, w, C)`` and token
    sequences ``(N, L, D)`` last."""
    return 1 if layout is None or layout.kind == "channels_first" else -1


@contextmanager
def ablating(layer: nn.Module, channels: Tensor, axis: int = 1) -> Iterator[None]:
    """Inside the block, row i of ``layer``'s output has channel ``channels[i]`` (along
    ``axis``) set to 0. For a token layer that is feature ``channels[i]`` of every token,
    prefix tokens included: the layer's channel is switched off, not only its map's (as
    pytorch-grad-cam's ``AblationLayerVit`` does)."""

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        value = primary_output(output)
        if value is None or value.ndim not in (3, 4) or len(value) != len(channels):
            shape = tuple(value.shape) if value is not None else type(output).__name__
            raise LayerNotFoundError(
                f"Ablation-CAM zeroes channels of an (N, C, h, w), (N, h, w, C) or (N, L, D) "
                f"layer output; layer {type(layer).__name__} returned {shape} for "
                f"{len(channels)} inputs"
            )
        count = value.shape[axis]
        off = torch.arange(count, device=value.device) == channels[:, None]  # (m, C)
        broadcast = [len(channels)] + [1] * (value.ndim - 1)
        broadcast[axis] = count
        return with_primary_output(output, value.masked_fill(off.view(broadcast), 0))

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
