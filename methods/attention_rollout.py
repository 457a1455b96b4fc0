"""Attention rollout: attention accumulated over layers, with the residual connections."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from saliency.attention import (
    attention_stack,
    class_token_map,
    has_global_attention,
    record_attention,
    require_module,
)
from saliency.engine import Engine, Pass, Points
from saliency.methods.base import Method
from saliency.targets import Target
from saliency.validation import check_choice

HeadFusion = Literal["mean", "max", "min"]


@dataclass(frozen=True)
class AttentionRollout(Method):
    r"""Attention flowing from the class token to the patches, multiplied through the layers.

    .. math:: \tilde A_l = \mathrm{rownorm}\big(\tfrac12 \bar A_l + \tfrac12 I\big),\quad
              R = \tilde A_L \tilde A_{L-1} \cdots \tilde A_1,\quad
              L_{uv} = R_{\mathrm{cls},\,(u,v)}

    with :math:`\bar A_l` the attention probabilities of layer l averaged over heads (the
    identity stands for the residual connection); the class token's row over the patch tokens
    (class, distillation and register tokens left out), upsampled bilinearly
    (``align_corners=False``) to the input's H×W, shape ``(N, 1, H, W)``. Class-agnostic: the map
    does not depend on the target. Abnar & Zuidema (2020), "Quantifying Attention Flow in
    Transformers", ACL, arXiv:2005.00928.

    The attention is recorded whatever the implementation (fused
    ``scaled_dot_product_attention``, ``nn.MultiheadAttention``, timm, Hugging Face): see
    :func:`saliency.attention.record_attention`.

    Options:
        head_fusion: how heads are combined: ``"mean"`` (the paper), ``"max"`` or ``"min"``.
    """

    head_fusion: HeadFusion = "mean"

    output = "layer"
    paper = "Abnar & Zuidema 2020, arXiv:2005.00928"
    derivative_order: ClassVar[int] = 0

    def __post_init__(self) -> None:
        check_choice("head_fusion", self.head_fusion, HeadFusion)

    @classmethod
    def applies_to(cls, model: object) -> bool:
        return has_global_attention(model)

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        model = require_module(engine.model, "attention_rollout")
        size = (inputs.shape[-2], inputs.shape[-1])

        def rollout(chunk: Pass) -> Tensor:
            maps = attention_stack(chunk.recorded, len(chunk.points), "attention_rollout")
            joint: Tensor | None = None
            for attention in maps:
                fused = self.fuse(attention.to(torch.promote_types(attention.dtype, torch.float32)))
                eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
                step = 0.5 * fused + 0.5 * eye
                step = step / step.sum(-1, keepdim=True)
                joint = step if joint is None else step @ joint
            assert joint is not None
            return class_token_map(model, joint, size)

        with record_attention(model) as record:
            maps = engine.accumulate_forward(Points.of(inputs), target, rollout, record)
        return maps.to(inputs.dtype)

    def fuse(self, attention: Tensor) -> Tensor:
        """Heads combined: ``(m, heads, L, L)`` → ``(m, L, L)``."""
        if self.head_fusion == "max":
            return attention.amax(1)
        if self.head_fusion == "min":
            return attention.amin(1)
        return attention.mean(1)
