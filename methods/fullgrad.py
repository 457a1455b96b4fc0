"""FullGrad: input-gradient and bias-gradient maps of every convolution and batch norm, summed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saliency.engine import Chunk, Engine, Points
from saliency.errors import LayerNotFoundError
from saliency.methods.base import Method
from saliency.targets import Target

# pytorch-grad-cam's ε in the per-channel normalisation (x − min) / (max(x − min) + ε).
_EPS = 1e-7


@dataclass(frozen=True)
class FullGrad(Method):
    r"""The input-gradient map plus the bias-gradient maps of every Conv2d and BatchNorm2d.

    .. math:: L = \sum_c \psi\big(|x_c \odot \nabla_{x_c} f_t|\big)
              + \sum_{l} \sum_{c} U\Big(\psi\big(|b^l_c\, \nabla_{z^l_c} f_t|\big)\Big)

    where z^l is the output of layer l (each ``nn.Conv2d`` and ``nn.BatchNorm2d`` with a bias;
    a batch norm's bias is its eval-mode offset β − γμ/√(σ² + ε)), ψ rescales each sample's
    channel to [0, 1] by (v − min v) / (max(v − min v) + 10⁻⁷) as pytorch-grad-cam does, and U
    upsamples bilinearly (``align_corners=False``). The full-gradient representation this
    summarises is complete for ReLU networks, f_t = ∇_x f_t · x + Σ_l ∇_{b^l} f_t · b^l over
    all biases. No ``layer`` option: every bias layer counts. One forward and backward pass;
    the gradients at the layers are read by tensor hooks during the engine's backward.
    Srinivas & Fleuret (2019), "Full-Gradient Representation for Neural Network
    Visualization", NeurIPS, arXiv:1905.00780.
    """

    output = "layer"
    paper = "Srinivas & Fleuret 2019, arXiv:1905.00780"
    compiles = False

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        model = engine.model
        if not isinstance(model, nn.Module):
            raise LayerNotFoundError(
                f"FullGrad needs an nn.Module model to hook its bias layers, got "
                f"{type(model).__name__}"
            )
        layers = [m for m in model.modules() if _bias(m) is not None]
        size = inputs.shape[-2:]

        with _bias_gradients(model, layers) as taps:

            def maps(chunk: Chunk) -> Tensor:
                total = _normalised((chunk.points * chunk.grads).abs()).sum(dim=1, keepdim=True)
                for tap in taps:
                    if tap.grad is not None:
                        per_layer = _normalised((tap.bias * tap.grad).abs()).sum(1, keepdim=True)
                        total = total + F.interpolate(
                            per_layer, size=size, mode="bilinear", align_corners=False
                        )
                return total

            # Tensor hooks inside a compiled forward would break its graph: run eagerly.
            runner = engine.with_options(compile=False) if engine.compile else engine
            return runner.accumulate(Points.of(inputs), target, maps).to(inputs.dtype)


@dataclass
class _Tap:
    """One bias layer's call in the current forward pass."""

    bias: Tensor
    grad: Tensor | None = field(default=None)


@contextmanager
def _bias_gradients(model: nn.Module, layers: list[nn.Module]) -> Iterator[list[_Tap]]:
    """Record, for each call of ``layers`` in the latest forward pass with gradients, the
    layer's bias ``(1, C, 1, 1)`` and (once the backward has run) ∂score/∂output."""
    taps: list[_Tap] = []

    def start(_module: nn.Module, _inputs: Any) -> None:
        taps.clear()  # a new forward pass (also after a chunk retried for memory)

    def record(module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, Tensor) and output.ndim == 4 and output.requires_grad:
            bias = _bias(module)
            assert bias is not None
            tap = _Tap(bias.view(1, -1, 1, 1))
            # Registered before any in-place op that follows (ReLU(inplace=True)): the hook
            # receives the gradient with respect to this output as the layer returned it.
            output.register_hook(lambda grad: setattr(tap, "grad", grad))
            taps.append(tap)

    handles = [model.register_forward_pre_hook(start)]
    try:
        handles += [layer.register_forward_hook(record) for layer in layers]
        yield taps
    finally:
        for handle in handles:
            handle.remove()


def _bias(module: nn.Module) -> Tensor | None:
    """The layer's bias (a batch norm's eval-mode offset), or None if it has none."""
    if isinstance(module, nn.Conv2d):
        return module.bias
    if isinstance(module, nn.BatchNorm2d) and module.bias is not None:
        if module.running_mean is None or module.running_var is None:
            return module.bias
        scale = module.running_var.add(module.eps).rsqrt()
        if module.weight is not None:
            scale = scale * module.weight
        return module.bias - module.running_mean * scale
    return None


def _normalised(maps: Tensor) -> Tensor:
    """Each ``(sample, channel)`` map of ``(m, C, h, w)`` rescaled to [0, 1] (pytorch-grad-cam's
    ψ, with its ε), in float32 at least."""
    maps = maps.to(torch.promote_types(maps.dtype, torch.float32))
    flat = maps.flatten(2)
    shifted = flat - flat.amin(dim=2, keepdim=True)
    return (shifted / (shifted.amax(dim=2, keepdim=True) + _EPS)).view_as(maps)
