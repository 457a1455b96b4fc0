"""Complexity: how concentrated a map's relevance is, from the map alone.

Both metrics read the non-negative pixel relevance :math:`R` (``reduction="abs"`` or
``"positive"`` of :func:`~saliency.metrics.relevance.relevance_map`) of each sample as P values
and return one value per sample, ``(N,)`` float32.

- :func:`sparseness`: the Gini index of the relevance (Chalasani et al. 2020, "Concise
  Explanations of Neural Networks using Adversarial Training", ICML, arXiv:1810.06583), with
  :math:`r_{(1)} \\le \\dots \\le r_{(P)}` the sorted values,

  .. math:: G = \\frac{\\sum_{i=1}^{P} (2i - P - 1)\\, r_{(i)}}{P \\sum_i r_{(i)}}
            \\in [0, 1 - 1/P];

  0 for a uniform map, :math:`1 - 1/P` when one pixel holds all the relevance. Higher is
  sparser.
- :func:`complexity`: the entropy of the fractional contributions (Bhatt et al. 2020,
  "Evaluating and Aggregating Feature-based Model Explanations", IJCAI, arXiv:2005.00631),

  .. math:: H = -\\sum_p \\rho_p \\log \\rho_p,\\qquad \\rho_p = R_p / \\textstyle\\sum_q R_q,
            \\qquad H \\in [0, \\log P];

  lower is simpler. :math:`0 \\log 0 = 0`.

A map without relevance (all zeros) reads as uniform: sparseness 0, complexity :math:`\\log P`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from saliency.metrics.relevance import relevance_map
from saliency.validation import check_choice

__all__ = ["NonNegativeReduction", "complexity", "sparseness"]

NonNegativeReduction = Literal["abs", "positive"]


def _relevance(attributions: Tensor, reduction: NonNegativeReduction) -> Tensor:
    """``(N, P)`` non-negative float64 relevance (double: P terms are summed)."""
    check_choice("reduction", reduction, NonNegativeReduction)
    return relevance_map(attributions, reduction).flatten(1).double()


def sparseness(attributions: Tensor, *, reduction: NonNegativeReduction = "abs") -> Tensor:
    """``(N,)`` Gini index of each map's pixel relevance (see the module docstring).

    Args:
        attributions: ``(N, C, H, W)`` or ``(N, H, W)`` raw attributions.
        reduction: ``"abs"`` (:math:`\\sum_c |a_c|`) or ``"positive"``.
    """
    relevance = _relevance(attributions, reduction).sort(dim=1).values
    count = relevance.shape[1]
    weights = 2 * torch.arange(1, count + 1, device=relevance.device, dtype=relevance.dtype)
    weights = weights - count - 1
    total = relevance.sum(dim=1)
    tiny = torch.finfo(total.dtype).tiny
    gini = (relevance * weights).sum(dim=1) / (count * total.clamp_min(tiny))
    return torch.where(total > 0, gini, 0.0).float()


def complexity(attributions: Tensor, *, reduction: NonNegativeReduction = "abs") -> Tensor:
    """``(N,)`` entropy of each map's fractional contributions (see the module docstring).

    Args:
        attributions: ``(N, C, H, W)`` or ``(N, H, W)`` raw attributions.
        reduction: ``"abs"`` (:math:`\\sum_c |a_c|`) or ``"positive"``.
    """
    relevance = _relevance(attributions, reduction)
    total = relevance.sum(dim=1, keepdim=True)
    shares = relevance / total.clamp_min(torch.finfo(total.dtype).tiny)
    entropy = -torch.special.xlogy(shares, shares).sum(dim=1)
    uniform = math.log(relevance.shape[1])
    return torch.where(total.squeeze(1) > 0, entropy, uniform).float()
