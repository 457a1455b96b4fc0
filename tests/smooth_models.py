"""Tiny float64 models with smooth activations, for second-order tests (a ReLU network's input
Hessian is zero almost everywhere)."""

from __future__ import annotations

import torch
from torch import nn


def smooth_cnn() -> nn.Sequential:
    """Conv–Softplus–Conv–Tanh–pool–linear, 3 classes, float64, seeded."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Softplus(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Tanh(),  # the last spatial map: Grad-CAM's automatic layer
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).double()
