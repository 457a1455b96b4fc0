"""Localisation: does the relevance fall on the object's ground-truth mask?

All three metrics take raw attributions (reduced per pixel by
:func:`~saliency.metrics.relevance.relevance_map`) and boolean object masks, and return one value
per sample, ``(N,)`` float32 on the attributions' device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from saliency.metrics.relevance import Reduction, as_masks, relevance_map
from saliency.validation import require_float

__all__ = ["dilate", "pointing_game", "relevance_mass", "relevance_rank"]


def dilate(masks: Tensor, radius: float) -> Tensor:
    """Grow boolean ``(N, H, W)`` masks by every pixel within Euclidean distance ``radius``."""
    if radius <= 0:
        return masks
    reach = math.floor(radius)
    offsets = torch.arange(-reach, reach + 1, device=masks.device, dtype=torch.float32)
    disk = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).float()
    grown = F.conv2d(masks.float().unsqueeze(1), disk[None, None], padding=reach)
    return grown.squeeze(1) > 0.5


def pointing_game(
    attributions: Tensor, masks: Tensor, *, tolerance: float = 0.0, reduction: Reduction = "abs"
) -> Tensor:
    """Pointing game (Zhang et al. 2018, "Top-down Neural Attention by Excitation Backprop").

    A hit (1.0) when the map's maximum lies on the object: the largest relevance inside the mask
    grown by ``tolerance`` pixels (Euclidean; the paper uses 15 px at 224²) is strictly larger
    than every value outside it,

    .. math:: \\text{hit} = \\big[\\max_{p \\in M_\\tau} R_p > \\max_{p \\notin M_\\tau} R_p\\big].

    A maximum shared by pixels inside and outside (e.g. a constant map) is a miss; an empty mask
    is a miss.

    Args:
        attributions: ``(N, C, H, W)`` or ``(N, H, W)`` raw attributions.
        masks: ``(N, H, W)`` or ``(N, 1, H, W)`` object masks.
        tolerance: Radius in pixels added around the mask.
        reduction: How channels become pixel relevance (see ``relevance_map``).

    Returns:
        ``(N,)`` hits, 0.0 or 1.0.
    """
    require_float("tolerance", tolerance, 0.0)
    relevance = relevance_map(attributions, reduction)
    inside = dilate(as_masks(masks, relevance), tolerance).flatten(1)
    flat = relevance.flatten(1)
    lowest = torch.finfo(flat.dtype).min
    best_inside = flat.masked_fill(~inside, lowest).amax(dim=1)
    best_outside = flat.masked_fill(inside, lowest).amax(dim=1)
    hit = inside.any(dim=1) & ((best_inside > best_outside) | inside.all(dim=1))
    return hit.float()


def relevance_mass(attributions: Tensor, masks: Tensor, *, reduction: Reduction = "abs") -> Tensor:
    """Relevance mass accuracy (Arras et al. 2022, "CLEVR-XAI", Information Fusion 81).

    The share of positive relevance that falls inside the mask,

    .. math:: \\text{mass} = \\frac{\\sum_{p \\in M} R_p^+}{\\sum_p R_p^+},\\qquad
              R^+ = \\max(R, 0),

    0.0 for a map without positive relevance. A map spread evenly scores the mask's area share.

    Args:
        attributions: ``(N, C, H, W)`` or ``(N, H, W)`` raw attributions.
        masks: ``(N, H, W)`` or ``(N, 1, H, W)`` masks.
        reduction: How channels become pixel relevance (see ``relevance_map``).

    Returns:
        ``(N,)`` shares in [0, 1].
    """
    relevance = relevance_map(attributions, reduction)
    inside = as_masks(masks, relevance).flatten(1)
    relevance = relevance.clamp_min(0.0).flatten(1)
    total = relevance.sum(dim=1)
    within = (relevance * inside).sum(dim=1)
    return torch.where(total > 0, within / total.clamp_min(torch.finfo(total.dtype).tiny), 0.0)


def relevance_rank(attributions: Tensor, masks: Tensor, *, reduction: Reduction = "abs") -> Tensor:
    """Relevance rank accuracy (Arras et al. 2022, "CLEVR-XAI", Information Fusion 81).

    With :math:`K = |M|` pixels in the mask, the share of the K most relevant pixels that lie
    inside it,

    .. math:: \\text{rank} = \\frac{|\\operatorname{top}_K(R) \\cap M|}{K}.

    Ties are broken in raster order (stable sort); an empty mask scores 0.0.

    Args:
        attributions: ``(N, C, H, W)`` or ``(N, H, W)`` raw attributions.
        masks: ``(N, H, W)`` or ``(N, 1, H, W)`` masks.
        reduction: How channels become pixel relevance (see ``relevance_map``).

    Returns:
        ``(N,)`` shares in [0, 1].
    """
    relevance = relevance_map(attributions, reduction)
    inside = as_masks(masks, relevance).flatten(1)
    flat = relevance.flatten(1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(
        1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    )
    size = inside.sum(dim=1, keepdim=True)
    hits = (inside & (ranks < size)).sum(dim=1).float()
    return torch.where(size.squeeze(1) > 0, hits / size.squeeze(1).clamp_min(1).float(), 0.0)
