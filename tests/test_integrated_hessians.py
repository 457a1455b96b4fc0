"""Integrated Hessians (Janizek et al. 2021): IG of the query's summed IG.

Completeness on a smooth model, symmetry Γ_ij = Γ_ji of single features, zero off-query
interactions of an additive model, agreement with a brute-force nested-autograd reference, and
the ``query`` option (box, mask, default, validation).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import saliency
from saliency.errors import InvalidOptionError
from saliency.methods.integrated_gradients import gauss_legendre
from saliency.methods.path_integral import gauss_log

C, H, W = 2, 4, 4
TARGET = [0, 2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def smooth_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(C, 4, 3, padding=1),
        nn.Softplus(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * H * W, 3),
    ).double()


class Additive(nn.Module):
    """f_k(x) = Σ_i a_ki tanh(x_i) + b_ki x_i²: no feature interacts with another."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.a = nn.Parameter(torch.randn(C * H * W, 3, generator=generator, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(C * H * W, 3, generator=generator, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        flat = x.flatten(1)
        return torch.tanh(flat) @ self.a + flat.square() @ self.b


def make_inputs() -> Tensor:
    return torch.randn(2, C, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def ih(model: nn.Module, x: Tensor, **options: Any) -> Tensor:
    return saliency.explain(model, x, "integrated_hessians", target=TARGET, **options).attributions


def ig(model: nn.Module, x: Tensor, steps: int, baseline: Any = 0.0) -> Tensor:
    return saliency.explain(
        model, x, "integrated_gradients", target=TARGET, steps=steps, baseline=baseline
    ).attributions


def single(c: int, y: int, x: int) -> Tensor:
    mask = torch.zeros(C, H, W, dtype=torch.bool)
    mask[c, y, x] = True
    return mask


def brute_force(
    model: nn.Module, x: Tensor, baseline: Tensor, mask: Tensor, inner: int, outer: int
) -> Tensor:
    """Outer IG of g(z) = Σ_{i∈Q} IG_i(z), with g differentiated by autograd end to end."""
    alpha, alpha_w = gauss_legendre(inner, x.device)
    beta, beta_w = gauss_legendre(outer, x.device)
    delta = x - baseline
    rows = torch.arange(len(x))
    total = torch.zeros_like(x)
    for b, bw in zip(beta, beta_w, strict=True):
        z = (baseline + b * delta).requires_grad_(True)
        inner_sum = torch.zeros_like(x)
        for a, aw in zip(alpha, alpha_w, strict=True):
            p = baseline + a * (z - baseline)
            (grad,) = torch.autograd.grad(model(p)[rows, TARGET].sum(), p, create_graph=True)
            inner_sum = inner_sum + aw * grad
        g = ((z - baseline) * inner_sum * mask).sum()
        (dg,) = torch.autograd.grad(g, z)
        total = total + bw * dg
    return delta * total


class Quartic(nn.Module):
    """f_k(x) = (a_k·x)⁴ + (b_k·x)(c_k·x): the bracket g(s) of the single integral is a cubic in
    s, which the 2-node rule integrates exactly and the 1-node rule does not."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(5)
        size = C * H * W
        self.a, self.b, self.c = (
            nn.Parameter(0.3 * torch.randn(size, 3, generator=generator, dtype=torch.float64))
            for _ in range(3)
        )

    def forward(self, x: Tensor) -> Tensor:
        flat = x.flatten(1)
        return (flat @ self.a) ** 4 + (flat @ self.b) * (flat @ self.c)


def query_columns() -> Tensor:
    mask = torch.zeros(C, H, W, dtype=torch.bool)
    mask[:, 1:3, 2] = True
    return mask


@pytest.mark.parametrize(
    ("make_model", "inner", "outer", "steps"),
    [(Quartic, 3, 4, 2), (smooth_model, 16, 16, 24)],
    ids=["polynomial: exact", "smooth: converged"],
)
def test_equals_the_nested_definition(
    make_model: Callable[[], nn.Module], inner: int, outer: int, steps: int
) -> None:
    model, x = make_model(), make_inputs()
    baseline = torch.full_like(x, 0.3)
    mask = query_columns()
    expected = brute_force(model, x, baseline, mask.expand_as(x), inner=inner, outer=outer)
    ours = ih(model, x, query=mask, steps=steps, baseline=0.3)
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-11)
    # one node is exact only to degree 1: the comparison can fail
    coarse = ih(model, x, query=mask, steps=1, baseline=0.3)
    assert (coarse - expected).abs().max() > 1e-3 * expected.abs().max()


class Counting(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows = 0

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            self.rows += len(x)
        return self.model(x)


@pytest.mark.parametrize("steps", [1, 5])
def test_one_gradient_pass_per_node(steps: int) -> None:
    counting, x = Counting(smooth_model()), make_inputs()
    ih(counting, x, query=query_columns(), steps=steps)
    assert counting.rows == len(x) * steps


def test_gauss_log_rule_is_exact_to_degree_2n_minus_1() -> None:
    cpu = torch.device("cpu")
    nodes, weights = gauss_log(2, cpu)  # Abramowitz & Stegun, table 25.7
    torch.testing.assert_close(
        nodes, torch.tensor([0.112008806166976, 0.602276908118738], dtype=torch.float64)
    )
    torch.testing.assert_close(
        weights, torch.tensor([0.718539319030384, 0.281460680969616], dtype=torch.float64)
    )
    for steps in (1, 3, 8, 33):
        nodes, weights = gauss_log(steps, cpu)
        assert bool((nodes > 0).all() and (nodes < 1).all() and (weights > 0).all())
        # ∫₀¹ sᵈ (−ln s) ds = 1 / (d + 1)²
        moments = torch.stack([(weights * nodes**d).sum() for d in range(2 * steps + 1)])
        exact = 1 / torch.arange(1, 2 * steps + 2, dtype=torch.float64) ** 2
        torch.testing.assert_close(moments[:-1], exact[:-1], rtol=1e-13, atol=1e-15)
        if steps <= 3:  # degree 2n is not exact (the error is far below rounding by n = 8)
            assert abs(moments[-1] - exact[-1]) > 1e-3 * exact[-1]


def test_completeness_on_a_smooth_model() -> None:
    model, x = smooth_model(), make_inputs()
    box = (1, 0, 3, 2)
    mask = torch.zeros(H, W, dtype=torch.bool)
    mask[1:3, 0:2] = True
    ex = saliency.explain(
        model,
        x,
        "integrated_hessians",
        target=TARGET,
        query=box,
        steps=8,
        return_error=True,
    )
    expected = (ig(model, x, steps=8) * mask).flatten(1).sum(1)
    totals = ex.attributions.flatten(1).sum(1)
    torch.testing.assert_close(totals, expected, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(
        ex.extras["completeness_error"], totals - expected, rtol=0, atol=1e-12
    )  # in the run's float64 (issue #13, item 15)
    assert ex.extras["completeness_error"].abs().max() < 1e-6


def test_symmetry_of_single_feature_interactions() -> None:
    model, x = smooth_model(), make_inputs()
    i, j = (0, 1, 1), (1, 1, 2)
    from_i = ih(model, x, query=single(*i), steps=4)
    from_j = ih(model, x, query=single(*j), steps=4)
    gamma_ij, gamma_ji = from_i[:, j[0], j[1], j[2]], from_j[:, i[0], i[1], i[2]]
    assert gamma_ij.abs().min() > 1e-5, "the interaction should not be trivially zero"
    torch.testing.assert_close(gamma_ij, gamma_ji, rtol=1e-10, atol=1e-14)


def test_additive_model_has_no_off_query_interactions() -> None:
    model, x = Additive(), make_inputs()
    mask = torch.zeros(C, H, W, dtype=torch.bool)
    mask[0, :2, :] = True
    mask[1, 3, 3] = True
    attributions = ih(model, x, query=mask, steps=8)
    off = attributions[~mask.expand_as(x)]
    assert off.abs().max() < 1e-14
    # Γ_ii of an additive model is the feature's own IG.
    on = mask.expand_as(x)
    torch.testing.assert_close(attributions[on], ig(model, x, steps=8)[on], rtol=1e-6, atol=1e-9)


def test_whole_image_query_gives_integrated_gradients() -> None:
    model, x = smooth_model(), make_inputs()
    everything = torch.ones(H, W, dtype=torch.bool)
    ours = ih(model, x, query=everything, steps=8)
    torch.testing.assert_close(ours, ig(model, x, steps=16), rtol=1e-4, atol=1e-6)


def test_box_equals_mask() -> None:
    model, x = smooth_model(), make_inputs()
    options = {"steps": 2}
    centre = torch.zeros(H, W, dtype=torch.bool)
    centre[H // 2, W // 2] = True
    masked = ih(model, x, query=centre, **options)
    box = (H // 2, W // 2, H // 2 + 1, W // 2 + 1)
    torch.testing.assert_close(masked, ih(model, x, query=box, **options), rtol=0, atol=0)
    listed = ih(model, x, query=list(box), **options)
    torch.testing.assert_close(masked, listed, rtol=0, atol=0)


def test_default_query_is_the_top_pixels_of_integrated_gradients() -> None:
    model, x = smooth_model(), make_inputs()
    options = {"steps": 2, "query_steps": 6}
    relevance = ig(model, x, steps=6).abs().sum(dim=1)  # (N, H, W)
    count = math.ceil(0.1 * H * W)
    order = relevance.flatten(1).argsort(dim=1, descending=True)[:, :count]
    expected = torch.zeros(len(x), H * W, dtype=torch.bool)
    expected.scatter_(1, order, True)
    expected = expected.view(len(x), 1, H, W).expand_as(x)
    default = ih(model, x, query_fraction=0.1, **options)
    torch.testing.assert_close(default, ih(model, x, query=expected, **options), rtol=0, atol=0)
    # per sample, not the centre pixel: the samples' queries differ here
    assert not torch.equal(expected[0], expected[1])


def test_default_query_on_a_relu_network_warns_that_it_needs_smooth_relu() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(C, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * H * W, 3)
    ).double()
    x = make_inputs()
    with pytest.warns(RuntimeWarning, match="smooth_relu"):
        saliency.explain(model, x, "integrated_hessians", target=TARGET, steps=2)
    with saliency.smooth_relu(model, beta=5.0), warnings.catch_warnings():
        warnings.simplefilter("error")
        saliency.explain(model, x, "integrated_hessians", target=TARGET, steps=2)


def test_relu_network_through_smooth_relu_keeps_completeness() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(C, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * H * W, 3)
    ).double()
    x = make_inputs()
    with saliency.smooth_relu(model, beta=5.0):
        ex = saliency.explain(
            model, x, "integrated_hessians", target=TARGET, query=(0, 0, 2, 2), return_error=True
        )
    assert ex.extras["completeness_error"].abs().max() < 1e-4
    assert not any(isinstance(m, nn.Softplus) for m in model.modules())


@pytest.mark.parametrize(
    "query",
    [
        (0, 0, H + 1, 2),
        (2, 0, 2, 2),
        (0, 0, 1),
        (0.0, 0, 1, 1),
        "0,0,1,1",
        torch.zeros(H, W, dtype=torch.bool),
        torch.ones(H, W),
        torch.ones(3, 3, dtype=torch.bool),
        torch.ones(5, 2, C, H, W, dtype=torch.bool),
    ],
    ids=[
        "outside",
        "empty box",
        "three ints",
        "float",
        "string",
        "empty mask",
        "float mask",
        "mask shape",
        "mask too many dims",
    ],
)
def test_bad_queries_raise(query: Any) -> None:
    with pytest.raises(InvalidOptionError, match="query"):
        ih(smooth_model(), make_inputs(), query=query, steps=1)


@pytest.mark.parametrize("option", ["steps", "query_steps"])
def test_bad_steps_raise(option: str) -> None:
    with pytest.raises(InvalidOptionError, match=option):
        ih(smooth_model(), make_inputs(), **{option: 0})
