"""Correctness of the four built-in methods against captum, direct autograd and hand computations.

Every model is tiny or a randomly initialised torchvision model with few classes and small odd
input sizes; everything is seeded and offline. Run with ``-s`` to see the measured relative errors
against the references (printed per comparison and summarised at the end of the module).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

import saliency
from saliency.baselines import make_baseline
from saliency.engine import Engine
from saliency.errors import (
    InvalidOptionError,
    InvalidTargetError,
    LayerNotFoundError,
    ModelOutputError,
)

# captum's Saliency warns that the inputs did not require grad; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")

METHODS = ("gradient", "integrated_gradients", "smoothgrad", "gradcam")
# Small but non-trivial options per method, used by the cross-method tests.
OPTIONS: dict[str, dict[str, Any]] = {
    "gradient": {},
    "integrated_gradients": {"steps": 5},
    "smoothgrad": {"samples": 3, "noise": 0.1, "seed": 0},
    "gradcam": {},
}
NUM_CLASSES = 5

# float32 comparisons: 1e-5 relative, elementwise. Different summation orders (chunked index_add
# vs one big batch, quadrature sums in another order) give round-off of a few ulps of the
# *largest* summand, so elements near zero get an absolute slack of 1e-6 × the map's max |value|.
RTOL = 1e-5
ATOL_OF_SCALE = 1e-6

_MAX_REL_ERROR: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_relative_errors() -> Iterator[None]:
    yield
    if _MAX_REL_ERROR:
        print("\nmax relative error (max|ours - ref| / max|ref|) per comparison:")
        for name, value in sorted(_MAX_REL_ERROR.items()):
            print(f"  {name:<48s} {value:.3e}")


def assert_matches(
    actual: Tensor, expected: Tensor, label: str, rtol: float = RTOL, atol_of_scale: float = 0.0
) -> None:
    """Elementwise closeness with an absolute slack relative to the map's scale; records error."""
    actual, expected = actual.detach(), expected.detach()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = expected.abs().max().item()
    assert scale > 0, f"{label}: the reference map is all zeros, the comparison would be vacuous"
    rel = ((actual - expected).abs().max() / scale).item()
    _MAX_REL_ERROR[label] = max(rel, _MAX_REL_ERROR.get(label, 0.0))
    print(f"{label}: max rel error {rel:.3e}")
    slack = (atol_of_scale or (ATOL_OF_SCALE if actual.dtype != torch.float64 else 1e-13)) * scale
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=slack)


# ----------------------------------------------------------------------------------- models


def tiny_cnn(seed: int = 0, smooth: bool = False, scale: float = 1.0) -> nn.Sequential:
    """conv → act → conv(stride 2) → act → pool → linear; ``smooth`` uses Softplus/Tanh.

    ``scale`` multiplies the conv weights: large pre-activations make the path integrand of IG
    strongly curved (tanh's poles come close to the real axis), so quadrature error is visible.
    """
    torch.manual_seed(seed)
    model = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 6, 3, padding=1),
            act1=nn.Softplus() if smooth else nn.ReLU(),
            conv2=nn.Conv2d(6, 8, 3, stride=2),
            act2=nn.Tanh() if smooth else nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(8, NUM_CLASSES),
        )
    )
    with torch.no_grad():
        model.conv1.weight.mul_(scale)
        model.conv2.weight.mul_(scale)
    return model.eval()


def inputs_for(n: int = 3, c: int = 3, h: int = 11, w: int = 13, seed: int = 1) -> Tensor:
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def cnn() -> nn.Sequential:
    return tiny_cnn(0)


@pytest.fixture(scope="module")
def smooth_cnn() -> nn.Sequential:
    return tiny_cnn(0, smooth=True, scale=8.0)


@pytest.fixture(scope="module")
def x() -> Tensor:
    return inputs_for()


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=7).eval()


@pytest.fixture(scope="module")
def mobilenet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.mobilenet_v3_small(num_classes=6).eval()


@pytest.fixture(scope="module")
def image_x() -> Tensor:
    return inputs_for(5, 3, 33, 47, seed=2)


class SquareModel(nn.Module):
    """f_k(x) = Σ_i W[k, i] x_i² — IG of class t is exactly W[t, i] (x_i² − x'_i²)."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1).square() @ self.weight.T


class PairOutput(nn.Module):
    """A model with (N, K, 2) outputs: not class scores."""

    def __init__(self) -> None:
        super().__init__()
        self.body = tiny_cnn(0)

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        return torch.stack([out, -out], dim=-1)


# ------------------------------------------------------------------------------- references

TargetRef = Tensor | Callable[[Tensor], Tensor]


def score(outputs: Tensor, target: TargetRef) -> Tensor:
    if callable(target) and not isinstance(target, Tensor):
        return target(outputs)
    return outputs.gather(1, target[:, None]).squeeze(1)


def autograd_gradient(model: Callable[[Tensor], Tensor], x: Tensor, target: TargetRef) -> Tensor:
    point = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(score(model(point), target).sum(), point)
    return grad


def captum_forward(model: nn.Module, target: TargetRef) -> tuple[Callable[..., Tensor], Any]:
    """captum's forward function and target for a class-index or callable target."""
    if callable(target) and not isinstance(target, Tensor):
        return (lambda inp: target(model(inp))), None
    return model, target


def captum_gradient(model: nn.Module, x: Tensor, target: TargetRef) -> Tensor:
    forward, t = captum_forward(model, target)
    return Saliency(forward).attribute(x.clone(), target=t, abs=False)


def captum_ig(
    model: nn.Module, x: Tensor, target: TargetRef, steps: int, baseline: Any = 0.0, **kw: Any
) -> Tensor:
    forward, t = captum_forward(model, target)
    if isinstance(baseline, Tensor):
        baseline = baseline.expand_as(x).contiguous()
    return IntegratedGradients(forward).attribute(
        x.clone(), baselines=baseline, target=t, n_steps=steps, **kw
    )


def gauss_legendre_ig(
    model: nn.Module, x: Tensor, target: TargetRef, steps: int, baseline: float = 0.0
) -> Tensor:
    """IG with Gauss–Legendre nodes/weights in float64 and direct autograd (no captum).

    Needed for float64 checks: captum rounds its IG step sizes to float32.
    """
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    base = torch.full_like(x, baseline)
    total = torch.zeros_like(x)
    for node, weight in zip(0.5 * (nodes + 1), 0.5 * weights, strict=True):
        total += float(weight) * autograd_gradient(model, base + float(node) * (x - base), target)
    return (x - base) * total


def captum_gradcam(
    model: nn.Module, layer: nn.Module, x: Tensor, target: TargetRef, relu: bool = True
) -> Tensor:
    forward, t = captum_forward(model, target)
    maps = LayerGradCam(forward, layer).attribute(x.clone(), target=t, relu_attributions=relu)
    return LayerAttribution.interpolate(maps, tuple(x.shape[-2:]), interpolate_mode="bilinear")


def our_noise(x: Tensor, samples: int, noise: float, seed: int) -> list[Tensor]:
    """The documented noise: one randn(inputs.shape) per copy from Generator.manual_seed(seed)."""
    generator = torch.Generator(x.device).manual_seed(seed)
    flat = x.flatten(1)
    sigma = (noise * (flat.amax(1) - flat.amin(1))).view(-1, 1, 1, 1)
    return [
        sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype) for _ in range(samples)
    ]


def reference_smoothgrad(
    base: Callable[[Tensor], Tensor],
    x: Tensor,
    samples: int,
    noise: float,
    seed: int,
    squared: bool = False,
) -> Tensor:
    total = torch.zeros_like(x)
    for eps in our_noise(x, samples, noise, seed):
        maps = base(x + eps)
        total += maps.square() if squared else maps
    return total / samples


def reference(method: str, model: nn.Module, x: Tensor, target: TargetRef) -> Tensor:
    """An independent reference for ``method`` with the options in OPTIONS."""
    if method == "gradient":
        return captum_gradient(model, x, target)
    if method == "integrated_gradients":
        if x.dtype == torch.float64:
            return gauss_legendre_ig(model, x, target, OPTIONS[method]["steps"])
        return captum_ig(model, x, target, steps=OPTIONS[method]["steps"])
    if method == "smoothgrad":
        opts = OPTIONS[method]
        return reference_smoothgrad(
            lambda p: autograd_gradient(model, p, target),
            x,
            opts["samples"],
            opts["noise"],
            opts["seed"],
        )
    assert method == "gradcam"
    return captum_gradcam(model, model.act2, x, target)


def cosine(a: Tensor, b: Tensor) -> float:
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


# ----------------------------------------------------------------------------------- gradient


def test_gradient_matches_captum_saliency_and_autograd(cnn: nn.Module, x: Tensor) -> None:
    target = torch.tensor([0, 3, 4])
    ours = saliency.explain(cnn, x, method="gradient", target=target).attributions
    assert ours.shape == x.shape
    assert_matches(ours, captum_gradient(cnn, x, target), "gradient vs captum Saliency")
    assert_matches(ours, autograd_gradient(cnn, x, target), "gradient vs autograd")


def test_gradient_matches_captum_on_resnet18(resnet18: nn.Module, image_x: Tensor) -> None:
    ours = saliency.explain(resnet18, image_x, method="gradient", target=2).attributions
    ref = captum_gradient(resnet18, image_x, torch.full((len(image_x),), 2))
    assert_matches(ours, ref, "gradient vs captum Saliency (resnet18)")


def test_gradient_of_a_linear_model_is_its_weight_row() -> None:
    torch.manual_seed(3)
    c, h, w = 2, 5, 3
    linear = nn.Linear(c * h * w, 4)
    model = nn.Sequential(nn.Flatten(), linear).eval()
    x = inputs_for(3, c, h, w)
    ex = saliency.explain(model, x, method="gradient", target=[1, 3, 0])
    expected = linear.weight.detach()[torch.tensor([1, 3, 0])].view(3, c, h, w)
    # The input gradient of a linear layer is one row of W times 1: exact in float32.
    torch.testing.assert_close(ex.attributions, expected, rtol=0, atol=0)


# ------------------------------------------------------------------------- integrated gradients


@pytest.mark.parametrize("steps", [1, 7, 32])
@pytest.mark.parametrize("baseline", ["zero", "half", "tensor", "per-channel"])
def test_ig_matches_captum_gauss_legendre(
    cnn: nn.Module, x: Tensor, steps: int, baseline: str
) -> None:
    spec: Any = {
        "zero": 0.0,
        "half": 0.5,
        "tensor": inputs_for(*x.shape, seed=9) * 0.3,
        "per-channel": torch.tensor([0.1, -0.2, 0.3]).view(1, 3, 1, 1),
    }[baseline]
    target = torch.tensor([1, 1, 4])
    ours = saliency.explain(
        cnn, x, method="integrated_gradients", target=target, steps=steps, baseline=spec
    ).attributions
    ref = captum_ig(cnn, x, target, steps, baseline=spec)
    assert_matches(ours, ref, "integrated_gradients vs captum IG")


def test_ig_matches_captum_on_resnet18(resnet18: nn.Module, image_x: Tensor) -> None:
    x = image_x[:1]
    ours = saliency.explain(
        resnet18, x, method="integrated_gradients", target=6, steps=8, baseline=0.25
    ).attributions
    ref = captum_ig(resnet18, x, torch.tensor([6]), 8, baseline=0.25)
    assert_matches(ours, ref, "integrated_gradients vs captum IG (resnet18)")


@pytest.mark.parametrize("steps", [1, 3, 8])
def test_ig_is_exact_for_a_quadratic_model(steps: int) -> None:
    # Along the path the integrand 2 W x(α) is linear in α: any Gauss–Legendre rule is exact.
    shape = (2, 2, 3, 4)
    weight = inputs_for(1, 3, 2, 12, seed=4).view(3, 24)
    model = SquareModel(weight).eval()
    x = inputs_for(*shape, seed=5)
    base = torch.full(shape, 0.5)
    ex = saliency.explain(
        model, x, method="integrated_gradients", target=[2, 0], steps=steps, baseline=0.5
    )
    w = weight[torch.tensor([2, 0])].view(shape)
    expected = w * (x.square() - base.square())
    assert_matches(ex.attributions, expected, "integrated_gradients vs analytic Σw x²")


def completeness_gap(model: nn.Module, x: Tensor, baseline: Tensor, target: Tensor) -> Tensor:
    with torch.no_grad():
        return score(model(x), target) - score(model(baseline), target)


def ig_relative_completeness(model: nn.Module, x: Tensor, target: Tensor, steps: int) -> float:
    attributions = saliency.explain(
        model, x, method="integrated_gradients", target=target, steps=steps
    ).attributions
    gap = completeness_gap(model, x, torch.zeros_like(x), target)
    return ((attributions.flatten(1).sum(1) - gap).abs() / gap.abs()).max().item()


def test_ig_completeness_and_convergence(smooth_cnn: nn.Module, x: Tensor) -> None:
    target = torch.tensor([1, 2, 3])
    gap = completeness_gap(smooth_cnn, x, torch.zeros_like(x), target)
    assert gap.abs().min() > 0.05, "the smooth model must make f(x) − f(x′) non-trivial"
    errors = {
        steps: ig_relative_completeness(smooth_cnn, x, target, steps) for steps in (16, 32, 64)
    }
    print(f"IG relative completeness error by steps: {errors}")
    assert errors[64] <= 1e-3
    assert errors[16] > errors[32] > errors[64]


def test_ig_return_error_is_the_completeness_error(smooth_cnn: nn.Module, x: Tensor) -> None:
    target = torch.tensor([0, 2, 4])
    ex = saliency.explain(
        smooth_cnn,
        x,
        method="integrated_gradients",
        target=target,
        steps=16,
        baseline=0.5,
        return_error=True,
    )
    own = ex.attributions.flatten(1).sum(1) - completeness_gap(
        smooth_cnn, x, torch.full_like(x, 0.5), target
    )
    error = ex.extras["completeness_error"]
    assert error.shape == (len(x),)
    # Both sides are float32 sums of ~400 terms of size ≤ |f|: a few ulps of |f| of slack.
    torch.testing.assert_close(error, own, rtol=1e-4, atol=1e-6)
    assert own.abs().max() > 1e-5, "16 steps on this model should leave a visible error"
    no_error = saliency.explain(smooth_cnn, x, method="integrated_gradients", target=target)
    assert "completeness_error" not in no_error.extras


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("integrated_gradients", {"return_error": True}),
        ("integrated_gradients", {"steps": "auto"}),
        ("blur_ig", {"return_error": True}),
    ],
)
def test_completeness_error_of_a_float64_run_is_float64(
    method: str, options: dict[str, Any]
) -> None:
    # On a linear model IG's rule is exact, so the true error is float64 rounding (~1e-12),
    # while float32 scores near 1e4 alone are off by ~1e-3 (issue #13, item 15).
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).double().eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.rand(4, 192, generator=generator, dtype=torch.float64) * 50)
        model[1].bias.fill_(3.0)
    x = torch.rand(2, 3, 8, 8, generator=generator, dtype=torch.float64) + 1.0
    ex = saliency.explain(model, x, method, target=[0, 3], **options)
    error = ex.extras["completeness_error"]
    start = saliency.methods.registry.get_method(method).create(**options).path(x).start
    rows = torch.arange(2)
    with torch.no_grad():
        outputs = model(x)[rows, [0, 3]]
        gap = outputs - model(start)[rows, [0, 3]]
    assert outputs.abs().min() > 5e3, "the scores must be near 1e4"
    assert error.dtype == torch.float64
    own = ex.attributions.flatten(1).sum(1) - gap
    torch.testing.assert_close(error, own, rtol=0, atol=1e-9)
    if method == "integrated_gradients":  # exact on a linear model: float64 rounding only
        assert error.abs().max() < 1e-9, error


@pytest.mark.parametrize("steps", [8, 16, 32])
def test_gauss_legendre_beats_trapezoid(smooth_cnn: nn.Module, x: Tensor, steps: int) -> None:
    target = torch.tensor([1, 2, 3])
    gap = completeness_gap(smooth_cnn, x, torch.zeros_like(x), target)

    def relative(attributions: Tensor) -> float:
        return ((attributions.flatten(1).sum(1) - gap).abs() / gap.abs()).max().item()

    ours = relative(
        saliency.explain(
            smooth_cnn, x, method="integrated_gradients", target=target, steps=steps
        ).attributions
    )
    # captum's trapezoid (its weights sum to (n−1)/n, so it is O(1/n))...
    captum_trapezoid = relative(captum_ig(smooth_cnn, x, target, steps, method="riemann_trapezoid"))
    # ...and a textbook trapezoid rule with the same number of gradient evaluations.
    alphas = torch.linspace(0, 1, steps)
    weights = torch.full((steps,), 1 / (steps - 1))
    weights[[0, -1]] /= 2
    integral = sum(
        w * autograd_gradient(smooth_cnn, a * x, target)
        for a, w in zip(alphas, weights, strict=True)
    )
    textbook_trapezoid = relative(x * integral)
    print(
        f"steps={steps}: GL {ours:.2e}, captum trapezoid {captum_trapezoid:.2e}, "
        f"trapezoid {textbook_trapezoid:.2e}"
    )
    assert ours < captum_trapezoid
    assert ours < textbook_trapezoid


def test_blur_baseline_matches_torchvision_gaussian_blur() -> None:
    x = inputs_for(2, 3, 41, 43, seed=6)
    sigma = 0.1 * 43  # documented: σ = 0.1·max(H, W), reflect padding, kernel radius ⌈3σ⌉
    radius = math.ceil(3 * sigma)
    assert 2 * radius + 1 < 41, "large enough that no kernel truncation happens"
    ours = make_baseline("blur", x)
    ref = TF.gaussian_blur(x, kernel_size=[2 * radius + 1] * 2, sigma=[sigma, sigma])
    assert_matches(ours, ref, "blur baseline vs torchvision gaussian_blur")


def test_blur_baseline_properties_on_a_small_image() -> None:
    x = inputs_for(2, 3, 9, 7, seed=7)
    blurred = make_baseline("blur", x)
    assert blurred.shape == x.shape and blurred.dtype == x.dtype
    # A normalised positive kernel: each output is a convex combination of its channel's pixels.
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    assert bool(((blurred >= low - 1e-6) & (blurred <= high + 1e-6)).all())
    assert blurred.std() < 0.5 * x.std(), "blur must remove most of the variation"
    constant = torch.full((1, 3, 9, 7), 0.7)
    torch.testing.assert_close(make_baseline("blur", constant), constant)


def test_uniform_noise_baseline_is_in_range_and_seeded() -> None:
    x = inputs_for(3, 3, 9, 7, seed=8) * torch.tensor([1.0, 5.0, 0.1]).view(3, 1, 1, 1)
    noise = make_baseline("uniform noise", x, seed=3)
    assert noise.shape == x.shape
    for sample, base in zip(x, noise, strict=True):
        assert sample.min() <= base.min() and base.max() <= sample.max()
        # Spread over the sample's range, not a unit interval.
        assert base.max() - base.min() > 0.5 * (sample.max() - sample.min())
    assert torch.equal(noise, make_baseline("uniform noise", x, seed=3))
    assert not torch.equal(noise, make_baseline("uniform noise", x, seed=4))


@pytest.mark.parametrize(("name", "seed"), [("blur", 0), ("uniform noise", 3)])
def test_ig_named_baselines_equal_their_tensors(
    cnn: nn.Module, x: Tensor, name: str, seed: int
) -> None:
    target = torch.tensor([0, 1, 2])
    ours = saliency.explain(
        cnn, x, method="integrated_gradients", target=target, steps=6, baseline=name, seed=seed
    ).attributions
    tensor = make_baseline(name, x, seed=seed)
    explicit = saliency.explain(
        cnn, x, method="integrated_gradients", target=target, steps=6, baseline=tensor
    ).attributions
    assert torch.equal(ours, explicit)
    assert_matches(ours, captum_ig(cnn, x, target, 6, baseline=tensor), f"IG {name!r} vs captum")


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"steps": 0}, "steps=0"),
        ({"steps": -3}, "steps=-3"),
        ({"steps": 2.5}, "steps=2.5"),
        ({"steps": "8"}, "steps='8'"),
        ({"steps": True}, "steps=True"),
        ({"baseline": "zeros"}, "'zeros'"),
        ({"baseline": "Blur"}, "'Blur'"),
        ({"baseline": [0.0, 1.0]}, "[0.0, 1.0]"),
        ({"baseline": True}, "True"),
        ({"baseline": None}, "None"),
        ({"baseline": torch.zeros(2, 2, 2, 2)}, "(2, 2, 2, 2)"),
    ],
)
def test_ig_bad_options_raise(cnn: nn.Module, x: Tensor, options: dict, named: str) -> None:
    with pytest.raises(InvalidOptionError) as info:
        saliency.explain(cnn, x, method="integrated_gradients", target=0, **options)
    assert named in str(info.value)


# --------------------------------------------------------------------------------- smoothgrad


@pytest.mark.parametrize("squared", [False, True])
def test_smoothgrad_reproduces_its_documented_noise(
    cnn: nn.Module, x: Tensor, squared: bool
) -> None:
    # Very different value ranges per sample: σ must follow each sample's own max − min.
    x = x * torch.tensor([1.0, 4.0, 0.2]).view(3, 1, 1, 1)
    target = torch.tensor([2, 0, 1])
    ours = saliency.explain(
        cnn, x, method="smoothgrad", target=target, samples=6, noise=0.2, seed=7, squared=squared
    ).attributions
    ref = reference_smoothgrad(
        lambda p: autograd_gradient(cnn, p, target), x, 6, 0.2, 7, squared=squared
    )
    label = "smoothgrad² vs own noise + autograd" if squared else "smoothgrad vs own noise+autograd"
    assert_matches(ours, ref, label)
    if squared:
        assert bool((ours >= 0).all())


def test_smoothgrad_over_integrated_gradients(cnn: nn.Module, x: Tensor) -> None:
    target = torch.tensor([3, 3, 0])
    ours = saliency.explain(
        cnn,
        x,
        method="smoothgrad",
        target=target,
        base="integrated_gradients",
        steps=8,
        baseline=0.5,
        samples=3,
        noise=0.1,
        seed=11,
    ).attributions
    ref = reference_smoothgrad(lambda p: captum_ig(cnn, p, target, 8, baseline=0.5), x, 3, 0.1, 11)
    assert_matches(ours, ref, "smoothgrad(IG) vs own noise + captum IG")


@pytest.mark.parametrize(
    ("base", "options"), [("gradient", {}), ("integrated_gradients", {"steps": 8})]
)
def test_smoothgrad_without_noise_equals_base(
    cnn: nn.Module, x: Tensor, base: str, options: dict
) -> None:
    plain = saliency.explain(cnn, x, method=base, target=[0, 1, 2], **options).attributions
    smooth = saliency.explain(
        cnn, x, method="smoothgrad", target=[0, 1, 2], samples=1, noise=0.0, base=base, **options
    ).attributions
    assert torch.equal(smooth, plain)


def test_smoothgrad_seed_is_batch_size_invariant(cnn: nn.Module, x: Tensor) -> None:
    results = [
        saliency.explain(
            cnn, x, method="smoothgrad", target=1, samples=5, seed=3, batch_size=b
        ).attributions
        for b in (1, 3, None)
    ]
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], rtol=1e-6, atol=1e-6)
    different = saliency.explain(cnn, x, method="smoothgrad", target=1, samples=5, seed=4)
    assert (different.attributions - results[0]).abs().max() > 1e-3


def test_smoothgrad_noise_does_not_depend_on_block_size(
    cnn: nn.Module, x: Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = saliency.explain(cnn, x, method="smoothgrad", target=1, samples=5, seed=3)
    monkeypatch.setattr(Engine, "block_size", lambda self, point, count: 2)
    blocks = saliency.explain(cnn, x, method="smoothgrad", target=1, samples=5, seed=3)
    torch.testing.assert_close(blocks.attributions, whole.attributions, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"base": "gradcam"}, "gradcam"),
        ({"samples": 0}, "samples=0"),
        ({"noise": -0.1}, "noise=-0.1"),
        ({"squared": 1}, "squared=1"),
        ({"seed": -1}, "seed=-1"),
        ({"steps": 8}, "steps"),  # not an option of the default base "gradient"
    ],
)
def test_smoothgrad_bad_options_raise(cnn: nn.Module, x: Tensor, options: dict, named: str) -> None:
    with pytest.raises(InvalidOptionError) as info:
        saliency.explain(cnn, x, method="smoothgrad", target=0, **options)
    assert named in str(info.value)


# ------------------------------------------------------------------------------------ gradcam


@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("relu", [True, False])
def test_gradcam_matches_captum_on_resnet18(
    resnet18: nn.Module, image_x: Tensor, n: int, relu: bool
) -> None:
    x = image_x[:n]
    target = torch.arange(n) % 7
    ex = saliency.explain(resnet18, x, method="gradcam", target=target, relu=relu)
    assert ex.attributions.shape == (n, 1, 33, 47)
    ref = captum_gradcam(resnet18, resnet18.layer4, x, target, relu=relu)
    assert_matches(ex.attributions, ref, "gradcam vs captum LayerGradCam (resnet18)")
    if not relu:
        assert bool((ex.attributions < 0).any()), "relu=False must keep negative evidence"


def test_gradcam_automatic_layer_is_resnet_layer4(resnet18: nn.Module, image_x: Tensor) -> None:
    x = image_x[:2]
    target = torch.tensor([3, 5])
    ours = saliency.explain(resnet18, x, method="gradcam", target=target, layer=None).attributions
    on_layer4 = captum_gradcam(resnet18, resnet18.layer4, x, target)
    on_layer3 = captum_gradcam(resnet18, resnet18.layer3, x, target)
    assert_matches(ours, on_layer4, "gradcam vs captum LayerGradCam (resnet18)")
    assert (ours - on_layer3).abs().max() > 1e-3 * on_layer3.abs().max()


@pytest.mark.parametrize("as_module", [False, True])
def test_gradcam_layer_by_name_or_module(
    resnet18: nn.Module, image_x: Tensor, as_module: bool
) -> None:
    x = image_x[:3]
    target = torch.tensor([1, 2, 3])
    module = resnet18.get_submodule("layer3.1.conv2")
    layer = module if as_module else "layer3.1.conv2"
    ours = saliency.explain(resnet18, x, method="gradcam", target=target, layer=layer)
    ref = captum_gradcam(resnet18, module, x, target)
    assert_matches(ours.attributions, ref, "gradcam vs captum LayerGradCam (resnet18)")


def test_gradcam_layer_followed_by_an_inplace_op(resnet18: nn.Module, image_x: Tensor) -> None:
    # layer3.1.bn1's output goes through an in-place ReLU: the captured map must be pre-ReLU
    # (relu=False keeps the sign, so a post-ReLU capture would show).
    x = image_x[:1]
    target = torch.tensor([4])
    ours = saliency.explain(
        resnet18, x, method="gradcam", target=target, layer="layer3.1.bn1", relu=False
    )
    ref = captum_gradcam(resnet18, resnet18.layer3[1].bn1, x, target, relu=False)
    assert_matches(ours.attributions, ref, "gradcam vs captum LayerGradCam (resnet18)")


@pytest.mark.parametrize("relu", [True, False])
def test_gradcam_matches_captum_on_mobilenet(
    mobilenet: nn.Module, image_x: Tensor, relu: bool
) -> None:
    x = image_x[:3]
    target = torch.tensor([5, 0, 2])
    ours = saliency.explain(mobilenet, x, method="gradcam", target=target, relu=relu)
    assert ours.attributions.shape == (3, 1, 33, 47)
    # Automatic layer: the last spatial map is the output of `features` (576 × 2 × 2).
    ref = captum_gradcam(mobilenet, mobilenet.features, x, target, relu=relu)
    assert_matches(ours.attributions, ref, "gradcam vs captum LayerGradCam (mobilenet)")


def hand_model() -> nn.Module:
    """conv(1→2, kernel 2×3, stride 2×3) → flatten → linear(8 → 3) with hand-set weights."""
    conv = nn.Conv2d(1, 2, kernel_size=(2, 3), stride=(2, 3), bias=False)
    fc = nn.Linear(8, 3)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0] = 1.0  # channel 0: the sum of each 2×3 block
        conv.weight[1, 0, 0, 0] = 1.0  # channel 1: the block's top-left pixel
        fc.weight.copy_(
            torch.tensor(
                [
                    [0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
                    [1.0, -2.0, 0.5, 3.0, 1.0, -4.0, -2.0, 3.0],
                    [0.3, 0.3, 0.3, 0.3, -0.3, -0.3, -0.3, -0.3],
                ]
            )
        )
        fc.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
    return nn.Sequential(OrderedDict(conv=conv, flatten=nn.Flatten(), fc=fc)).eval()


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("layer", [None, "conv"])
def test_gradcam_hand_computed(relu: bool, layer: str | None) -> None:
    # x[i][j] = (7i + j) mod 5 − 2 on a 5×7 image (the last row and column are not covered).
    x = torch.tensor([[[[(7 * i + j) % 5 - 2.0 for j in range(7)] for i in range(5)]]])
    # By hand: A⁰ = 2×3 block sums, A¹ = top-left pixels of the blocks.
    a0 = torch.tensor([[0.0, -2.0], [-1.0, 2.0]])
    a1 = torch.tensor([[-2.0, 1.0], [2.0, 0.0]])
    model = hand_model()
    torch.testing.assert_close(model.conv(x)[0], torch.stack([a0, a1]))  # fixture sanity
    # ∂f_1/∂A^k_uv = W[1, 4k + 2u + v], so α_0 = (1 − 2 + 0.5 + 3)/4, α_1 = (1 − 4 − 2 + 3)/4.
    alpha0, alpha1 = 0.625, -0.5
    signed = torch.tensor([[1.0, -1.75], [-1.625, 1.25]])
    torch.testing.assert_close(alpha0 * a0 + alpha1 * a1, signed)
    small = signed.clamp_min(0) if relu else signed
    expected = F.interpolate(small[None, None], size=(5, 7), mode="bilinear", align_corners=False)
    ex = saliency.explain(model, x, method="gradcam", target=1, layer=layer, relu=relu)
    torch.testing.assert_close(ex.attributions, expected, rtol=1e-6, atol=1e-7)
    # align_corners=False clamps at the borders: the corners keep the corner cells' values.
    assert ex.attributions[0, 0, 0, 0].item() == pytest.approx(1.0)
    assert ex.attributions[0, 0, -1, -1].item() == pytest.approx(1.25)


def test_gradcam_unknown_layer_lists_close_names(resnet18: nn.Module, image_x: Tensor) -> None:
    with pytest.raises(LayerNotFoundError) as info:
        saliency.explain(resnet18, image_x[:1], method="gradcam", layer="layer3.1.conv3")
    message = str(info.value)
    assert "'layer3.1.conv3'" in message
    assert "layer3.1.conv2" in message
    with pytest.raises(LayerNotFoundError):
        saliency.explain(resnet18, image_x[:1], method="gradcam", layer=nn.Conv2d(3, 3, 1))


# ------------------------------------------------------------------------------------ targets


def _callable_target(out: Tensor) -> Tensor:
    return out[:, 2] - out[:, 1]


TARGET_SPECS: dict[str, Callable[[], Any]] = {
    "None": lambda: None,
    "int": lambda: 3,
    "list": lambda: [4, 0, 2],
    "tuple": lambda: (1, 1, 3),
    "LongTensor": lambda: torch.tensor([2, 4, 0]),
    "0-d tensor": lambda: torch.tensor(1),
    "callable": lambda: _callable_target,
}


def resolved(spec: Any, model: nn.Module, x: Tensor) -> TargetRef:
    if callable(spec) and not isinstance(spec, Tensor):
        return spec
    if spec is None:
        with torch.no_grad():
            return model(x).argmax(1)
    return torch.as_tensor(spec).long().expand(len(x)).clone()


@pytest.mark.parametrize("kind", list(TARGET_SPECS))
@pytest.mark.parametrize("method", METHODS)
def test_targets_for_every_method(cnn: nn.Module, x: Tensor, method: str, kind: str) -> None:
    spec = TARGET_SPECS[kind]()
    target = resolved(spec, cnn, x)
    ex = saliency.explain(cnn, x, method=method, target=spec, **OPTIONS[method])
    if kind == "callable":
        assert ex.targets is None
    else:
        assert ex.targets is not None and ex.targets.dtype == torch.long
        assert torch.equal(ex.targets, target)
    assert_matches(ex.attributions, reference(method, cnn, x, target), f"{method} vs reference")


BAD_TARGETS: dict[str, Any] = {
    "out of range": NUM_CLASSES,
    "negative": -1,
    "wrong length": [0, 1],
    "float tensor": torch.tensor([0.0, 1.0, 2.0]),
    "bool": True,
    "string": "cat",
    "out of range in a list": [0, 1, NUM_CLASSES],
    "2-D tensor": torch.zeros(3, 1, dtype=torch.long),
}


@pytest.mark.parametrize("kind", list(BAD_TARGETS))
@pytest.mark.parametrize("method", METHODS)
def test_bad_targets_raise(cnn: nn.Module, x: Tensor, method: str, kind: str) -> None:
    with pytest.raises(InvalidTargetError) as info:
        saliency.explain(cnn, x, method=method, target=BAD_TARGETS[kind], **OPTIONS[method])
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("target", [1, None])
@pytest.mark.parametrize("method", METHODS)
def test_non_class_outputs_raise_model_output_error(x: Tensor, method: str, target: Any) -> None:
    with pytest.raises(ModelOutputError) as info:
        saliency.explain(PairOutput().eval(), x, method=method, target=target, **OPTIONS[method])
    assert "(3, 5, 2)" in str(info.value)


# --------------------------------------------------------------------- batch size, precision


@pytest.mark.parametrize("method", METHODS)
def test_batch_size_invariance(cnn: nn.Module, x: Tensor, method: str) -> None:
    results = [
        saliency.explain(
            cnn, x, method=method, target=[0, 2, 4], batch_size=b, **OPTIONS[method]
        ).attributions
        for b in (1, 2, None)
    ]
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("method", ["gradient", "gradcam"])
def test_bf16_precision_on_cpu(resnet18: nn.Module, image_x: Tensor, method: str) -> None:
    x = image_x[:3]
    fp32 = saliency.explain(resnet18, x, method=method, target=[0, 1, 2]).attributions
    bf16 = saliency.explain(
        resnet18, x, method=method, target=[0, 1, 2], precision="bf16"
    ).attributions
    assert bf16.dtype == torch.float32
    assert bf16.shape == fp32.shape
    # bf16 keeps ~3 significant digits per operation; through a ResNet the map's direction is
    # what survives, so compare with cosine similarity, per sample.
    similarities = [cosine(a, b) for a, b in zip(bf16, fp32, strict=True)]
    print(f"{method}: bf16 vs fp32 cosine similarity {similarities}")
    assert min(similarities) > 0.95


@pytest.mark.parametrize("precision", ["fp8", "float32", "BF16", None])
def test_unknown_precision_raises(cnn: nn.Module, x: Tensor, precision: Any) -> None:
    with pytest.raises(InvalidOptionError) as info:
        saliency.explain(cnn, x, method="gradient", precision=precision)
    assert repr(precision) in str(info.value)


# ------------------------------------------------------------------------ dtype / device / inputs


@pytest.fixture(scope="module")
def cnn64() -> nn.Module:
    return tiny_cnn(0).double()


@pytest.mark.parametrize("method", METHODS)
def test_float64_inputs_give_float64_attributions(cnn64: nn.Module, x: Tensor, method: str) -> None:
    x64 = x.double()
    ex = saliency.explain(cnn64, x64, method=method, target=[1, 2, 3], **OPTIONS[method])
    assert ex.attributions.dtype == torch.float64
    assert ex.attributions.device == x64.device


@pytest.mark.parametrize("method", METHODS)
def test_float64_attributions_have_float64_precision(
    cnn64: nn.Module, x: Tensor, method: str
) -> None:
    # A float64 result must not have been computed in float32 (which would be off by ~1e-7).
    # Known failure for gradcam: methods/gradcam.py casts the CAM to float32 (`.float()`)
    # before upsampling, so float64 inputs get float64-typed maps of float32 precision.
    x64 = x.double()
    target = torch.tensor([1, 2, 3])
    ex = saliency.explain(cnn64, x64, method=method, target=target, **OPTIONS[method])
    assert_matches(
        ex.attributions,
        reference(method, cnn64, x64, target),
        f"{method} float64 vs reference",
        rtol=1e-10,
    )


@pytest.mark.parametrize("method", METHODS)
def test_inputs_are_not_modified(cnn: nn.Module, x: Tensor, method: str) -> None:
    inputs = x.clone()
    ex = saliency.explain(cnn, inputs, method=method, target=None, **OPTIONS[method])
    assert torch.equal(inputs, x)
    assert ex.attributions.device == inputs.device
    assert ex.attributions.dtype == torch.float32
    assert not ex.attributions.requires_grad
