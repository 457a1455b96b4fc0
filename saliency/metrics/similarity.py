"""How alike two relevance maps are: SSIM and Spearman rank correlation, one value per sample.

- ``"ssim"``: the structural similarity index (Wang et al. 2004, "Image Quality Assessment: From
  Error Visibility to Structural Similarity", IEEE TIP 13), with local means
  :math:`\\mu`, sample variances :math:`\\sigma^2` and covariance :math:`\\sigma_{xy}` over
  every 7×7 window that fits in the map,

  .. math:: \\text{SSIM} = \\operatorname{mean}_\\text{windows}
            \\frac{(2\\mu_x\\mu_y + c_1)(2\\sigma_{xy} + c_2)}
            {(\\mu_x^2 + \\mu_y^2 + c_1)(\\sigma_x^2 + \\sigma_y^2 + c_2)},\\quad
            c_1 = (0.01\\,L)^2,\\ c_2 = (0.03\\,L)^2,

  :math:`L` the joint range (max − min) of the two maps — scikit-image's
  ``structural_similarity`` defaults with ``data_range`` as Quantus sets it;
- ``"spearman"``: :func:`~saliency.metrics.sanity.spearman_correlation` of the pixel values.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from saliency.errors import InvalidOptionError
from saliency.metrics.sanity import spearman_correlation
from saliency.validation import check_choice

__all__ = ["Similarity", "map_similarity", "ssim"]

Similarity = Literal["ssim", "spearman"]
_WINDOW = 7


def ssim(first: Tensor, second: Tensor) -> Tensor:
    """``(N,)`` float32 mean SSIM of two ``(N, H, W)`` maps (see the module docstring).

    Two constant, equal maps score 1. H and W must be at least 7.
    """
    if first.shape != second.shape or first.ndim != 3:
        raise InvalidOptionError(
            f"ssim needs two (N, H, W) maps of one shape, got {tuple(first.shape)} and "
            f"{tuple(second.shape)}"
        )
    if min(first.shape[1:]) < _WINDOW:
        raise InvalidOptionError(
            f"ssim needs maps of at least {_WINDOW}×{_WINDOW} pixels, got {tuple(first.shape[1:])}"
        )
    x = first.detach().double().unsqueeze(1)
    y = second.detach().double().unsqueeze(1)
    both = torch.cat([x, y], dim=1).flatten(1)
    span = (both.amax(dim=1) - both.amin(dim=1)).view(-1, 1, 1, 1)
    c1, c2 = (0.01 * span) ** 2, (0.03 * span) ** 2

    def local(field: Tensor) -> Tensor:
        return F.avg_pool2d(field, _WINDOW, stride=1)

    unbiased = _WINDOW**2 / (_WINDOW**2 - 1)  # sample (not population) covariances
    mean_x, mean_y = local(x), local(y)
    var_x = unbiased * (local(x * x) - mean_x**2)
    var_y = unbiased * (local(y * y) - mean_y**2)
    cov = unbiased * (local(x * y) - mean_x * mean_y)
    numerator = (2 * mean_x * mean_y + c1) * (2 * cov + c2)
    denominator = (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)
    # Equal constant maps have span 0 and 0/0 windows: identical, so 1.
    index = torch.where(denominator > 0, numerator / denominator.clamp_min(1e-300), 1.0)
    return index.flatten(1).mean(dim=1).float()


def map_similarity(first: Tensor, second: Tensor, similarity: Similarity = "ssim") -> Tensor:
    """``(N,)`` similarity of two ``(N, H, W)`` relevance maps: ``"ssim"`` or ``"spearman"``."""
    check_choice("similarity", similarity, Similarity)
    if similarity == "ssim":
        return ssim(first, second)
    return spearman_correlation(first, second)
