"""From raw attributions to one relevance value per pixel, and ground-truth masks to match.

Every metric in :mod:`saliency.metrics` reduces the raw, signed ``(N, C, H, W)`` attributions of
:func:`saliency.explain` (or ``(N, 1, H, W)`` / ``(N, H, W)`` maps) to a pixel relevance map
``R`` of shape ``(N, H, W)`` with :func:`relevance_map`:

- ``"abs"`` (default): :math:`R_{ij} = \\sum_c |a_{cij}|` — magnitude, whatever the sign (the
  usual reading of gradient maps, whose sign is not meaningful on its own);
- ``"sum"``: :math:`R_{ij} = \\sum_c a_{cij}` — signed evidence;
- ``"positive"``: :math:`R_{ij} = \\max(0, \\sum_c a_{cij})` — positive evidence only.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from saliency.errors import InvalidOptionError, accepted

__all__ = ["Reduction", "as_masks", "relevance_map"]

Reduction = Literal["abs", "sum", "positive"]
REDUCTIONS: tuple[str, ...] = get_args(Reduction)


def relevance_map(attributions: Tensor, reduction: Reduction = "abs") -> Tensor:
    """Pixel relevance ``(N, H, W)`` (float32 at least) from ``(N, C, H, W)`` or ``(N, H, W)``.

    Args:
        attributions: Raw attributions; a 3-D tensor is one channel per pixel.
        reduction: ``"abs"``, ``"sum"`` or ``"positive"`` (see the module docstring).
    """
    if not isinstance(attributions, Tensor) or attributions.ndim not in (3, 4):
        shape = tuple(attributions.shape) if isinstance(attributions, Tensor) else None
        raise InvalidOptionError(
            f"attributions must be an (N, C, H, W) or (N, H, W) tensor, got shape {shape}"
        )
    if reduction not in REDUCTIONS:
        raise InvalidOptionError(f"reduction={reduction!r}; accepted: {accepted(REDUCTIONS)}")
    values = attributions.detach()
    values = values.to(torch.promote_types(values.dtype, torch.float32))
    if values.ndim == 3:
        values = values.unsqueeze(1)
    if reduction == "abs":
        return values.abs().sum(dim=1)
    summed = values.sum(dim=1)
    return summed if reduction == "sum" else summed.clamp_min(0.0)


def as_masks(masks: Tensor, relevance: Tensor, name: str = "masks") -> Tensor:
    """Boolean ``(N, H, W)`` masks on ``relevance``'s device, checked against its shape.

    Args:
        masks: ``(N, H, W)`` or ``(N, 1, H, W)``, bool or 0/1 numbers (non-zero = inside).
        relevance: The ``(N, H, W)`` maps the masks go with.
        name: What to call the masks in error messages.
    """
    if not isinstance(masks, Tensor):
        raise InvalidOptionError(f"{name} must be a tensor, got {type(masks).__name__}")
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.shape != relevance.shape:
        raise InvalidOptionError(
            f"{name} of shape {tuple(masks.shape)} do not fit maps of shape "
            f"{tuple(relevance.shape)}; accepted: (N, H, W) or (N, 1, H, W) with the same N, H, W"
        )
    return masks.to(device=relevance.device) != 0
