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
from smooth_models import smooth_cnn
from torch import Tensor, nn

import saliency
from saliency.errors import InvalidOptionError

# Methods that cannot differentiate their attributions (captum's) refuse create_graph=True.
# Attention methods need a vision transformer (tests/test_token_models.py differentiates them).
DIFFERENTIABLE = [
    m
    for m in saliency.list_methods()
    if saliency.get_method(m).supports_create_graph
    and saliency.get_method(m).applies_to(smooth_cnn())
]
REFUSING = [m for m in saliency.list_methods() if not saliency.get_method(m).supports_create_graph]
TARGET = [0, 2]
EPS = 1e-5
RTOL = 1e-4
pytestmark = pytest.mark.usefixtures("one_torch_thread")
# Exact Grad-CAM++ differentiated again: fourth derivatives through the conv-Tanh head after the
# Softplus (after the automatic layer, the Tanh, the head is linear).
LAYER_OPTIONS = {"gradcam_pp": {"layer": "1"}}


@pytest.fixture
def method_options(method: str, method_options: dict[str, Any]) -> dict[str, Any]:
    """The shared fast options, with this module's layer choices."""
    return {**method_options, **LAYER_OPTIONS.get(method, {})}


def make_inputs() -> Tensor:
    return torch.randn(2, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def functional(
    model: nn.Module, method: str, options: dict[str, Any], weights: Tensor
) -> Callable[[Tensor, bool], Tensor]:
    """Φ(x) = Σ attributions(x) · R, for a fixed random R (``options`` with a fixed seed: the same
    SmoothGrad noise in every finite-difference evaluation)."""

    def phi(inputs: Tensor, create_graph: bool) -> Tensor:
        ex = saliency.explain(
            model, inputs, method, target=TARGET, create_graph=create_graph, **options
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
@pytest.mark.parametrize("method", DIFFERENTIABLE)
def test_derivative_with_respect_to_inputs(
    method: str, method_options: dict[str, Any], kind: str
) -> None:
    model = smooth_cnn()
    inputs = make_inputs()
    weights = torch.randn(
        inputs.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    v = direction(inputs, kind)
    phi = functional(model, method, method_options, weights)

    leaf = inputs.clone().requires_grad_(True)
    value = phi(leaf, True)
    assert value.requires_grad
    (gradient,) = torch.autograd.grad(value, leaf)
    autograd = float((gradient * v).sum())
    finite = float((phi(inputs + EPS * v, False) - phi(inputs - EPS * v, False)) / (2 * EPS))

    assert_close_derivative(autograd, finite)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method", DIFFERENTIABLE)
def test_derivative_with_respect_to_a_parameter(
    method: str, method_options: dict[str, Any]
) -> None:
    model = smooth_cnn()
    inputs = make_inputs()
    weights = torch.randn(
        inputs.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    parameter = model[0].weight
    v = torch.randn(
        parameter.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4)
    )
    phi = functional(model, method, method_options, weights)

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


@pytest.mark.parametrize("method", DIFFERENTIABLE)
def test_create_graph_true_attributions_require_grad(
    method: str, method_options: dict[str, Any]
) -> None:
    model = smooth_cnn()
    inputs = make_inputs()
    # Even with inputs that do not require grad, the graph reaches the parameters.
    ex = saliency.explain(model, inputs, method, target=TARGET, create_graph=True, **method_options)
    assert ex.attributions.requires_grad
    assert ex.attributions.grad_fn is not None
    assert all(p.grad is None for p in model.parameters())
    assert not inputs.requires_grad


@pytest.mark.parametrize("inputs_require_grad", [False, True])
@pytest.mark.parametrize("method", DIFFERENTIABLE)
def test_create_graph_false_gives_plain_tensors(
    method: str, method_options: dict[str, Any], inputs_require_grad: bool
) -> None:
    model = smooth_cnn()
    inputs = make_inputs().requires_grad_(inputs_require_grad)
    ex = saliency.explain(model, inputs, method, target=TARGET, **method_options)
    assert not ex.attributions.requires_grad
    assert ex.attributions.grad_fn is None
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert inputs.grad is None


@pytest.mark.parametrize("method", DIFFERENTIABLE)
def test_create_graph_does_not_change_values(method: str, method_options: dict[str, Any]) -> None:
    model = smooth_cnn()
    inputs = make_inputs()
    first = saliency.explain(model, inputs, method, target=TARGET, **method_options)
    second = saliency.explain(
        model, inputs, method, target=TARGET, create_graph=True, **method_options
    )
    torch.testing.assert_close(
        second.attributions.detach(), first.attributions, rtol=1e-12, atol=1e-14
    )


@pytest.mark.parametrize("method", REFUSING)
def test_methods_that_cannot_differentiate_refuse_create_graph(
    method: str, method_options: dict[str, Any]
) -> None:
    model = smooth_cnn()
    calls: list[int] = []
    model.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(InvalidOptionError, match="create_graph=True is not supported") as info:
        saliency.explain(
            model, make_inputs(), method, target=TARGET, create_graph=True, **method_options
        )
    assert repr(method) in str(info.value)
    assert not calls, "refused before any work"


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
