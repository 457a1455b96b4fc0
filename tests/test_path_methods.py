"""Path methods: Guided IG, Blur IG, Expected Gradients, and integrated gradients with
``steps="auto"``.

References: PAIR saliency's analytic Guided IG tests (the same functions, options and numbers as
``saliency/core/guided_ig_test.py``), captum's ``GradientShap`` given the same draws, integrated
gradients computed independently (Gauss–Legendre or Riemann sums with direct autograd), finite
differences, and completeness.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from captum.attr import GradientShap
from smooth_models import smooth_cnn
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

import saliency
from saliency.engine import Engine
from saliency.errors import InvalidOptionError
from saliency.methods.blur_ig import BlurIG
from saliency.methods.expected_gradients import ExpectedGradients

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ------------------------------------------------------------------------------------ models


def relu_cnn(seed: int = 0) -> nn.Sequential:
    """conv → ReLU → conv(stride 2) → ReLU → pool → linear, 4 classes, float64."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).double()


class Power(nn.Module):
    """f_k(x) = Σ_i W[k, i] x_i^p: along a straight path the IG integrand is a polynomial of
    degree p − 1 in α."""

    def __init__(self, weight: Tensor, power: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.power = power

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1).pow(self.power) @ self.weight.T


def inputs_for(n: int = 3, h: int = 9, w: int = 11, seed: int = 1) -> Tensor:
    return torch.randn(
        n, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )


def of_two_features(function: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """A model of inputs (N, 2, 1, 1) with one output: function(x1, x2)."""
    return lambda x: function(x[:, 0, 0, 0], x[:, 1, 0, 0])[:, None]


def pair(a: float, b: float) -> Tensor:
    return torch.tensor([a, b], dtype=torch.float64).view(1, 2, 1, 1)


def autograd_gradient(model: Callable[[Tensor], Tensor], points: Tensor, target: Tensor) -> Tensor:
    points = points.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(points).gather(1, target[:, None]).sum(), points)
    return grad


def scores(model: Callable[[Tensor], Tensor], points: Tensor, target: Tensor) -> Tensor:
    with torch.no_grad():
        return model(points).gather(1, target[:, None]).squeeze(1)


def gauss_legendre_ig(
    model: nn.Module, x: Tensor, target: Tensor, steps: int, baseline: float = 0.0
) -> Tensor:
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    base = torch.full_like(x, baseline)
    total = torch.zeros_like(x)
    for node, weight in zip(0.5 * (nodes + 1), 0.5 * weights, strict=True):
        total += float(weight) * autograd_gradient(model, base + float(node) * (x - base), target)
    return (x - base) * total


def relative(a: Tensor, b: Tensor) -> float:
    return float((a - b).flatten(1).norm(dim=1).max() / b.flatten(1).norm(dim=1).min())


# ---------------------------------------------------------- Guided IG: PAIR's analytic tests

LINEAR = of_two_features(lambda x1, x2: 2 * x1 + x2)
QUADRATIC = of_two_features(lambda x1, x2: 2 * x1**2 + x2**2)
DEPENDENT = of_two_features(lambda x1, x2: (2 * x1 + x2) ** 2)


def guided(model: Callable[[Tensor], Tensor], x: Tensor, **options: Any) -> list[float]:
    ex = saliency.explain(model, x, "guided_ig", target=0, **options)
    return ex.attributions.flatten().tolist()


@pytest.mark.parametrize(
    ("model", "x", "options", "expected", "rtol"),
    [
        # Linear functions give integrated gradients whatever the options.
        (
            LINEAR,
            (10.0, 5.0),
            {"baseline": pair(-1, -3), "steps": 10, "fraction": 0.1, "max_dist": 0.5},
            [22.0, 8.0],
            1e-7,
        ),
        (LINEAR, (10.0, 5.0), {"steps": 10, "fraction": 0.1, "max_dist": 0.5}, [20.0, 5.0], 1e-7),
        # Independent partial derivatives: integrated gradients too, also from above.
        (
            QUADRATIC,
            (3.0, 3.0),
            {"steps": 1000, "fraction": 0.1, "max_dist": 0.4},
            [18.0, 9.0],
            0.01,
        ),
        (
            QUADRATIC,
            (0.0, 0.0),
            {"baseline": pair(3, 3), "steps": 1000, "fraction": 0.1, "max_dist": 0.4},
            [-18.0, -9.0],
            0.01,
        ),
        # Dependent partials: max_dist=0 or fraction=1 is integrated gradients...
        (
            DEPENDENT,
            (3.0, 3.0),
            {"steps": 1000, "fraction": 0.1, "max_dist": 0.0},
            [54.0, 27.0],
            0.01,
        ),
        (
            DEPENDENT,
            (3.0, 3.0),
            {"steps": 1000, "fraction": 1.0, "max_dist": 0.5},
            [54.0, 27.0],
            0.01,
        ),
        # ...and the unbounded path moves x2 first, where the gradient is smaller.
        (
            DEPENDENT,
            (3.0, 3.0),
            {"steps": 1000, "fraction": 0.1, "max_dist": 1.0},
            [72.0, 9.0],
            0.01,
        ),
    ],
    ids=[
        "linear-baseline",
        "linear",
        "quadratic",
        "quadratic-reversed",
        "dependent-ig-dist",
        "dependent-ig-fraction",
        "dependent-unbounded",
    ],
)
def test_guided_ig_matches_pairs_analytic_cases(
    model: Callable[[Tensor], Tensor],
    x: tuple[float, float],
    options: dict[str, Any],
    expected: list[float],
    rtol: float,
) -> None:
    np.testing.assert_allclose(guided(model, pair(*x), **options), expected, rtol=rtol)


def test_guided_ig_bounded_dependent_quadratic_is_complete_and_between() -> None:
    mask = guided(DEPENDENT, pair(3, 3), steps=1000, fraction=0.1, max_dist=0.2)
    assert abs(sum(mask) - 81.0) <= 0.1  # f(3, 3) − f(0, 0) = 81
    assert 55.0 < mask[0] < 71.0 and 10.0 < mask[1] < 26.0  # between IG and unbounded


@pytest.mark.parametrize("options", [{"max_dist": 0.0}, {"fraction": 1.0, "max_dist": 0.3}])
def test_guided_ig_on_the_straight_line_is_left_riemann_ig(options: dict[str, Any]) -> None:
    model, x, target, steps = relu_cnn(), inputs_for(), torch.tensor([0, 3, 1]), 7
    expected = (
        sum(autograd_gradient(model, k / steps * x, target) for k in range(steps)) * x / steps
    )
    ours = saliency.explain(model, x, "guided_ig", target=target, steps=steps, **options)
    torch.testing.assert_close(ours.attributions, expected, rtol=1e-10, atol=1e-12)


def test_guided_ig_is_complete_and_leaves_the_straight_line() -> None:
    model, x, target = smooth_cnn(), inputs_for(), torch.tensor([0, 1, 2])
    gap = scores(model, x, target) - scores(model, torch.full_like(x, 0.5), target)
    ig = gauss_legendre_ig(model, x, target, 32, baseline=0.5)
    distances, errors = [], []
    for steps, max_dist in ((64, 0.02), (256, 0.02), (256, 0.5)):
        ex = saliency.explain(
            model, x, "guided_ig", target=target, steps=steps, baseline=0.5, max_dist=max_dist
        )
        errors.append(float(((ex.attributions.flatten(1).sum(1) - gap).abs() / gap.abs()).max()))
        distances.append(relative(ex.attributions, ig))
    print(f"guided IG: completeness errors {errors}, distances from IG {distances}")
    # A left Riemann sum along the guided path: the completeness error falls like 1/steps.
    assert errors[1] < errors[0] / 2 and max(errors) < 5e-2
    assert 1e-2 < distances[1] < distances[2], "the further it may go, the more it differs"


def test_guided_ig_samples_are_independent() -> None:
    model, x, target = relu_cnn(), inputs_for(), torch.tensor([2, 0, 1])
    batch = saliency.explain(model, x, "guided_ig", target=target, steps=16).attributions
    for i in range(len(x)):
        alone = saliency.explain(
            model, x[i : i + 1], "guided_ig", target=target[i : i + 1], steps=16
        ).attributions
        torch.testing.assert_close(batch[i : i + 1], alone, rtol=1e-9, atol=1e-12)


def test_guided_ig_refuses_create_graph_before_any_work() -> None:
    calls = []

    def model(x: Tensor) -> Tensor:
        calls.append(len(x))
        return LINEAR(x)

    with pytest.raises(InvalidOptionError, match="create_graph"):
        saliency.explain(model, pair(1, 2), "guided_ig", target=0, create_graph=True)
    assert not calls


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"steps": 0}, "steps=0"),
        ({"fraction": 0.0}, "fraction=0.0"),
        ({"fraction": 1.5}, "1.5"),
        ({"max_dist": -0.1}, "max_dist=-0.1"),
        ({"baseline": "zeros"}, "'zeros'"),
    ],
)
def test_guided_ig_bad_options(options: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidOptionError) as info:
        saliency.explain(LINEAR, pair(1, 2), "guided_ig", target=0, **options)
    assert named in str(info.value)


# -------------------------------------------------------------------------------- Blur IG


def test_blur_ig_path_runs_from_the_blurred_input_to_the_input() -> None:
    x = inputs_for(2, 41, 43)
    sigma = 4.0
    path = BlurIG(max_sigma=sigma).path(x)
    radius = math.ceil(3 * sigma)
    expected = TF.gaussian_blur(x, kernel_size=[2 * radius + 1] * 2, sigma=[sigma, sigma])
    torch.testing.assert_close(path.start, expected, rtol=1e-12, atol=1e-12)
    samples = torch.arange(2)
    torch.testing.assert_close(path.points(samples, torch.ones(2, dtype=torch.float64)), x)
    torch.testing.assert_close(
        path.points(samples, torch.zeros(2, dtype=torch.float64)), path.start
    )


def test_blur_ig_velocity_is_the_derivative_of_the_path() -> None:
    x = inputs_for(2, 9, 7)
    path = BlurIG(max_sigma=6.0).path(x)  # a kernel wider than the image: cut and renormalised
    samples = torch.arange(2)
    for alpha in (0.05, 0.5, 0.97):
        at = torch.full((2,), alpha, dtype=torch.float64)
        eps = 1e-6
        finite = (path.points(samples, at + eps) - path.points(samples, at - eps)) / (2 * eps)
        torch.testing.assert_close(path.velocities(samples, at), finite, rtol=1e-6, atol=1e-8)


def test_blur_ig_is_complete_against_the_fully_blurred_input() -> None:
    model, x, target = smooth_cnn(), inputs_for(), torch.tensor([0, 1, 2])
    gap = scores(model, x, target) - scores(model, BlurIG(max_sigma=4.0).path(x).start, target)
    assert gap.abs().min() > 1e-3

    def error(steps: int) -> float:
        ex = saliency.explain(
            model, x, "blur_ig", target=target, steps=steps, max_sigma=4.0, return_error=True
        )
        own = ex.attributions.flatten(1).sum(1) - gap
        # return_error reports the same completeness error, in the run's float64.
        torch.testing.assert_close(ex.extras["completeness_error"], own, rtol=1e-9, atol=1e-12)
        return float((own.abs() / gap.abs()).max())

    errors = [error(steps) for steps in (16, 32, 64)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-5


def test_blur_ig_auto_meets_the_tolerance() -> None:
    model, x, target = smooth_cnn(), inputs_for(), torch.tensor([2, 1, 0])
    ex = saliency.explain(
        model, x, "blur_ig", target=target, steps="auto", tolerance=1e-3, max_sigma=4.0
    )
    start = BlurIG(max_sigma=4.0).path(x).start
    gap = scores(model, x, target) - scores(model, start, target)
    assert bool(ex.extras["converged"].all())
    assert ((ex.attributions.flatten(1).sum(1) - gap).abs() / gap.abs()).max() <= 1e-3
    fixed = saliency.explain(model, x, "blur_ig", target=target, steps=128, max_sigma=4.0)
    assert relative(ex.attributions, fixed.attributions) < 1e-2


# --------------------------------------------------------------------- Expected Gradients


def test_expected_gradients_equals_captum_gradient_shap_given_the_same_draws(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, x = relu_cnn(), inputs_for(3)
    references = inputs_for(5, seed=7)
    target, samples = torch.tensor([1, 0, 3]), 6
    np.random.seed(11)
    ref = GradientShap(model).attribute(
        x, baselines=references, target=target, n_samples=samples, stdevs=0.0
    )
    # captum's draws, in its order: reference indices, then α, one per (input, sample) pair.
    np.random.seed(11)
    indices = np.random.choice(len(references), samples * len(x))
    alphas = np.random.uniform(0.0, 1.0, samples * len(x))

    def draw(self: ExpectedGradients, count: int, refs: int, device: torch.device) -> Any:
        return (
            torch.from_numpy(indices).view(count, samples),
            torch.from_numpy(alphas).view(count, samples),
        )

    monkeypatch.setattr(ExpectedGradients, "draw", draw)
    ours = saliency.explain(
        model,
        x,
        "expected_gradients",
        target=target,
        baselines=references,
        samples=samples,
        batch_size=4,
    )
    torch.testing.assert_close(ours.attributions, ref, rtol=1e-10, atol=1e-12)


def test_expected_gradients_with_one_baseline_tends_to_integrated_gradients() -> None:
    model, x, target = smooth_cnn(), inputs_for(2), torch.tensor([0, 2])
    ig = gauss_legendre_ig(model, x, target, 32, baseline=0.25)
    baseline = torch.full_like(x[0], 0.25)

    def error(samples: int) -> float:
        ex = saliency.explain(
            model,
            x,
            "expected_gradients",
            target=target,
            baselines=baseline,
            samples=samples,
            seed=3,
        )
        return relative(ex.attributions, ig)

    few, many = error(64), error(4096)
    print(f"expected gradients vs IG: {few:.3e} at 64 samples, {many:.3e} at 4096")
    assert many < 0.03 and many < few / 3  # Monte Carlo: ~8× fewer errors with 64× the draws


def test_expected_gradients_draws_depend_on_the_seed_not_the_batch_size() -> None:
    model, x = relu_cnn(), inputs_for(3)
    results = [
        saliency.explain(
            model, x, "expected_gradients", target=1, samples=5, seed=4, batch_size=b
        ).attributions
        for b in (1, 4, None)
    ]
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], rtol=1e-10, atol=1e-12)
    other_seed = saliency.explain(model, x, "expected_gradients", target=1, samples=5, seed=5)
    assert (other_seed.attributions - results[0]).abs().max() > 1e-3


def test_expected_gradients_default_reference_is_a_zero_image() -> None:
    model, x = relu_cnn(), inputs_for(4)
    default = saliency.explain(model, x, "expected_gradients", target=2, samples=4, seed=0)
    explicit = saliency.explain(
        model,
        x,
        "expected_gradients",
        target=2,
        samples=4,
        seed=0,
        baselines=torch.zeros_like(x[0]),
    )
    torch.testing.assert_close(default.attributions, explicit.attributions, rtol=0, atol=0)
    batch = saliency.explain(
        model, x, "expected_gradients", target=2, samples=4, seed=0, baselines=x.clone()
    )
    assert (batch.attributions - default.attributions).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"samples": 0}, "samples=0"),
        ({"seed": -1}, "seed=-1"),
        ({"baselines": "blur"}, "'blur'"),
        ({"baselines": None}, "None"),
        ({"baselines": torch.zeros(2, 3, 4, 4)}, "(2, 3, 4, 4)"),
    ],
)
def test_expected_gradients_bad_options(options: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidOptionError) as info:
        saliency.explain(relu_cnn(), inputs_for(2), "expected_gradients", target=0, **options)
    assert named in str(info.value)


# ------------------------------------------------------------ integrated gradients, "auto"


def auto(model: Callable[[Tensor], Tensor], x: Tensor, **options: Any) -> saliency.Explanation:
    return saliency.explain(model, x, "integrated_gradients", steps="auto", **options)


@pytest.mark.parametrize("tolerance", [1e-2, 3e-3])
@pytest.mark.parametrize("kind", ["relu", "smooth"])
def test_auto_meets_the_tolerance_and_reports_it(kind: str, tolerance: float) -> None:
    model = relu_cnn() if kind == "relu" else smooth_cnn()
    x, target = inputs_for(4, seed=3), torch.tensor([0, 1, 2, 0])
    ex = auto(model, x, target=target, tolerance=tolerance, baseline=0.5)
    gap = scores(model, x, target) - scores(model, torch.full_like(x, 0.5), target)
    error = ex.attributions.flatten(1).sum(1) - gap
    extras = ex.extras
    assert bool(extras["converged"].all())
    assert ((error.abs() / gap.abs()) <= tolerance).all(), (error / gap).tolist()
    # The reported error is this completeness error, in the run's float64 (issue #13, item 15).
    torch.testing.assert_close(extras["completeness_error"], error, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(
        extras["relative_error"], (error.abs() / gap.abs()).float(), rtol=1e-3, atol=1e-5
    )
    assert (extras["error_bound"] <= tolerance).all()
    assert extras["passes"].dtype == torch.int64 and (extras["passes"] >= 5).all()


@pytest.mark.parametrize("power", [2, 3])
def test_auto_equals_fixed_steps_for_polynomial_integrands(power: int) -> None:
    # f = Σ W x^p: the integrand is of degree p − 1 in α, which the trapezoid (p = 2) and
    # Simpson's (p = 3) rule integrate exactly, like any Gauss–Legendre rule of ≥ 2 nodes.
    weight = inputs_for(1, 3, 36, seed=4).reshape(3, 3 * 9 * 4)
    model, x, target = (
        Power(weight, power).double(),
        inputs_for(2, 9, 4, seed=5),
        torch.tensor([2, 0]),
    )
    ex = auto(model, x, target=target, tolerance=1e-5, baseline=0.5)
    fixed = saliency.explain(model, x, "integrated_gradients", target=target, steps=8, baseline=0.5)
    torch.testing.assert_close(ex.attributions, fixed.attributions, rtol=1e-10, atol=1e-12)
    analytic = weight[target].view_as(x) * (x.pow(power) - 0.5**power)
    torch.testing.assert_close(ex.attributions, analytic, rtol=1e-10, atol=1e-12)
    # Exact from the first 5 nodes; telling a smooth integrand from a rough one may take a round.
    assert (ex.extras["passes"] <= 9).all(), ex.extras["passes"]


def test_auto_attribution_error_falls_with_the_tolerance_on_a_relu_network() -> None:
    model, x, target = relu_cnn(), inputs_for(3, 15, 15, seed=6), torch.tensor([0, 1, 3])
    reference = gauss_legendre_ig(model, x, target, 512)
    runs = [auto(model, x, target=target, tolerance=t) for t in (1e-1, 1e-2, 1e-3)]
    errors = [relative(ex.attributions, reference) for ex in runs]
    passes = [float(ex.extras["passes"].double().mean()) for ex in runs]
    print(f"IG auto on a ReLU net: passes {passes}, attribution errors {errors}")
    assert passes[0] < passes[1] < passes[2]
    assert errors[0] > errors[1] > errors[2]


def test_auto_attribution_error_estimate_and_tolerance() -> None:
    # The Brownian estimate of the attribution error tracks the error against a fine reference,
    # and attribution_tolerance refines until it is met.
    model, x, target = relu_cnn(), inputs_for(3, 15, 15, seed=6), torch.tensor([0, 1, 3])
    reference = gauss_legendre_ig(model, x, target, 512)
    loose = auto(model, x, target=target, tolerance=1e-2)
    tight = auto(model, x, target=target, tolerance=1e-2, attribution_tolerance=5e-3)
    for ex in (loose, tight):
        actual = (ex.attributions - reference).flatten(1).norm(dim=1) / reference.flatten(1).norm(
            dim=1
        )
        estimate = ex.extras["attribution_error"].double()
        print(f"attribution error {actual.tolist()}, estimated {estimate.tolist()}")
        assert ((estimate / actual) > 1 / 3).all() and ((estimate / actual) < 3).all()
    assert bool(tight.extras["converged"].all())
    assert (tight.extras["attribution_error"] <= 5e-3).all()
    assert (tight.extras["passes"] >= loose.extras["passes"]).all()


def test_auto_stops_at_max_steps_and_says_so() -> None:
    model, x = relu_cnn(), inputs_for(2)
    ex = auto(model, x, target=1, tolerance=1e-9, max_steps=12)
    assert (ex.extras["passes"] <= 12).all()
    assert not bool(ex.extras["converged"].any())
    assert (ex.extras["error_bound"] > 1e-9).all()


def test_auto_does_not_depend_on_groups_or_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x, target = relu_cnn(), inputs_for(3), torch.tensor([3, 2, 1])
    whole = auto(model, x, target=target, tolerance=1e-3)
    chunked = auto(model, x, target=target, tolerance=1e-3, batch_size=2)
    monkeypatch.setattr(Engine, "block_size", lambda self, point, count: 1)  # one sample a group
    grouped = auto(model, x, target=target, tolerance=1e-3)
    for other in (chunked, grouped):
        torch.testing.assert_close(other.attributions, whole.attributions, rtol=1e-9, atol=1e-12)
        assert torch.equal(other.extras["passes"], whole.extras["passes"])


def test_auto_with_argmax_and_callable_targets() -> None:
    model, x = relu_cnn(), inputs_for(2)
    argmax = auto(model, x, tolerance=1e-2)
    predicted = model(x).argmax(1)
    assert argmax.targets is not None and torch.equal(argmax.targets, predicted)
    given = auto(model, x, target=predicted, tolerance=1e-2)
    torch.testing.assert_close(argmax.attributions, given.attributions, rtol=0, atol=0)
    log_probability = auto(model, x, target=lambda out: out.log_softmax(1)[:, 0], tolerance=1e-2)
    assert log_probability.targets is None and bool(log_probability.extras["converged"].all())


def test_auto_with_create_graph_is_differentiable() -> None:
    model, x = smooth_cnn(), inputs_for(2)
    leaf = x.clone().requires_grad_(True)
    ex = auto(model, leaf, target=[0, 1], tolerance=1e-2, create_graph=True)
    (gradient,) = torch.autograd.grad(ex.attributions.sum(), leaf)
    assert torch.isfinite(gradient).all() and gradient.abs().max() > 0
    plain = auto(model, x, target=[0, 1], tolerance=1e-2)
    torch.testing.assert_close(ex.attributions.detach(), plain.attributions, rtol=1e-12, atol=0)


@pytest.mark.parametrize("method", ["integrated_gradients", "blur_ig"])
def test_auto_leaves_model_and_inputs_as_before(method: str) -> None:
    from saliency.testing import assert_same_state, checked_inputs, checked_model, snapshot

    model, inputs = checked_model(), checked_inputs(True)
    before = snapshot(model, inputs)
    options = {"steps": "auto", "tolerance": 1e-2, "max_steps": 9}
    if method == "blur_ig":
        options["max_sigma"] = 2.0
    ex = saliency.explain(model, inputs, method, target=[1, 3], **options)
    assert_same_state(before, snapshot(model, inputs))
    assert all(not any(modes) for modes in model.modes)
    assert torch.isfinite(ex.attributions).all() and (ex.extras["passes"] <= 9).all()


def test_auto_under_smoothgrad() -> None:
    model, x = relu_cnn(), inputs_for(2)
    ex = saliency.explain(
        model,
        x,
        "smoothgrad",
        base="integrated_gradients",
        steps="auto",
        tolerance=1e-2,
        samples=2,
        noise=0.1,
        seed=0,
        target=1,
    )
    assert ex.attributions.shape == x.shape and torch.isfinite(ex.attributions).all()


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"steps": "Auto"}, "'Auto'"),
        ({"tolerance": 0.0}, "tolerance=0.0"),
        ({"tolerance": math.nan}, "tolerance=nan"),
        ({"max_steps": 4}, "max_steps=4"),
        ({"attribution_tolerance": -1.0}, "attribution_tolerance=-1.0"),
    ],
)
def test_auto_bad_options(options: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidOptionError) as info:
        saliency.explain(relu_cnn(), inputs_for(2), "integrated_gradients", target=0, **options)
    assert named in str(info.value)


def test_auto_on_the_command_line_parses() -> None:
    from saliency.cli.method_options import options_for

    assert options_for("integrated_gradients", {"steps": "auto", "tolerance": "0.001"}) == {
        "steps": "auto",
        "tolerance": 0.001,
    }
    assert options_for("blur_ig", {"steps": "16"}) == {"steps": 16}


def test_ig_auto_benchmark_runs(tmp_path: Path) -> None:
    """benchmarks/ig_auto.py at smoke size: every rule runs and the tables are written."""
    out = tmp_path / "IG_AUTO.md"
    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "benchmarks/ig_auto.py", "--smoke", "--out", str(out)],
        cwd=root,
        check=True,
        capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    text = out.read_text()
    assert "captum IG, Gauss–Legendre | 50 steps" in text
    assert "captum IG-50's mean completeness error" in text
    assert "| demo:shapes |" in text
