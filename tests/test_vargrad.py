"""VarGrad: the variance of a base method over SmoothGrad's noisy copies."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import saliency
from saliency.engine import Engine
from saliency.errors import InvalidOptionError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def model_and_inputs(dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(3, 5, 3, padding=1),
            act=nn.Softplus(),
            pool=nn.AdaptiveAvgPool2d(2),
            flatten=nn.Flatten(),
            fc=nn.Linear(20, 4),
        )
    ).to(dtype)
    x = torch.randn(3, 3, 7, 6, generator=torch.Generator().manual_seed(1), dtype=dtype)
    return model.eval(), x


def documented_noise(x: Tensor, samples: int, noise: float, seed: int) -> list[Tensor]:
    """SmoothGrad's noise: one randn(inputs.shape) per copy, σ = noise × each sample's range."""
    generator = torch.Generator().manual_seed(seed)
    flat = x.flatten(1)
    sigma = (noise * (flat.amax(1) - flat.amin(1))).view(-1, 1, 1, 1)
    return [
        sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype) for _ in range(samples)
    ]


def gradient(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    point = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(point).gather(1, target[:, None]).sum(), point)
    return grad


def test_vargrad_is_the_variance_over_the_documented_copies() -> None:
    model, x = model_and_inputs(torch.float64)
    target = torch.tensor([0, 3, 1])
    maps = torch.stack(
        [gradient(model, x + eps, target) for eps in documented_noise(x, 6, 0.2, seed=4)]
    )
    expected = maps.var(0, unbiased=False)
    ours = saliency.explain(model, x, "vargrad", target=target, samples=6, noise=0.2, seed=4)
    torch.testing.assert_close(ours.attributions, expected, rtol=1e-10, atol=1e-16)
    assert (ours.attributions >= 0).all()


def test_vargrad_and_smoothgrad_share_the_noise() -> None:
    """Var = E[a²] − E[a]² over the same copies: SmoothGrad² minus SmoothGrad squared."""
    model, x = model_and_inputs(torch.float64)
    options: dict[str, Any] = {"target": 2, "samples": 5, "noise": 0.3, "seed": 9}
    variance = saliency.explain(model, x, "vargrad", **options).attributions
    mean = saliency.explain(model, x, "smoothgrad", **options).attributions
    mean_square = saliency.explain(model, x, "smoothgrad", squared=True, **options).attributions
    torch.testing.assert_close(variance, mean_square - mean.square(), rtol=1e-8, atol=1e-14)


def test_one_sample_gives_zeros() -> None:
    model, x = model_and_inputs()
    ex = saliency.explain(model, x, "vargrad", target=1, samples=1, noise=0.5, seed=0)
    assert torch.equal(ex.attributions, torch.zeros_like(x))


def test_blocks_merge_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Copies materialised in blocks of 2 (Chan's pairwise merge) give the one-block result."""
    model, x = model_and_inputs(torch.float64)
    options: dict[str, Any] = {"target": 1, "samples": 7, "seed": 3}
    whole = saliency.explain(model, x, "vargrad", **options).attributions
    monkeypatch.setattr(Engine, "block_size", lambda self, point, count: 2)
    blocks = saliency.explain(model, x, "vargrad", **options).attributions
    torch.testing.assert_close(blocks, whole, rtol=1e-10, atol=1e-18)
    batched = saliency.explain(model, x, "vargrad", batch_size=1, **options).attributions
    torch.testing.assert_close(batched, whole, rtol=1e-10, atol=1e-18)


def test_any_input_space_base_and_its_options() -> None:
    model, x = model_and_inputs(torch.float64)
    target = torch.tensor([0, 1, 2])
    ours = saliency.explain(
        model, x, "vargrad", target=target, samples=3, seed=1, base="integrated_gradients", steps=4
    ).attributions
    copies = documented_noise(x, 3, 0.15, seed=1)
    ig = torch.stack(
        [
            saliency.explain(
                model, x + eps, "integrated_gradients", target=target, steps=4
            ).attributions
            for eps in copies
        ]
    )
    torch.testing.assert_close(ours, ig.var(0, unbiased=False), rtol=1e-9, atol=1e-16)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"base": "gradcam"}, "base='gradcam' is a layer method; VarGrad"),
        ({"samples": 0}, "samples=0"),
        ({"noise": float("nan")}, "noise=nan"),
        ({"seed": -1}, "seed=-1"),
        ({"steps": 8}, "steps"),  # not an option of the default base "gradient"
        ({"base": "nope"}, "unknown method 'nope'"),
    ],
)
def test_bad_options_raise(options: dict[str, Any], named: str) -> None:
    model, x = model_and_inputs()
    with pytest.raises((InvalidOptionError, saliency.errors.UnknownMethodError), match=named):
        saliency.explain(model, x, "vargrad", **options)
