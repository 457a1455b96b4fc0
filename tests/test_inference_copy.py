"""``inference_copy``: the model's scores from a BatchNorm-folded, channels-last copy, with the
model itself left exactly as it was."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import Tensor, nn

from saliency.inference_copy import inference_copy
from saliency.models import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _with_running_statistics(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so that folding them in is actually checked."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator) * 0.2)
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(size, generator=generator) * 0.1)
    return model


def _state(model: nn.Module) -> dict[str, tuple[Tensor, tuple[int, ...], bool]]:
    return {
        name: (tensor.detach().clone(), tensor.stride(), tensor.requires_grad)
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]
    }


@pytest.mark.parametrize("source", ["resnet18", "demo:shapes"])
def test_the_copy_computes_the_models_scores_without_batchnorm(source: str) -> None:
    torch.manual_seed(0)
    if source == "resnet18":
        model = _with_running_statistics(torchvision.models.resnet18(weights=None, num_classes=5))
        images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    else:
        model = load_model(source).model
        images = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    model.train()  # the copy is in eval mode whatever the model's mode
    before = _state(model)
    copy = inference_copy(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in copy.modules())
    assert not any(p.requires_grad for p in copy.parameters())
    with torch.no_grad():
        fast = copy(images)
        model.eval()
        expected = model(images)
    torch.testing.assert_close(fast, expected, rtol=1e-4, atol=1e-5)
    # the model itself: same tensors, strides and flags; only the mode set by this test changed
    for name, (tensor, stride, grad) in before.items():
        now = dict([*model.named_parameters(), *model.named_buffers()])[name]
        assert torch.equal(now, tensor) and now.stride() == stride, name
        assert now.requires_grad == grad, name


class _DataDependent(nn.Module):
    """A forward that symbolic tracing cannot follow (a branch on a tensor's value)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        features = self.norm(self.conv(x))
        if features.mean() > 0:
            features = features.relu()
        return self.head(features.mean(dim=(2, 3)))


def test_an_untraceable_model_keeps_its_batchnorm_and_its_scores() -> None:
    torch.manual_seed(0)
    model = _with_running_statistics(_DataDependent()).eval()
    images = torch.randn(2, 3, 8, 8)
    copy = inference_copy(model)
    assert any(isinstance(m, nn.BatchNorm2d) for m in copy.modules())
    with torch.no_grad():
        torch.testing.assert_close(copy(images), model(images), rtol=1e-5, atol=1e-6)


class _Residual(nn.Module):
    """ReLUs whose input is read again (the residual sum) or is the model's own input."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.ReLU()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.second = nn.ReLU()
        self.third = nn.ReLU()
        self.head = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        features = self.conv(self.first(x))
        mixed = self.second(features) + features  # features is read twice
        return self.head(self.third(mixed).mean(dim=(2, 3)))


def test_relus_go_in_place_only_where_nothing_else_reads_their_input() -> None:
    torch.manual_seed(0)
    model = _Residual().eval()
    images = torch.randn(2, 3, 8, 8)
    kept = images.clone()
    copy = inference_copy(model)
    modules = dict(copy.named_modules())
    assert not modules["first"].inplace  # the caller's tensor is never written
    assert not modules["second"].inplace  # its input feeds the sum as well
    assert modules["third"].inplace
    with torch.no_grad():
        torch.testing.assert_close(copy(images), model(images), rtol=1e-5, atol=1e-6)
    assert torch.equal(images, kept)
    assert not any(getattr(m, "inplace", False) for m in model.modules())
