"""``explain(..., forward_args=...)``: per-sample extra model inputs, sliced and repeated with the
points of every method (issue #13, item 16). A closure over the extras would pair path points,
noisy copies and masked inputs with the wrong sample's rows; the oracle is one run per sample of
a module bound to that sample's extras."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

import saliency
from saliency.errors import InvalidOptionError

N = 3


class Scaled(nn.Module):
    """``f(x, scale, shift=0) = scale · g(x) + shift`` with a small non-linear ``g``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: Tensor, scale: Tensor, shift: Any = 0.0) -> Tensor:
        features = torch.tanh(self.conv(x))
        return self.head(features.flatten(1)) * scale[:, None] + shift


class Bound(nn.Module):
    """The model with one sample's extras: the oracle of that sample's attributions."""

    def __init__(self, model: Scaled, scale: Tensor, shift: Any = 0.0) -> None:
        super().__init__()
        self.model, self.scale, self.shift = model, scale, shift

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x, self.scale.expand(len(x)), self.shift)


@pytest.fixture(scope="module")
def setup() -> tuple[Scaled, Tensor, Tensor, list[int]]:
    torch.manual_seed(0)
    model = Scaled().double().eval()
    x = torch.rand(N, 3, 6, 6, dtype=torch.float64)
    scale = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    return model, x, scale, [1, 4, 2]


CASES: list[tuple[str, dict[str, Any]]] = [
    ("gradient", {}),
    ("integrated_gradients", {"steps": 8}),
    ("integrated_gradients", {"steps": "auto", "tolerance": 1e-3, "max_steps": 17}),
    ("smoothgrad", {"samples": 3, "noise": 0.0}),
    ("smoothgrad", {"samples": 2, "noise": 0.0, "base": "integrated_gradients", "steps": 4}),
    ("gradcam", {"layer": "conv"}),
    ("scorecam", {"layer": "conv"}),
    ("ablationcam", {"layer": "conv"}),
    ("captum:IntegratedGradients", {"n_steps": 8}),
    ("captum:Saliency", {"abs": False}),
]


@pytest.mark.parametrize(
    ("method", "options"), CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CASES)]
)
def test_per_sample_extras_equal_one_run_per_sample(
    setup: tuple[Scaled, Tensor, Tensor, list[int]], method: str, options: dict[str, Any]
) -> None:
    model, x, scale, target = setup
    # Chunks of 2 points: chunks hold points of several samples (and split path points).
    ex = saliency.explain(
        model, x, method, target=target, batch_size=2, forward_args=(scale,), **options
    )
    if "layer" in options:  # the same layer inside the oracle
        options = {**options, "layer": f"model.{options['layer']}"}
    for i in range(N):
        alone = saliency.explain(
            Bound(model, scale[i : i + 1]), x[i : i + 1], method, target=target[i], **options
        )
        torch.testing.assert_close(
            ex.attributions[i : i + 1], alone.attributions, rtol=1e-9, atol=1e-12
        )


def test_keyword_extras_and_values_passed_as_they_are(
    setup: tuple[Scaled, Tensor, Tensor, list[int]],
) -> None:
    model, x, scale, target = setup
    ex = saliency.explain(
        model,
        x,
        "integrated_gradients",
        target=target,
        steps=6,
        batch_size=4,
        forward_args={"scale": scale, "shift": 7.0},
    )
    for i in range(N):
        alone = saliency.explain(
            Bound(model, scale[i : i + 1], 7.0),
            x[i : i + 1],
            "integrated_gradients",
            target=target[i],
            steps=6,
        )
        torch.testing.assert_close(ex.attributions[i : i + 1], alone.attributions)
    many = saliency.explain_many(
        model, x, ["gradient", "gradcam"], target=target, forward_args=(scale,), layer="conv"
    )
    single = saliency.explain(model, x, "gradient", target=target, forward_args=(scale,))
    torch.testing.assert_close(many["gradient"].attributions, single.attributions)


def test_a_closure_over_extras_is_what_goes_wrong(
    setup: tuple[Scaled, Tensor, Tensor, list[int]],
) -> None:
    # Why the option exists: the same extras in a closure break on path points.
    model, x, scale, target = setup
    with pytest.raises(RuntimeError):
        saliency.explain(
            lambda z: model(z, scale), x, "integrated_gradients", target=target, steps=8
        )


def test_wrong_forms_are_clear_errors_before_any_work(
    setup: tuple[Scaled, Tensor, Tensor, list[int]],
) -> None:
    model, x, scale, target = setup
    with pytest.raises(InvalidOptionError, match=r"forward_args\[0\] is a tensor of shape \(2,\)"):
        saliency.explain(model, x, "integrated_gradients", target=target, forward_args=(scale[:2],))
    with pytest.raises(InvalidOptionError, match=r"first dimension 3"):
        saliency.explain(model, x, "gradient", target=target, forward_args={"scale": scale[:1]})
    with pytest.raises(InvalidOptionError, match="accepted: a tensor, a tuple"):
        saliency.explain(model, x, "gradient", target=target, forward_args=3.0)  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match="positional"):
        saliency.explain(model, x, "captum:Saliency", target=target, forward_args={"scale": scale})
