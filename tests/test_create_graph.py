"""Second-order use: with ``create_graph=True`` attributions are differentiable.

For every registered method, the directional derivative of a scalar functional of the
attributions, ``Φ = Σ a(x, θ) · R``, computed by autograd, matches central finite differences,
with respect to the inputs and with respect to a parameter tensor (float64, smooth model).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from smooth_models import smooth_cnn, smooth_vit
from torch import Tensor, nn

import saliency

METHODS = saliency.list_methods()
TARGET = [0, 2]
EPS = 1e-5
RTOL = 1e-4
# Small option values that keep every call fast (and a fixed seed: SmoothGrad's noise must be
# the same in every finite-difference evaluation); other methods use their defaults.
FAST_OPTIONS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"steps": 4},
    "smoothgrad": {"samples": 3, "seed": 0},
    "attention_rollout": {},
    "transformer_attribution": {},
}


def options_for(name: str) -> dict[str, Any]:
    return dict(FAST_OPTIONS.get(name, {}))


def model_for(method: str) -> nn.Module:
    """The smooth CNN, or a smooth ViT for the methods that need attention."""
    cnn = smooth_cnn()
    return cnn if saliency.get_method(method).applies_to(cnn) else smooth_vit()


def first_weight(model: nn.Module) -> Tensor:
    """The first weight tensor of the model (a convolution's)."""
    return next(p for p in model.parameters() if p.ndim == 4)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_inputs() -> Tensor:
    return torch.randn(2, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def functional(model: nn.Module, method: str, weights: Tensor) -> Callable[[Tensor, bool], Tensor]:
    """Φ(x) = Σ attributions(x) · R, for a fixed random R."""

    def phi(inputs: Tensor, create_graph: bool) -> Tensor:
        ex = saliency.explain(
            model, inputs, method, target=TARGET, create_graph=create_graph, **options_for(method)
        )
        attributions = ex.attributions
        assert attributions.dtype == torch.float64
        return (attributions * weights[:, : attributions.shape[1]]).sum()

    return phi


def direction(inputs: Tensor, kind: str) -> Tensor:
    """A random direction; ``range_preserving`` is zero at each sample's max and min, so a small
    step keeps every sample's value range (and thus SmoothGrad's σ) unchanged."""
    v = torch.randn(inputs.shape, dtype=inputs.dtype, generator=torch.Generator().manual_seed(3))
    if kind == "range_preserving":
        flat = v.view(len(v), -1)
        values = inputs.view(len(inputs), -1)
        rows = torch.arange(len(v))
        flat[rows, values.argmax(1)] = 0
        flat[rows, values.argmin(1)] = 0
    return v


def assert_close_derivative(autograd: float, finite: float) -> None:
    assert abs(autograd - finite) <= RTOL * abs(finite) + 1e-10, (
        f"autograd directional derivative {autograd!r} != finite differences {finite!r} "
        f"(relative error {abs(autograd - finite) / abs(finite):.2e})"
    )


@pytest.mark.parametrize("kind", ["random", "range_preserving"])
@pytest.mark.parametrize("method", METHODS)
def test_derivative_with_respect_to_inputs(method: str, kind: str) -> None:
    model = model_for(method)
    inputs = make_inputs()
    weights = torch.randn(
        inputs.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    v = direction(inputs, kind)
    phi = functional(model, method, weights)

    leaf = inputs.clone().requires_grad_(True)
    value = phi(leaf, True)
    assert value.requires_grad
    (gradient,) = torch.autograd.grad(value, leaf)
    autograd = float((gradient * v).sum())
    finite = float((phi(inputs + EPS * v, False) - phi(inputs - EPS * v, False)) / (2 * EPS))

    assert_close_derivative(autograd, finite)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method", METHODS)
def test_derivative_with_respect_to_a_parameter(method: str) -> None:
    model = model_for(method)
    inputs = make_inputs()
    weights = torch.randn(
        inputs.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    parameter = first_weight(model)
    v = torch.randn(
        parameter.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4)
    )
    phi = functional(model, method, weights)

    value = phi(inputs, True)
    assert value.requires_grad
    (gradient,) = torch.autograd.grad(value, parameter)
    autograd = float((gradient * v).sum())
    original = parameter.detach().clone()
    with torch.no_grad():
        parameter.copy_(original + EPS * v)
    plus = phi(inputs, False)
    with torch.no_grad():
        parameter.copy_(original - EPS * v)
    minus = phi(inputs, False)
    with torch.no_grad():
        parameter.copy_(original)
    finite = float((plus - minus) / (2 * EPS))

    assert_close_derivative(autograd, finite)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("method", METHODS)
def test_create_graph_true_attributions_require_grad(method: str) -> None:
    model = model_for(method)
    inputs = make_inputs()
    # Even with inputs that do not require grad, the graph reaches the parameters.
    ex = saliency.explain(
        model, inputs, method, target=TARGET, create_graph=True, **options_for(method)
    )
    assert ex.attributions.requires_grad
    assert ex.attributions.grad_fn is not None
    assert all(p.grad is None for p in model.parameters())
    assert not inputs.requires_grad


@pytest.mark.parametrize("inputs_require_grad", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_create_graph_false_gives_plain_tensors(method: str, inputs_require_grad: bool) -> None:
    model = model_for(method)
    inputs = make_inputs().requires_grad_(inputs_require_grad)
    ex = saliency.explain(model, inputs, method, target=TARGET, **options_for(method))
    assert not ex.attributions.requires_grad
    assert ex.attributions.grad_fn is None
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert inputs.grad is None


@pytest.mark.parametrize("method", METHODS)
def test_create_graph_does_not_change_values(method: str) -> None:
    model = model_for(method)
    inputs = make_inputs()
    first = saliency.explain(model, inputs, method, target=TARGET, **options_for(method))
    second = saliency.explain(
        model, inputs, method, target=TARGET, create_graph=True, **options_for(method)
    )
    torch.testing.assert_close(
        second.attributions.detach(), first.attributions, rtol=1e-12, atol=1e-14
    )


def test_gradcam_float64_keeps_float64_precision() -> None:
    """Grad-CAM of a float64 model equals a float64 reference to float64 precision."""
    model = smooth_cnn()
    inputs = make_inputs()
    captured: dict[str, Tensor] = {}
    handle = model[3].register_forward_hook(lambda m, i, o: captured.__setitem__("a", o))
    try:
        outputs = model(inputs)
    finally:
        handle.remove()
    activations = captured["a"]
    (grads,) = torch.autograd.grad(outputs[[0, 1], TARGET].sum(), activations)
    cam = F.relu((grads.mean((2, 3), keepdim=True) * activations).sum(1, keepdim=True))
    expected = F.interpolate(cam, size=inputs.shape[-2:], mode="bilinear", align_corners=False)

    ex = saliency.explain(model, inputs, "gradcam", target=TARGET)
    assert ex.attributions.dtype == torch.float64
    torch.testing.assert_close(ex.attributions, expected.detach(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("baseline", ["blur", "uniform noise"])
def test_integrated_gradients_named_baseline_depends_on_inputs(baseline: str) -> None:
    """A named baseline is a function of the inputs (a blur of x; noise in x's range), so the
    derivative of the attributions includes its dependence on x."""
    model = smooth_cnn()
    inputs = make_inputs()
    weights = torch.randn(
        inputs.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    v = direction(inputs, "random")

    def phi(x: Tensor, create_graph: bool) -> Tensor:
        ex = saliency.explain(
            model,
            x,
            "integrated_gradients",
            target=TARGET,
            steps=4,
            baseline=baseline,
            create_graph=create_graph,
        )
        return (ex.attributions * weights).sum()

    leaf = inputs.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(phi(leaf, True), leaf)
    autograd = float((gradient * v).sum())
    finite = float((phi(inputs + EPS * v, False) - phi(inputs - EPS * v, False)) / (2 * EPS))
    assert_close_derivative(autograd, finite)
