"""``saliency.hvp``: Hessian-vector products by double backward, chunked through the engine.

References: central finite differences of input gradients (float64) and
``torch.autograd.functional.hvp`` per sample.
"""

from __future__ import annotations

import pytest
import torch
from smooth_models import smooth_cnn
from torch import Tensor, nn

import saliency
from saliency.errors import InvalidOptionError

TARGET = [0, 2, 1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def relu_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(4 * 25, 3),
    ).double()


def make(seed: int) -> Tensor:
    return torch.randn(
        3, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )


def gradients(model: nn.Module, x: Tensor, target: list[int]) -> Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x)[torch.arange(len(x)), target].sum(), x)
    return g


def functional_hvp(model: nn.Module, x: Tensor, v: Tensor, target: list[int]) -> Tensor:
    products = []
    for sample, vector, t in zip(x, v, target, strict=True):
        _, product = torch.autograd.functional.hvp(
            lambda z, t=t: model(z[None])[0, t], sample, vector
        )
        products.append(product)
    return torch.stack(products)


def test_matches_central_finite_differences_of_gradients() -> None:
    model, x, v = smooth_cnn(), make(1), make(2)
    eps = 1e-5
    finite = (gradients(model, x + eps * v, TARGET) - gradients(model, x - eps * v, TARGET)) / (
        2 * eps
    )
    result = saliency.hvp(model, x, v, target=TARGET)
    assert result.dtype == torch.float64 and result.shape == x.shape
    torch.testing.assert_close(result, finite, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("batch_size", [1, 2, None])
def test_matches_torch_autograd_functional_hvp(batch_size: int | None) -> None:
    model, x, v = smooth_cnn(), make(1), make(2)
    result = saliency.hvp(model, x, v, target=TARGET, batch_size=batch_size)
    torch.testing.assert_close(result, functional_hvp(model, x, v, TARGET), rtol=1e-12, atol=1e-14)


def test_default_target_is_the_argmax_and_vectors_broadcast() -> None:
    model, x = smooth_cnn(), make(1)
    v = torch.randn(3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        argmax = model(x).argmax(1).tolist()
    result = saliency.hvp(model, x, v)
    expected = functional_hvp(model, x, v.expand_as(x), argmax)
    torch.testing.assert_close(result, expected, rtol=1e-12, atol=1e-14)


def test_callable_target() -> None:
    model, x, v = smooth_cnn(), make(1), make(2)
    result = saliency.hvp(model, x, v, target=lambda out: out.logsumexp(1))
    expected = []
    for sample, vector in zip(x, v, strict=True):
        _, product = torch.autograd.functional.hvp(
            lambda z: model(z[None]).logsumexp(1)[0], sample, vector
        )
        expected.append(product)
    torch.testing.assert_close(result, torch.stack(expected), rtol=1e-12, atol=1e-14)


def test_create_graph_gives_a_differentiable_product() -> None:
    """Third order: d/dx Σ (H(x) v)·w against finite differences; same values as without."""
    model, x, v = smooth_cnn(), make(1), make(2)
    w, d = make(3), make(4)
    plain = saliency.hvp(model, x, v, target=TARGET)
    leaf = x.clone().requires_grad_(True)
    product = saliency.hvp(model, leaf, v, target=TARGET, create_graph=True)
    assert product.requires_grad and not plain.requires_grad
    torch.testing.assert_close(product.detach(), plain, rtol=1e-12, atol=1e-14)
    (grad,) = torch.autograd.grad((product * w).sum(), leaf)
    eps = 1e-5
    phi = [(saliency.hvp(model, x + s * eps * d, v, target=TARGET) * w).sum() for s in (1, -1)]
    finite = float((phi[0] - phi[1]) / (2 * eps))
    assert abs(float((grad * d).sum()) - finite) <= 1e-5 * abs(finite)
    assert all(p.grad is None for p in model.parameters())


def test_relu_network_has_zero_hessian_until_smoothed() -> None:
    model, x, v = relu_model(), make(1), make(2)
    assert torch.count_nonzero(saliency.hvp(model, x, v, target=TARGET)) == 0
    with saliency.smooth_relu(model, beta=5.0):
        smooth = saliency.hvp(model, x, v, target=TARGET)
        expected = functional_hvp(model, x, v, TARGET)
    assert smooth.abs().max() > 1e-3
    torch.testing.assert_close(smooth, expected, rtol=1e-12, atol=1e-14)


def test_model_state_is_restored_and_inputs_untouched() -> None:
    model, x, v = smooth_cnn(), make(1), make(2)
    model.train()
    model[0].weight.requires_grad_(False)
    before = x.clone()
    seen: list[bool] = []
    model.register_forward_pre_hook(lambda m, i: seen.append(m.training))
    saliency.hvp(model, x, v, target=TARGET)
    assert seen and not any(seen)
    assert all(m.training for m in model.modules())
    assert not model[0].weight.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "0.weight")
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(x, before)


@pytest.mark.parametrize(
    "vectors",
    [
        torch.zeros(3, 3, 4, 4),
        torch.zeros(2, 3, 3, 5, 5),
        torch.zeros(3, 3, 5, 5, dtype=torch.long),
    ],
    ids=["wrong shape", "too many dims", "integer"],
)
def test_bad_vectors_raise(vectors: Tensor) -> None:
    with pytest.raises(InvalidOptionError, match="vectors"):
        saliency.hvp(smooth_cnn(), make(1), vectors)
