"""Propagation rules (saliency.propagation) and the methods built on them: guided backprop,
DeconvNet, guided Grad-CAM; gradient × input with them in the captum agreement table.

References: an independent hand computation (the backward pass written out with transposed
convolutions, no autograd) on a small model whose ReLUs are spelled every way a model can spell
them — functional, in-place, one module reused — and captum where captum is right. captum's
``GuidedBackprop``/``Deconvolution`` hook ``nn.ReLU`` modules only, so on functional ReLUs they
silently keep the ordinary gradient; there the hand computation is the reference.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from captum.attr import Deconvolution, GuidedBackprop, GuidedGradCam, InputXGradient
from reference_models import (
    GRADCAM_LAYERS,
    NAMES,
    reference_inputs,
    reference_model,
    relative_error,
)
from torch import Tensor, nn

import saliency
from saliency.errors import InvalidOptionError
from saliency.propagation import (
    RULES,
    ActivationRule,
    get_rule,
    propagation,
    register_rule,
)
from saliency.testing import assert_same_state, snapshot
from saliency.testing import checked_model as prepared_model

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU activations"),
    pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients"),
]

FUNCTIONAL_STYLES = (
    "F.relu",
    "torch.relu",
    "Tensor.relu",
    "Tensor.relu_",
    "F.relu(inplace=True)",
    "torch.relu_",
)
MODULE_STYLES = ("modules", "inplace modules", "one module reused")
STYLES = FUNCTIONAL_STYLES + MODULE_STYLES
RULE_OF = {"guided_backprop": "guided", "deconvnet": "deconvnet", "gradient": "gradient"}
SHIFT = 0.05


class Styled(nn.Module):
    """conv(3→4) → ReLU → conv(4→5) → ReLU → (− 0.05) → ReLU → mean → linear(5→3), float64,
    with its three ReLUs written in ``style``."""

    def __init__(self, style: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.style = style
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.fc = nn.Linear(5, 3)
        if style in ("modules", "inplace modules"):
            inplace = style == "inplace modules"
            self.relus = nn.ModuleList(nn.ReLU(inplace=inplace) for _ in range(3))
        elif style == "one module reused":
            self.relu = nn.ReLU()
        self.double().eval()

    def act(self, index: int, x: Tensor) -> Tensor:
        style = self.style
        if style == "F.relu":
            return F.relu(x)
        if style == "torch.relu":
            return torch.relu(x)
        if style == "Tensor.relu":
            return x.relu()
        if style == "Tensor.relu_":
            x.relu_()  # the result is used through x: in-place semantics must hold
            return x
        if style == "F.relu(inplace=True)":
            return F.relu(x, inplace=True)
        if style == "torch.relu_":
            return torch.relu_(x)
        if style == "one module reused":
            return self.relu(x)
        return self.relus[index](x)

    def forward(self, x: Tensor) -> Tensor:
        a1 = self.act(0, self.conv1(x))
        a2 = self.act(1, self.conv2(a1))
        a3 = self.act(2, a2 - SHIFT)
        return self.fc(a3.mean((2, 3)))


def hand_backward(model: Styled, x: Tensor, target: Tensor, rule: str) -> Tensor:
    """The modified backward pass of :class:`Styled` written out: transposed convolutions for
    the convolutions, and at each ReLU with forward output a and incoming gradient g:
    gradient g·1[a>0], guided max(0, g·1[a>0]), deconvnet max(0, g)."""

    def through_relu(g: Tensor, a: Tensor) -> Tensor:
        if rule == "gradient":
            return g * (a > 0)
        if rule == "guided":
            return (g * (a > 0)).clamp(min=0)
        assert rule == "deconvnet"
        return g.clamp(min=0)

    with torch.no_grad():
        c1, c2 = model.conv1, model.conv2
        a1 = F.conv2d(x, c1.weight, c1.bias, padding=1).clamp(min=0)
        a2 = F.conv2d(a1, c2.weight, c2.bias, padding=1).clamp(min=0)
        a3 = (a2 - SHIFT).clamp(min=0)
        pixels = a3.shape[2] * a3.shape[3]
        g = (model.fc.weight[target][:, :, None, None] / pixels).expand_as(a3)
        g = through_relu(g, a3)  # the shift passes the gradient unchanged
        g = through_relu(g, a2)
        g = F.conv_transpose2d(g, c2.weight, padding=1)
        g = through_relu(g, a1)
        return F.conv_transpose2d(g, c1.weight, padding=1)


def small_inputs() -> Tensor:
    return torch.randn(3, 3, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(4))


TARGET = torch.tensor([0, 2, 1])


@pytest.mark.parametrize("style", STYLES)
def test_hand_computation_is_the_gradient_for_the_plain_rule(style: str) -> None:
    """The reference itself: with the ordinary ReLU derivative it equals autograd's gradient."""
    model = Styled(style)
    x = small_inputs()
    point = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(point).gather(1, TARGET[:, None]).sum(), point)
    torch.testing.assert_close(hand_backward(model, x, TARGET, "gradient"), grad)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
def test_rules_match_the_hand_computation_whatever_the_relu_spelling(
    method: str, style: str
) -> None:
    model = Styled(style)
    x = small_inputs()
    before = snapshot(model, x)
    ours = saliency.explain(model, x, method, target=TARGET).attributions
    expected = hand_backward(model, x, TARGET, RULE_OF[method])
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-15)
    # The rule changed something: the map is not the ordinary gradient.
    gradient = hand_backward(model, x, TARGET, "gradient")
    assert (expected - gradient).abs().max() > 1e-3 * gradient.abs().max()
    assert_same_state(before, snapshot(model, x))


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
def test_captum_is_right_only_for_relu_modules(method: str, style: str) -> None:
    """Where captum's ReLU-module hooks see every ReLU it equals the hand computation (so it is a
    valid reference on torchvision models); functional ReLUs keep their ordinary gradient in
    captum. A change here means captum changed: update the docs of saliency.propagation."""
    model = Styled(style)
    x = small_inputs()
    captum_class = GuidedBackprop if method == "guided_backprop" else Deconvolution
    theirs = captum_class(model).attribute(x.clone(), target=TARGET)
    expected = hand_backward(model, x, TARGET, RULE_OF[method])
    agrees = torch.allclose(theirs, expected, rtol=1e-10, atol=1e-14)
    assert agrees == (style in MODULE_STYLES), f"captum {method} on {style}: agrees={agrees}"


def test_inplace_relu_still_writes_its_input() -> None:
    z = torch.tensor([-1.0, 0.5, 2.0], requires_grad=True)
    with propagation("guided_relu"):
        y = z * 1.0
        out = y.relu_()
    assert out is y
    assert y.tolist() == [0.0, 0.5, 2.0]
    (grad,) = torch.autograd.grad((y * torch.tensor([3.0, -1.0, 2.0])).sum(), z)
    assert grad.tolist() == [0.0, 0.0, 2.0]  # guided: the negative gradient is cut


def test_no_mode_is_left_active_and_relu_is_ordinary_afterwards() -> None:
    model = Styled("F.relu")
    x = small_inputs()
    saliency.explain(model, x, "guided_backprop", target=TARGET)
    assert not torch._C._is_torch_function_mode_enabled()
    point = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(point).gather(1, TARGET[:, None]).sum(), point)
    torch.testing.assert_close(grad, hand_backward(model, x, TARGET, "gradient"))


@pytest.mark.parametrize("failure", ["later", "backward"])
@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet", "guided_gradcam"])
def test_model_that_raises_leaves_everything_as_before(method: str, failure: str) -> None:
    """Restoration when the model raises in a forward pass after others ran under the rule, or
    in the backward pass; then the same model explains normally (nothing leaked into it or into
    torch's function-mode stack)."""
    model = prepared_model()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    before = snapshot(model, x)
    model.trip.mode = failure
    with pytest.raises(RuntimeError, match="tripped"):
        saliency.explain(model, x, method, target=[1, 3], batch_size=1)
    model.trip.mode = None
    assert not torch._C._is_torch_function_mode_enabled()
    assert_same_state(before, snapshot(model, x))
    again = saliency.explain(model, x, method, target=[1, 3]).attributions
    assert torch.isfinite(again).all()
    assert_same_state(before, snapshot(model, x))


def test_rules_are_scoped_to_their_thread() -> None:
    """While one thread computes guided backprop (paused in its forward pass, its rules
    active), another thread gets the ordinary gradient of the same model."""
    started, release = threading.Event(), threading.Event()

    class Pause(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.armed = False

        def forward(self, x: Tensor) -> Tensor:
            if self.armed and threading.current_thread() is not threading.main_thread():
                started.set()
                assert release.wait(timeout=30)
            return x

    model = Styled("F.relu")
    pause = Pause()
    model.conv2.register_forward_pre_hook(lambda module, args: (pause(args[0]),))
    x = small_inputs()
    results: dict[str, Tensor] = {}
    errors: list[BaseException] = []

    def guided() -> None:
        try:
            results["guided"] = saliency.explain(
                model, x, "guided_backprop", target=TARGET
            ).attributions
        except BaseException as error:
            errors.append(error)

    pause.armed = True
    worker = threading.Thread(target=guided)
    worker.start()
    try:
        assert started.wait(timeout=30), "the guided pass never started"
        point = x.clone().requires_grad_(True)
        (plain,) = torch.autograd.grad(model(point).gather(1, TARGET[:, None]).sum(), point)
    finally:
        release.set()
        worker.join(timeout=60)
    assert not errors, errors
    torch.testing.assert_close(plain, hand_backward(model, x, TARGET, "gradient"))
    torch.testing.assert_close(results["guided"], hand_backward(model, x, TARGET, "guided"))


def test_create_graph_differentiates_the_guided_map() -> None:
    """d/dθ Σ a·R of guided backprop by autograd (create_graph) equals central differences,
    for the last layer's weight, and differs from the plain gradient's derivative."""
    model = Styled("F.relu")
    x = small_inputs()
    weights = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(2))
    parameter = model.fc.weight
    v = torch.randn(parameter.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(3))

    def phi(method: str, create_graph: bool) -> Tensor:
        ex = saliency.explain(model, x, method, target=TARGET, create_graph=create_graph)
        return (ex.attributions * weights).sum()

    derivatives = {}
    for method in ("guided_backprop", "gradient"):
        (gradient,) = torch.autograd.grad(phi(method, True), parameter)
        autograd = float((gradient * v).sum())
        eps = 1e-6
        original = parameter.detach().clone()
        with torch.no_grad():
            parameter.copy_(original + eps * v)
        plus = phi(method, False)
        with torch.no_grad():
            parameter.copy_(original - eps * v)
        minus = phi(method, False)
        with torch.no_grad():
            parameter.copy_(original)
        finite = float((plus - minus) / (2 * eps))
        assert autograd == pytest.approx(finite, rel=1e-6), method
        derivatives[method] = autograd
    assert derivatives["guided_backprop"] != pytest.approx(derivatives["gradient"], rel=1e-3)


def test_compile_option_runs_the_rules_eagerly() -> None:
    model = Styled("F.relu")
    x = small_inputs()
    ours = saliency.explain(model, x, "guided_backprop", target=TARGET, compile=True)
    torch.testing.assert_close(ours.attributions, hand_backward(model, x, TARGET, "guided"))


# ------------------------------------------------------------------------ the rule protocol


class _HalfReLU(ActivationRule):
    """A test rule: half the ordinary ReLU gradient."""

    def backward(self, grad_output: Tensor, output: Tensor) -> Tensor:
        return 0.5 * grad_output * (output > 0)


@pytest.fixture
def half_rule() -> Iterator[str]:
    register_rule("half_relu_test", _HalfReLU())
    yield "half_relu_test"
    del RULES["half_relu_test"]


def test_a_new_rule_plugs_into_the_same_mechanism(half_rule: str) -> None:
    model = Styled("one module reused")
    x = small_inputs()
    point = x.clone().requires_grad_(True)
    with propagation(half_rule):
        (grad,) = torch.autograd.grad(model(point).gather(1, TARGET[:, None]).sum(), point)
    # three ReLUs on every path: (1/2)³ of the gradient
    torch.testing.assert_close(grad, hand_backward(model, x, TARGET, "gradient") / 8)


def test_rule_registry_errors(half_rule: str) -> None:
    with pytest.raises(InvalidOptionError, match="already registered"):
        register_rule(half_rule, _HalfReLU())
    with pytest.raises(InvalidOptionError, match=r"unknown propagation rule 'nope'.*guided_relu"):
        get_rule("nope")
    with (
        pytest.raises(InvalidOptionError, match="both govern"),
        propagation(half_rule, "guided_relu"),
    ):
        pass
    with pytest.raises(TypeError, match="not a propagation rule"):
        register_rule("not_a_rule_test", object())  # type: ignore[arg-type]


def test_plain_rule_is_exactly_autograd_on_resnet18() -> None:
    """The mechanism adds nothing by itself: the plain ReLU rule gives autograd's gradient bit
    for bit on a model with in-place, reused ReLU modules."""
    model = reference_model("resnet18")
    x = reference_inputs()
    point = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(model(point)[:, 3].sum(), point)
    point = x.clone().requires_grad_(True)
    with propagation("relu"):
        (ruled,) = torch.autograd.grad(model(point)[:, 3].sum(), point)
    assert torch.equal(ruled, expected)


# ------------------------------------------------------------------- captum on torchvision

AGREEMENT: dict[tuple[str, str], float] = {}


@pytest.fixture(scope="module", autouse=True)
def _print_agreement() -> Iterator[None]:
    yield
    if AGREEMENT:
        print("\nmax |ours − captum| / max |captum| per method and model:")
        for (method, model), value in sorted(AGREEMENT.items()):
            print(f"  {method:<18s} {model:<14s} {value:.2e}")


def _captum_reference(
    method: str, model: nn.Module, name: str, x: Tensor, target: Tensor
) -> Tensor:
    if method == "guided_backprop":
        return GuidedBackprop(model).attribute(x.clone(), target=target)
    if method == "deconvnet":
        return Deconvolution(model).attribute(x.clone(), target=target)
    if method == "gradient_x_input":
        return InputXGradient(model).attribute(x.clone(), target=target)
    assert method == "guided_gradcam"
    layer = model.get_submodule(GRADCAM_LAYERS[name])
    return GuidedGradCam(model, layer).attribute(
        x.clone(), target=target, interpolate_mode="bilinear"
    )


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "method", ["guided_backprop", "deconvnet", "guided_gradcam", "gradient_x_input"]
)
def test_matches_captum_on_torchvision_models(method: str, name: str) -> None:
    """torchvision's ReLUs are nn.ReLU(inplace=True) modules (reused in ResNet blocks; ReLU6 in
    MobileNetV2, which neither captum nor we modify), where captum's hooks are right."""
    model = reference_model(name)
    x = reference_inputs()
    target = torch.tensor([1, 7])
    before = snapshot(model, x)
    options = {"layer": GRADCAM_LAYERS[name]} if method == "guided_gradcam" else {}
    ours = saliency.explain(model, x, method, target=target, **options).attributions
    assert_same_state(before, snapshot(model, x))
    theirs = _captum_reference(method, model, name, x, target)
    AGREEMENT[(method, name)] = relative_error(ours, theirs)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6 * theirs.abs().max().item())


def test_guided_gradcam_is_guided_backprop_times_the_cam() -> None:
    model = reference_model("resnet18")
    x = reference_inputs()
    target = torch.tensor([2, 5])
    guided = saliency.explain(model, x, "guided_backprop", target=target).attributions
    cam = saliency.explain(model, x, "gradcam", target=target).attributions
    ours = saliency.explain(model, x, "guided_gradcam", target=target).attributions
    assert cam.shape == (2, 1, 64, 64) and ours.shape == x.shape
    torch.testing.assert_close(ours, guided * cam, rtol=0, atol=0)


def test_guided_gradcam_needs_a_module() -> None:
    def model(x: Tensor) -> Tensor:
        return x.flatten(1)[:, :3]

    with pytest.raises(saliency.errors.LayerNotFoundError, match=r"nn\.Module"):
        saliency.explain(model, torch.randn(1, 3, 4, 4), "guided_gradcam")


def test_guided_backprop_works_on_a_plain_function() -> None:
    """No module to hook is needed: the rules follow the function calls."""
    model = Styled("F.relu")
    x = small_inputs()

    def function(points: Tensor) -> Tensor:
        return model(points)

    ours = saliency.explain(function, x, "guided_backprop", target=TARGET).attributions
    torch.testing.assert_close(ours, hand_backward(model, x, TARGET, "guided"))


def test_data_parallel_over_several_devices_is_refused() -> None:
    """Its replicas run in other threads, where the (thread-local) rules do not apply."""
    model = nn.DataParallel(Styled("F.relu"))
    model.device_ids = [0, 1]  # as on a machine with two GPUs (the forward is never reached)
    with pytest.raises(InvalidOptionError, match="DataParallel"):
        saliency.explain(model, small_inputs(), "guided_backprop", target=TARGET)
