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


def smooth_vit() -> nn.Module:
    """A torchvision ViT on 5×5 inputs (1-pixel patches + a class token, 2 layers of 2 heads,
    width 8), 3 classes, float64, seeded: GELU, LayerNorm and softmax are all smooth."""
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=5, patch_size=1, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=8,
        num_classes=3,
    )
    nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero
    return model.double().eval()
