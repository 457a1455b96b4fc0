"""Seeded models for tests: randomly initialised torchvision models for agreement tests against
captum, built once per test process (vgg11's classifier alone holds 100M parameters), and a
tiny hand-built CNN for metric and rendering tests."""

from __future__ import annotations

import functools

import torch
import torchvision
from torch import Tensor, nn

NAMES = ("resnet18", "vgg11", "mobilenet_v2")
NUM_CLASSES = 10
GRADCAM_LAYERS = {"resnet18": "layer4", "vgg11": "features.18", "mobilenet_v2": "features.18"}
"""The last convolutional block of each model, for Grad-CAM."""


@functools.cache
def reference_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model: nn.Module = getattr(torchvision.models, name)(num_classes=NUM_CLASSES)
    return model.eval()


def reference_inputs(n: int = 2, size: int = 64) -> Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(5))


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """max |actual − expected| / max |expected| (the reference must not be all zeros)."""
    scale = expected.detach().abs().max().item()
    assert scale > 0, "the reference is all zeros: the comparison would be vacuous"
    return ((actual.detach() - expected.detach()).abs().max() / scale).item()


def tiny_cnn(activation: type[nn.Module] = nn.ReLU) -> nn.Module:
    """Conv(3→4)–activation–global pool–Linear(4→3), seeded with 0 (the global RNG is left as
    after ``torch.manual_seed(0)`` and the build)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        activation(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
