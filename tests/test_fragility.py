"""Explanation fragility (Ghorbani et al. 2019): a label-preserving attack on the map itself.

A hand-built smooth model whose gradient map moves along a known direction: the attack moves it
(beating random noise of the same size) without ever changing the prediction, although the full
ε step along that direction would. Every input-space and layer method runs, on a ReLU network
through its Softplus surrogate.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import saliency
from saliency.errors import InvalidOptionError
from saliency.metrics.fragility import fragility, pixel_map, top_k_intersection
from saliency.metrics.sanity import spearman_correlation as spearman

SIZE = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Movable(nn.Module):
    """Two classes on 1×8×8 inputs; A = left half, B = right half of the image.

    With s = u·x (a weighted mean of B) and σ the logistic function:
    f₀ = a·x + (c/κ) softplus(κ s), so ∂f₀/∂x = a + c u σ(κ s): for s ≪ 0 the map lives on A,
    for s > 0 it moves to B. f₁ = λ s − m overtakes f₀ once s ≳ 0.5, so pushing s to its
    maximum flips the prediction.
    """

    left: Tensor
    a: Tensor
    u: Tensor

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        left = torch.zeros(SIZE, SIZE, dtype=torch.bool)
        left[:, : SIZE // 2] = True
        self.register_buffer("left", left)
        values = torch.rand(SIZE, SIZE, generator=generator, dtype=torch.float64) + 0.5
        a = torch.where(left, values, 0.0) / 32
        u = torch.where(left, 0.0, values)
        self.register_buffer("a", a.flatten())
        self.register_buffer("u", (u / u.sum()).flatten())
        self.c, self.kappa, self.lam, self.m = 10.0, 10.0, 12.0, -1.0

    def forward(self, x: Tensor) -> Tensor:
        flat = x.flatten(1)
        s = flat @ self.u
        f0 = flat @ self.a + self.c / self.kappa * F.softplus(self.kappa * s)
        f1 = self.lam * s - self.m
        return torch.stack([f0, f1], dim=1)


def movable_inputs() -> tuple[Movable, Tensor]:
    model = Movable()
    generator = torch.Generator().manual_seed(1)
    x = 0.05 * torch.randn(3, 1, SIZE, SIZE, generator=generator, dtype=torch.float64)
    start = torch.tensor([-0.8, -0.9, -0.75], dtype=torch.float64).view(-1, 1, 1)
    x[:, 0] += torch.where(model.left, 0.0, 1.0) * start
    return model, x


def test_attack_moves_the_map_beyond_random_noise_and_keeps_the_prediction() -> None:
    model, x = movable_inputs()
    epsilon = 1.5
    with torch.no_grad():
        predictions = model(x).argmax(1)
        # Preconditions: class 0 everywhere, and the full step along the known direction flips it.
        pushed = x + epsilon * (~model.left).to(x.dtype)
        assert predictions.tolist() == [0, 0, 0]
        assert (model(pushed).argmax(1) == 1).all()

    result = fragility(model, x, "gradient", epsilon=epsilon, steps=10, top_k=32, seed=0)

    with torch.no_grad():
        assert torch.equal(model(result.perturbed).argmax(1), predictions)
    assert torch.equal(result.predictions, predictions)
    assert (result.perturbed - x).abs().max() <= epsilon + 1e-12
    assert result.k == 32
    assert (result.top_k_intersection <= 0.1).all(), result.top_k_intersection
    assert (result.random_top_k_intersection >= 0.75).all(), result.random_top_k_intersection
    assert (result.spearman < result.random_spearman).all()
    assert (result.spearman < 0).all()
    summary = result.summary()
    assert summary["top_k_intersection"] < summary["random_top_k_intersection"]
    # The attacked map is the model's gradient at the perturbed input.
    leaf = result.perturbed.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(leaf)[:, 0].sum(), leaf)
    torch.testing.assert_close(result.attacked, grad)


def relu_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    )


FIRST_ORDER = [
    m
    for m in saliency.list_methods()
    if saliency.get_method(m).derivative_order == 1
    and saliency.get_method(m).supports_create_graph
    and saliency.get_method(m).applies_to(relu_cnn())
]
"""The methods whose robustness the demo measures (differentiating a second-order map needs
third derivatives)."""


@pytest.mark.parametrize("method", FIRST_ORDER)
def test_every_method_on_a_relu_network_through_smooth_relu(
    method: str, method_options: dict[str, Any]
) -> None:
    model = relu_cnn()
    modules = [id(m) for m in model.modules()]
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    epsilon = 0.05
    result = fragility(
        model, x, method, epsilon=epsilon, steps=2, beta=5.0, method_options=method_options
    )
    assert [id(m) for m in model.modules()] == modules
    assert all(m.training for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(result.perturbed).argmax(1), model(x).argmax(1))
    assert (result.perturbed - x).abs().max() <= epsilon + 1e-6
    for name in ("top_k_intersection", "random_top_k_intersection"):
        values = getattr(result, name)
        assert values.shape == (2,) and ((values >= 0) & (values <= 1)).all()
    for name in ("spearman", "random_spearman"):
        values = getattr(result, name)
        assert values.shape == (2,) and ((values >= -1 - 1e-6) & (values <= 1 + 1e-6)).all()
    assert result.attacked.shape == result.original.shape
    layer_map = saliency.get_method(method).output == "layer"
    assert result.original.shape[1] == (1 if layer_map else 3)


def test_relu_network_without_beta_warns_that_the_gradient_is_zero() -> None:
    model = relu_cnn()
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with pytest.warns(RuntimeWarning, match="beta="):
        result = fragility(model, x, "gradient", epsilon=0.05, steps=1)
    assert torch.equal(result.perturbed, x)
    assert (result.top_k_intersection == 1).all()


def test_rank_metrics() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    generator = torch.Generator().manual_seed(3)
    a = torch.randint(0, 4, (3, 20), generator=generator).float()  # many ties
    b = torch.randn(3, 20, generator=generator)
    rho = spearman(a, b)
    for row in range(3):
        expected = scipy_stats.spearmanr(a[row].numpy(), b[row].numpy()).statistic
        assert abs(float(rho[row]) - expected) < 1e-6
    assert spearman(torch.ones(1, 5), b[:1, :5]).item() == 0.0
    first = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    second = torch.tensor([[5.0, 1.0, 4.0, 2.0, 3.0]])
    assert top_k_intersection(first, second, 2).item() == 0.5
    maps = torch.tensor([[[[1.0, -2.0]], [[-3.0, 0.5]]]])
    torch.testing.assert_close(pixel_map(maps), torch.tensor([[4.0, 2.5]]))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"epsilon": 0}, "epsilon"),
        ({"steps": 0}, "steps"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 1.5}, "top_k"),
        ({"top_k": 10_000}, "top_k"),
        ({"beta": -1.0}, "beta"),
        ({"clamp": (1.0, 0.0)}, "clamp"),
    ],
)
def test_bad_options_raise(options: dict[str, Any], match: str) -> None:
    x = torch.randn(1, 3, SIZE, SIZE)
    with pytest.raises(InvalidOptionError, match=match):
        fragility(relu_cnn(), x, "gradient", **options)
