"""``channels_last=True``: the same attributions from the channels-last memory format, and the
model exactly as it was afterwards."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torchvision
from torch import Tensor, nn

import saliency
from saliency.engine import EngineOptions
from saliency.errors import InvalidOptionError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CASES: list[tuple[str, dict[str, Any]]] = [
    ("gradient", {}),
    ("integrated_gradients", {"steps": 4}),
    ("smoothgrad", {"samples": 3, "seed": 0}),
    ("gradcam", {"layer": "layer3"}),
    ("guided_backprop", {}),
]


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=6).eval()


def inputs() -> Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize(("method", "options"), CASES, ids=[c[0] for c in CASES])
def test_channels_last_gives_the_same_attributions(
    resnet: nn.Module, method: str, options: dict[str, Any]
) -> None:
    x = inputs()
    plain = saliency.explain(resnet, x, method, target=[1, 4], **options).attributions
    fast = saliency.explain(resnet, x, method, target=[1, 4], channels_last=True, **options)
    scale = float(plain.abs().max())
    assert scale > 0
    torch.testing.assert_close(fast.attributions, plain, rtol=1e-4, atol=1e-5 * scale)


def layout(model: nn.Module) -> dict[str, tuple[int, tuple[int, ...], int]]:
    """Where each weight lives, its strides and its version counter."""
    return {n: (t.data_ptr(), t.stride(), t._version) for n, t in model.state_dict().items()}


def test_the_model_runs_channels_last_and_is_put_back_exactly(resnet: nn.Module) -> None:
    x = inputs()
    before = layout(resnet)
    seen: list[tuple[bool, bool]] = []

    def record(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        weight = module.weight
        channels_last = torch.channels_last
        seen.append(
            (args[0].is_contiguous(memory_format=channels_last),
             weight.is_contiguous(memory_format=channels_last))
        )  # fmt: skip

    handle = resnet.conv1.register_forward_pre_hook(record)
    try:
        saliency.explain(resnet, x, "gradient", channels_last=True)
        assert seen and all(points and weight for points, weight in seen)
        seen.clear()
        saliency.explain(resnet, x, "gradient")
        assert seen and not any(points or weight for points, weight in seen)
    finally:
        handle.remove()
    assert layout(resnet) == before
    assert x.is_contiguous()


def test_the_weights_come_back_when_the_model_raises() -> None:
    class Failing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: Tensor) -> Tensor:
            assert self.conv.weight.is_contiguous(memory_format=torch.channels_last)
            raise RuntimeError("broken model")

    model = Failing()
    stride = model.conv.weight.stride()
    with pytest.raises(RuntimeError, match="broken model"):
        saliency.explain(model, inputs(), "gradient", channels_last=True)
    assert model.conv.weight.stride() == stride and model.conv.weight.is_contiguous()


def test_channels_last_must_be_a_bool() -> None:
    with pytest.raises(InvalidOptionError, match="channels_last"):
        EngineOptions(channels_last="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match="channels_last"):
        saliency.explain(nn.Conv2d(3, 2, 1), inputs(), "gradient", channels_last=1)


def test_perturbation_metrics_score_the_same_in_channels_last(resnet: nn.Module) -> None:
    from saliency.metrics import deletion_auc, insertion_auc, road

    images = inputs()
    maps = torch.rand(2, 32, 32, generator=torch.Generator().manual_seed(4))
    weights = {name: p.stride() for name, p in resnet.named_parameters()}
    for metric in (deletion_auc, insertion_auc):
        plain = metric(resnet, images, maps, target=[1, 2], step=0.25)
        fast = metric(resnet, images, maps, target=[1, 2], step=0.25, channels_last=True)
        torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)
    plain = road(resnet, images, maps, target=[1, 2], fractions=(0.3, 0.7))
    fast = road(resnet, images, maps, target=[1, 2], fractions=(0.3, 0.7), channels_last=True)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)
    assert {name: p.stride() for name, p in resnet.named_parameters()} == weights
