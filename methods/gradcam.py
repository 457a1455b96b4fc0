"""Grad-CAM, and the CAM mechanism its variants share: a layer, channel weights, a map."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saliency.engine import Chunk, Engine, Points, Share
from saliency.errors import LayerNotFoundError
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

    The CAM family reuses this class: a gradient variant overrides :meth:`channel_weights`
    (weights of any shape that broadcasts against the activations, e.g. one per element);
    a variant whose weights come from forward passes overrides :meth:`attribute` and keeps
    :meth:`resolve_layer`, :meth:`combine` and :meth:`finish`.
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

    def combine(self, weights: Tensor, activations: Tensor) -> Tensor:
        """The map at the layer's resolution, ``(m, 1, h, w)``: Σ_k weights ⊙ A^k."""
        return (weights * activations).sum(dim=1, keepdim=True)

    def needs_graph(self) -> bool:
        """Whether :meth:`channel_weights` differentiates the gradients again."""
        return False

    def share(self, engine: Engine, inputs: Tensor) -> Share | None:
        # Weights from higher derivatives need the graph of the gradients even when the caller
        # does not ask for one: such a call runs its own pass (see :meth:`attribute`).
        if self.needs_graph() and not engine.create_graph:
            return None
        layer = self.resolve_layer(engine, inputs)
        size = inputs.shape[-2:]

        def cam(chunk: Chunk) -> Tensor:
            assert chunk.activations is not None
            return self.finish(self.combine(self.channel_weights(chunk), chunk.activations), size)

        return Share(layer, cam, finish=lambda maps: maps.to(inputs.dtype))

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        share = self.share(engine, inputs)
        if share is not None:
            return engine.share_pass(inputs, target, [share])[0]
        # A pass of its own with the graph of the gradients; the maps are detached chunk by
        # chunk, so memory stays bounded.
        layer = self.resolve_layer(engine, inputs)
        size = inputs.shape[-2:]

        def cam(chunk: Chunk) -> Tensor:
            assert chunk.activations is not None
            weights = self.channel_weights(chunk)
            return self.finish(self.combine(weights, chunk.activations), size).detach()

        runner = engine.with_options(create_graph=True)
        maps = runner.accumulate(Points.of(inputs), target, cam, layer=layer)
        return maps.to(inputs.dtype)

    def finish(self, maps: Tensor, size: torch.Size) -> Tensor:
        """ReLU (if ``relu``) and bilinear upsampling of ``(m, 1, h, w)`` maps to ``size``."""
        # bf16/fp16 activations are upsampled in float32; float64 stays float64.
        maps = maps.to(torch.promote_types(maps.dtype, torch.float32))
        if self.relu:
            maps = F.relu(maps)
        return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)

    def resolve_layer(self, engine: Engine, inputs: Tensor) -> nn.Module:
        """The hooked module: ``layer`` itself, or the automatic choice for these inputs."""
        return engine.find_layer(self.layer, inputs)

    def layer_maps(self, engine: Engine, inputs: Tensor, target: Target) -> tuple[Tensor, Tensor]:
        """The resolved layer's ``(N, C, h, w)`` output and the target scores at ``inputs``,
        for variants whose weights come from forward passes."""
        layer = self.resolve_layer(engine, inputs)
        activations, scores = engine.layer_outputs(inputs, layer, target)
        if activations.ndim != 4:
            raise LayerNotFoundError(
                f"layer {type(layer).__name__} outputs shape {tuple(activations.shape)}; a class "
                "activation map needs an (N, C, h, w) map"
            )
        return activations, scores

    def resolved_options(self, engine: Engine, inputs: Tensor) -> dict[str, Any]:
        """The options, with ``layer`` as the dotted name of the module that was used."""
        layer = self.resolve_layer(engine, inputs)  # remembered: no second forward pass
        assert isinstance(engine.model, nn.Module)
        name = next(n for n, m in engine.model.named_modules() if m is layer)
        return {**self.options(), "layer": name}
