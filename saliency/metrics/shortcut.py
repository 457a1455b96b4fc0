"""Shortcut detection: how much relevance sits on a spurious marker versus on the object.

On :mod:`saliency.demo.scenes` scenes with class-coded markers, a model that learned the
shortcut puts its evidence on the marker: its maps have a high marker mass and a low object mass,
while a model that learned the shape does the opposite.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from saliency.metrics.localisation import relevance_mass
from saliency.metrics.relevance import Reduction

__all__ = ["ShortcutMass", "marker_object_mass"]


class ShortcutMass(NamedTuple):
    """Shares of positive relevance per sample, ``(N,)`` each.

    Attributes:
        marker: :math:`\\sum_{p \\in M_\\text{marker}} R_p^+ / \\sum_p R_p^+`.
        object: :math:`\\sum_{p \\in M_\\text{object}} R_p^+ / \\sum_p R_p^+`.
    """

    marker: Tensor
    object: Tensor


def marker_object_mass(
    attributions: Tensor,
    object_masks: Tensor,
    marker_masks: Tensor,
    *,
    reduction: Reduction = "abs",
) -> ShortcutMass:
    """Relevance mass (Arras et al. 2022) on the marker and on the object.

    Args:
        attributions: ``(N, C, H, W)`` or ``(N, H, W)`` raw attributions.
        object_masks: ``(N, H, W)`` or ``(N, 1, H, W)`` object masks.
        marker_masks: Marker masks of the same shape (disjoint from the object).
        reduction: How channels become pixel relevance (see ``relevance_map``).
    """
    return ShortcutMass(
        marker=relevance_mass(attributions, marker_masks, reduction=reduction),
        object=relevance_mass(attributions, object_masks, reduction=reduction),
    )
