"""Gradient-weighted attention relevance for vision transformers (Chefer et al.)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saliency.attention import (
    attention_stack,
    class_token_map,
    has_global_attention,
    record_attention,
    require_module,
)
from saliency.engine import Chunk, Engine, Points
from saliency.methods.base import Method
from saliency.targets import Target
from saliency.validation import require_int


@dataclass(frozen=True)
class TransformerAttribution(Method):
    r"""Relevance of the patches for the target, from attention weighted by its gradient.

    .. math:: \bar A_l = \mathbb{E}_h\big[(\nabla_{A_l} f_t \odot A_l)^+\big],\quad
              R_0 = I,\quad R_l = R_{l-1} + \bar A_l R_{l-1},\quad
              L_{uv} = (R_L)_{\mathrm{cls},\,(u,v)}

    with :math:`A_l` the attention probabilities of layer l (per head) and
    :math:`\nabla_{A_l} f_t` the gradient of the target score with respect to them; the class
    token's row over the patch tokens (class, distillation and register tokens left out),
    upsampled bilinearly (``align_corners=False``) to the input's H×W, shape ``(N, 1, H, W)``.
    Class-specific, unlike attention rollout. The self-attention rule of Chefer, Gur & Wolf
    (2021), "Generic Attention-model Explainability for Interpreting Bi-Modal and
    Encoder-Decoder Transformers", ICCV, arXiv:2103.15679 — the gradient-weighted attention of
    their CVPR 2021 "Transformer Interpretability Beyond Attention Visualization"
    (arXiv:2012.09838), without its LRP relevance term.

    One forward and one backward per chunk; the attention is recorded whatever the
    implementation (:func:`saliency.attention.record_attention`).

    Options:
        start_layer: the first layer whose attention enters the product (earlier layers count
            as the identity).
    """

    start_layer: int = 0

    output = "layer"
    paper = "Chefer et al. 2021, arXiv:2103.15679"

    def __post_init__(self) -> None:
        require_int("start_layer", self.start_layer, 0)

    @classmethod
    def applies_to(cls, model: object) -> bool:
        return has_global_attention(model)

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        model = require_module(engine.model, "transformer_attribution")
        size = (inputs.shape[-2], inputs.shape[-1])

        def relevance(chunk: Chunk) -> Tensor:
            maps = attention_stack(chunk.recorded, len(chunk.points), "transformer_attribution")
            joint: Tensor | None = None
            for attention, grad in list(zip(maps, chunk.recorded_grads, strict=True))[
                self.start_layer :
            ]:
                dtype = torch.promote_types(attention.dtype, torch.float32)
                weighted = (grad.to(dtype) * attention.to(dtype)).clamp(min=0).mean(1)
                if joint is None:
                    eye = torch.eye(weighted.shape[-1], dtype=dtype, device=weighted.device)
                    joint = eye.expand_as(weighted)
                joint = joint + weighted @ joint
            if joint is None:  # start_layer past the last layer: R = I
                eye = torch.eye(maps[0].shape[-1], dtype=torch.float32, device=inputs.device)
                joint = eye.expand(len(chunk.points), -1, -1)
            return class_token_map(model, joint, size)

        with record_attention(model) as record:
            maps = engine.accumulate(Points.of(inputs), target, relevance, recorder=record)
        return maps.to(inputs.dtype)
