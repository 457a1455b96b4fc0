"""Small option values that keep a call of each method fast on tiny inputs, for the contract
tests that run every registered method (lifecycle, engine, create_graph, captum)."""

from __future__ import annotations

from typing import Any

import torch


def quadrants(height: int, width: int) -> torch.Tensor:
    """A ``(1, 1, H, W)`` feature mask of the four quadrants (feature ids 0–3)."""
    rows = (torch.arange(height) >= height // 2).long()
    columns = (torch.arange(width) >= width // 2).long()
    return (rows[:, None] * 2 + columns[None, :]).view(1, 1, height, width)


def captum_fast_options(names: list[str], shape: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    """Fast options of every ``captum:`` method in ``names`` for inputs of ``shape``
    ``(N, C, H, W)``: few steps and samples, four feature groups, half-size occlusion windows,
    the options captum requires, and ``seed=0`` (the same call twice gives the same result)."""
    _, channels, height, width = shape
    mask = quadrants(height, width)
    window = (channels, max(1, height // 2), max(1, width // 2))
    options: dict[str, dict[str, Any]] = {
        "captum:DeepLiftShap": {
            "baselines": torch.randn(
                2, channels, height, width, generator=torch.Generator().manual_seed(7)
            )
        },
        "captum:FeatureAblation": {"feature_mask": mask},
        "captum:FeaturePermutation": {"feature_mask": mask},
        "captum:GradientShap": {"baselines": 0.0, "n_samples": 2},
        "captum:IntegratedGradients": {"n_steps": 3},
        "captum:KernelShap": {"feature_mask": mask, "n_samples": 8},
        "captum:Lime": {"feature_mask": mask, "n_samples": 8},
        "captum:Occlusion": {"sliding_window_shapes": window, "strides": window},
        "captum:ShapleyValueSampling": {"feature_mask": mask, "n_samples": 2},
        "captum:ShapleyValues": {"feature_mask": mask},
    }
    return {
        name: {**options.get(name, {}), "seed": 0} for name in names if name.startswith("captum:")
    }
