"""Attention inside a call: recorded for the attention methods, twice differentiable for
``create_graph``, and the switches this needs, always restored.

Fused attention (``torch.nn.functional.scaled_dot_product_attention``) never materialises the
attention probabilities, and its CPU/flash kernels have no double backward. So:

- :func:`differentiable_attention` runs every ``scaled_dot_product_attention`` through its math
  kernel (plain matrix products and a softmax, twice differentiable) inside the block — the path
  of ``create_graph=True`` (Hessian-vector products, Integrated Hessians, explanation
  fragility, Right-for-the-Right-Reasons training).
- :func:`record_attention` routes every attention of the model through one function that
  computes the probabilities explicitly and records them: timm modules computing attention by
  hand (``fused_attn=False``) and Hugging Face models on ``attn_implementation="eager"`` are
  switched to their ``scaled_dot_product_attention`` path for the call, ``nn.MultiheadAttention``
  (torchvision ViT) leaves its fused fast path, and ``torch.nn.functional``'s function is
  replaced by the recording one. Every switch is put back in ``finally``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from saliency.errors import LayerNotFoundError
from saliency.tokens import proportional_layout, token_metadata

__all__ = [
    "AttentionRecord",
    "attention_probabilities",
    "attention_stack",
    "class_token_map",
    "differentiable_attention",
    "has_global_attention",
    "is_attention_module",
    "record_attention",
    "require_module",
]


@contextmanager
def differentiable_attention() -> Iterator[None]:
    """Inside the block, ``scaled_dot_product_attention`` uses its math kernel: twice
    differentiable (the fused CPU and flash kernels have no double backward)."""
    with sdpa_kernel([SDPBackend.MATH]):
        yield


def is_attention_module(module: nn.Module) -> bool:
    """An attention layer: ``nn.MultiheadAttention``, a timm attention (``fused_attn``), or a
    class named ``...Attention`` (Hugging Face, torchvision Swin, timm windows)."""
    return (
        isinstance(module, nn.MultiheadAttention)
        or hasattr(module, "fused_attn")
        or type(module).__name__.endswith("Attention")
    )


def has_global_attention(model: object) -> bool:
    """Whether ``model`` has attention layers over the whole token sequence (not windows): what
    the attention methods need. Read from the module types, without running the model."""
    if not isinstance(model, nn.Module):
        return False
    layers = [m for m in model.modules() if is_attention_module(m)]
    return bool(layers) and not any("Window" in type(m).__name__ for m in layers)


@dataclass
class AttentionRecord:
    """The attention probabilities computed inside :func:`record_attention`, in call order.

    Each is ``(m, heads, L, S)``: row ``i`` holds the weights token ``i`` gives every token.
    """

    maps: list[Tensor] = field(default_factory=list)

    def take(self) -> list[Tensor]:
        """The maps recorded since the last call (and forget them)."""
        maps, self.maps = self.maps, []
        return maps


@contextmanager
def record_attention(model: nn.Module) -> Iterator[AttentionRecord]:
    """Record every attention probability matrix the model computes inside the block.

    The recorded maps are the tensors the model multiplies with the values, so gradients with
    respect to them are the gradients of the attention (Chefer et al. 2021).
    """
    record = AttentionRecord()
    original = F.scaled_dot_product_attention

    def recording(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attn_mask: Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> Tensor:
        weights = attention_probabilities(query, key, attn_mask, is_causal, scale, enable_gqa)
        record.maps.append(weights)
        if enable_gqa and key.shape[-3] != query.shape[-3]:
            value = value.repeat_interleave(query.shape[-3] // value.shape[-3], dim=-3)
        used = F.dropout(weights, dropout_p) if dropout_p > 0 else weights
        return used.to(value.dtype) @ value

    with ExitStack() as stack:
        stack.enter_context(_switched_to_sdpa(model))
        fast_path = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        stack.callback(torch.backends.mha.set_fastpath_enabled, fast_path)
        F.scaled_dot_product_attention = recording
        stack.callback(setattr, F, "scaled_dot_product_attention", original)
        yield record


def attention_probabilities(
    query: Tensor,
    key: Tensor,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    r"""The probabilities of ``scaled_dot_product_attention``, materialised:
    :math:`\mathrm{softmax}(Q K^\top s + M)`, ``s`` = ``scale`` or :math:`1/\sqrt{d}`."""
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        key = key.repeat_interleave(query.shape[-3] // key.shape[-3], dim=-3)
    factor = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    logits = (query @ key.transpose(-2, -1)) * factor
    if is_causal:
        length, source = query.shape[-2], key.shape[-2]
        keep = torch.ones(length, source, dtype=torch.bool, device=query.device).tril()
        logits = logits.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            logits = logits.masked_fill(~attn_mask, float("-inf"))
        else:
            logits = logits + attn_mask
    return torch.softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))


@contextmanager
def _switched_to_sdpa(model: nn.Module) -> Iterator[None]:
    """timm attention (``fused_attn``) and Hugging Face configs (``_attn_implementation``) on
    their ``scaled_dot_product_attention`` path for the block; restored afterwards."""
    fused: list[tuple[nn.Module, Any]] = []
    configs: dict[int, tuple[Any, Any]] = {}
    try:
        for module in model.modules():
            if hasattr(module, "fused_attn") and module.fused_attn is not True:
                fused.append((module, module.fused_attn))
                setattr(module, "fused_attn", True)  # noqa: B010 (a module attribute, untyped)
            config = getattr(module, "config", None)
            implementation = getattr(config, "_attn_implementation", None)
            if implementation == "eager" and id(config) not in configs:
                configs[id(config)] = (config, implementation)
                config._attn_implementation = "sdpa"  # type: ignore[union-attr]
        yield
    finally:
        for module, flag in fused:
            setattr(module, "fused_attn", flag)  # noqa: B010
        for config, implementation in configs.values():
            config._attn_implementation = implementation


def class_token_map(model: nn.Module, relevance: Tensor, size: tuple[int, int]) -> Tensor:
    """The class token's row of a token-to-token relevance ``(m, L, L)`` over the patch tokens,
    as ``(m, 1, H, W)`` maps upsampled bilinearly (``align_corners=False``) to ``size``.

    The class token is the first token; the prefix length and the grid come from the model's
    metadata, or from the sequence length and the input's proportions.

    Raises:
        LayerNotFoundError: the sequence has no class token, or its patches form no grid.
    """
    length = relevance.shape[-1]
    layout = token_metadata(model, size).layout(length) or proportional_layout(length, size)
    if layout is None or layout.grid is None or layout.prefix < 1:
        found = "no grid of patch tokens" if layout is None else "no class token"
        raise LayerNotFoundError(
            f"the attention is over {length} tokens with {found} for a {size[0]}×{size[1]} "
            "input; attention methods read the class token's row: they need a vision "
            "transformer with a class token first (timm, torchvision or Hugging Face ViT, DeiT, "
            "DINOv2)"
        )
    h, w = layout.grid
    row = relevance[:, 0, layout.prefix : layout.prefix + h * w].reshape(-1, 1, h, w)
    row = row.to(torch.promote_types(row.dtype, torch.float32))
    return F.interpolate(row, size=size, mode="bilinear", align_corners=False)


def attention_stack(maps: Sequence[Tensor], points: int, method: str) -> list[Tensor]:
    """The recorded maps of one forward, checked to be self-attention over one token sequence:
    each ``(points, heads, L, L)`` with the same ``L``.

    Raises:
        LayerNotFoundError: nothing was recorded, or the attention is windowed or cross.
    """
    if not maps:
        raise LayerNotFoundError(
            f"{method}: the model computed no attention through "
            "torch.nn.functional.scaled_dot_product_attention or nn.MultiheadAttention; accepted "
            "models: vision transformers (timm, torchvision, Hugging Face) whose attention runs "
            "through one of them"
        )
    shapes = {tuple(m.shape) for m in maps}
    first = maps[0].shape
    if (
        len(shapes) != 1
        or len(first) != 4
        or first[0] != points
        or first[-1] != first[-2]
    ):
        raise LayerNotFoundError(
            f"{method}: the attention maps have shapes {sorted(shapes)} for {points} inputs; it "
            "needs global self-attention over one token sequence, (N, heads, L, L) in every "
            "layer (windowed attention, as in Swin, has no class token to read)"
        )
    return list(maps)


def require_module(model: object, method: str) -> nn.Module:
    """``model`` as an ``nn.Module`` (attention methods switch and inspect its layers)."""
    if not isinstance(model, nn.Module):
        raise LayerNotFoundError(
            f"{method} needs an nn.Module model (to find its attention layers and token layout), "
            f"got {type(model).__name__}"
        )
    return model
