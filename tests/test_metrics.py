"""Tests for saliency.metrics on hand-built cases with known values."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from reference_models import tiny_cnn
from torch import Tensor, nn

import saliency
from saliency.errors import InvalidOptionError, LayerNotFoundError
from saliency.metrics import (
    METRIC_NAMES,
    MetricSettings,
    average_ranks,
    cascade_layers,
    cascading_randomisation,
    deletion_auc,
    dilate,
    evaluate_method,
    gaussian_blur,
    insertion_auc,
    marker_object_mass,
    parameter_randomisation,
    perturbation_curve,
    pointing_game,
    relevance_map,
    relevance_mass,
    relevance_rank,
    spearman_correlation,
    trapezoid_auc,
    write_metrics,
)


def box_mask(size: int, top: int, left: int, height: int, width: int) -> Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top : top + height, left : left + width] = True
    return mask


# ---- relevance maps --------------------------------------------------------------------------


def test_relevance_map_reductions() -> None:
    attributions = torch.tensor([[1.0, -3.0], [-2.0, 0.5]]).view(1, 2, 1, 2)  # (1, C=2, 1, 2)
    assert relevance_map(attributions, "abs").tolist() == [[[3.0, 3.5]]]
    assert relevance_map(attributions, "sum").tolist() == [[[-1.0, -2.5]]]
    assert relevance_map(attributions, "positive").tolist() == [[[0.0, 0.0]]]
    assert relevance_map(attributions[:, 0], "sum").tolist() == [[[1.0, -3.0]]]
    with pytest.raises(InvalidOptionError, match="reduction"):
        relevance_map(attributions, "max")
    with pytest.raises(InvalidOptionError, match="attributions"):
        relevance_map(torch.zeros(3, 3))


# ---- localisation ----------------------------------------------------------------------------


def test_pointing_game_inside_outside_ties_and_shapes() -> None:
    mask = box_mask(8, 2, 2, 3, 3)
    inside, outside, flat = torch.zeros(3, 8, 8), torch.zeros(8, 8), torch.ones(8, 8)
    inside[0, 3, 3] = 5.0
    outside[7, 7] = 5.0
    inside[1] = outside
    inside[2] = flat
    masks = mask.expand(3, 8, 8)
    assert pointing_game(inside, masks).tolist() == [1.0, 0.0, 0.0]
    # (N, C, H, W) attributions and (N, 1, H, W) masks: negative values count by magnitude
    signed = -inside[:1].unsqueeze(1).expand(1, 3, 8, 8)
    assert pointing_game(signed, mask.view(1, 1, 8, 8)).tolist() == [1.0]
    assert pointing_game(signed, mask.view(1, 1, 8, 8), reduction="sum").tolist() == [0.0]
    with pytest.raises(InvalidOptionError, match="do not fit"):
        pointing_game(inside, mask.expand(2, 8, 8))


def test_pointing_game_tolerance_is_euclidean() -> None:
    mask = box_mask(16, 6, 6, 2, 2)  # rows/cols 6..7
    near = torch.zeros(1, 16, 16)
    near[0, 7, 10] = 1.0  # 3 px right of the mask
    diagonal = torch.zeros(1, 16, 16)
    diagonal[0, 9, 9] = 1.0  # (2, 2) from the corner: distance √8 ≈ 2.83
    masks = mask[None]
    assert pointing_game(near, masks, tolerance=2).item() == 0.0
    assert pointing_game(near, masks, tolerance=3).item() == 1.0
    assert pointing_game(diagonal, masks, tolerance=2.8).item() == 0.0
    assert pointing_game(diagonal, masks, tolerance=2.9).item() == 1.0
    grown = dilate(masks, 1.0)
    assert int(grown.sum()) == 4 + 4 * 2  # a plus-shaped ring: no diagonal neighbours
    with pytest.raises(InvalidOptionError, match="tolerance"):
        pointing_game(near, masks, tolerance=-1)


def test_relevance_mass_exact_fractions() -> None:
    mask = box_mask(4, 0, 0, 2, 2)
    relevance = torch.zeros(4, 4, 4)
    relevance[0, 0, 0], relevance[0, 3, 3] = 3.0, 1.0  # 3 of 4 inside
    relevance[1] = 1.0  # uniform: the mask's area share
    relevance[2, 0, 1], relevance[2, 2, 2] = 2.0, -6.0  # signed: only positive mass counts
    masks = mask.expand(4, 4, 4)
    assert relevance_mass(relevance, masks).tolist() == [0.75, 0.25, 0.25, 0.0]
    assert relevance_mass(relevance, masks, reduction="sum").tolist() == [0.75, 0.25, 1.0, 0.0]


def test_relevance_rank_exact_fractions_and_ties() -> None:
    mask = box_mask(4, 0, 0, 2, 2)  # K = 4
    relevance = torch.zeros(2, 4, 4)
    relevance[0, 0, 0], relevance[0, 0, 1], relevance[0, 1, 0] = 9.0, 8.0, 7.0
    relevance[0, 3, 3], relevance[0, 1, 1] = 6.0, 1.0  # top 4: three inside, one outside
    relevance[1] = 1.0  # all tied: raster order picks (0,0), (0,1), (0,2), (0,3): two inside
    masks = mask.expand(2, 4, 4)
    assert relevance_rank(relevance, masks).tolist() == [0.75, 0.5]
    empty = torch.zeros(1, 4, 4, dtype=torch.bool)
    assert relevance_rank(relevance[:1], empty).tolist() == [0.0]
    assert relevance_mass(relevance[:1], empty).tolist() == [0.0]
    assert pointing_game(relevance[:1], empty).tolist() == [0.0]


def test_marker_object_mass() -> None:
    objects = box_mask(6, 0, 0, 2, 2)[None]
    markers = box_mask(6, 4, 4, 2, 2)[None]
    relevance = torch.zeros(1, 3, 6, 6)
    relevance[0, 0, 0, 0] = 1.0
    relevance[0, 1, 5, 5] = -2.0  # magnitude 2 on the marker
    relevance[0, 2, 3, 3] = 1.0  # elsewhere
    mass = marker_object_mass(relevance, objects, markers)
    assert mass.marker.tolist() == [0.5] and mass.object.tolist() == [0.25]


# ---- faithfulness ----------------------------------------------------------------------------


class MeanModel(nn.Module):
    """Class 0 scores the weighted mean of the input's pixels, class 1 scores 0."""

    def __init__(self, weights: Tensor) -> None:
        super().__init__()
        self.register_buffer("weights", weights / weights.sum())

    def forward(self, inputs: Tensor) -> Tensor:
        first = (inputs.mean(dim=1) * self.weights).flatten(1).sum(dim=1)
        return torch.stack([first, torch.zeros_like(first)], dim=1)


def test_linear_score_gives_auc_one_half_for_any_order() -> None:
    size = 5  # P = 25 pixels; step 0.1 → 2 pixels per step, 13 steps, last one partial
    model = MeanModel(torch.ones(size, size))
    inputs = torch.ones(2, 3, size, size)
    maps = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    options: dict[str, Any] = {"target": 0, "step": 0.1, "substrate": "zeros", "score": "logit"}
    curve = perturbation_curve(model, inputs, maps, mode="deletion", **options)
    assert curve.fractions.tolist() == pytest.approx([min(2 * k, 25) / 25 for k in range(14)])
    assert curve.scores[:, 0].tolist() == pytest.approx([1.0, 1.0])
    assert curve.scores[:, -1].tolist() == pytest.approx([0.0, 0.0], abs=1e-7)
    assert deletion_auc(model, inputs, maps, **options).tolist() == pytest.approx([0.5, 0.5])
    assert insertion_auc(model, inputs, maps, **options).tolist() == pytest.approx([0.5, 0.5])


def test_weighted_linear_score_closed_form() -> None:
    """Score = Σ w_p x_p / Σ w over kept pixels; deleting in order of w has a known curve."""
    weights = torch.arange(1.0, 17.0).view(4, 4)  # P = 16, weights 1..16
    model = MeanModel(weights)
    inputs = torch.ones(1, 1, 4, 4)
    total = float(weights.sum())
    ordered = sorted(weights.flatten().tolist(), reverse=True)
    # step 0.25 → 4 pixels per step; kept score after k steps = 1 − (top 4k weights) / total
    kept = [1 - sum(ordered[: 4 * k]) / total for k in range(5)]
    expected = sum(0.25 * (kept[k] + kept[k + 1]) / 2 for k in range(4))
    options: dict[str, Any] = {"target": 0, "step": 0.25, "substrate": "zeros", "score": "logit"}
    good = deletion_auc(model, inputs, weights.view(1, 1, 4, 4), **options)
    assert good.item() == pytest.approx(expected, abs=1e-6)
    bad = deletion_auc(model, inputs, -weights.view(1, 1, 4, 4), reduction="sum", **options)
    assert bad.item() == pytest.approx(1 - expected, abs=1e-6)  # reversed order: mirror image
    inserted = insertion_auc(model, inputs, weights.view(1, 1, 4, 4), **options)
    assert inserted.item() == pytest.approx(1 - expected, abs=1e-6)


def test_probability_score_and_substrates() -> None:
    model = MeanModel(torch.ones(2, 2))
    inputs = torch.full((1, 1, 2, 2), 4.0)
    maps = torch.tensor([4.0, 3.0, 2.0, 1.0]).view(1, 1, 2, 2)
    curve = perturbation_curve(model, inputs, maps, target=0, step=0.25, substrate=0.0)
    # logits (kept·1, 0) → p = sigmoid(kept) with kept = 4, 3, 2, 1, 0 pixels' mean contribution
    expected = [1 / (1 + math.exp(-v)) for v in (4.0, 3.0, 2.0, 1.0, 0.0)]
    assert curve.scores[0].tolist() == pytest.approx(expected, abs=1e-6)
    area = sum(0.25 * (expected[k] + expected[k + 1]) / 2 for k in range(4))
    assert curve.auc().item() == pytest.approx(area, abs=1e-6)
    tensor_substrate = perturbation_curve(
        model, inputs, maps, target=0, step=0.25, substrate=torch.zeros(1, 1, 1, 1)
    )
    assert torch.allclose(tensor_substrate.scores, curve.scores)
    with pytest.raises(InvalidOptionError, match="substrate"):
        perturbation_curve(model, inputs, maps, substrate="noise")
    with pytest.raises(InvalidOptionError, match="step"):
        perturbation_curve(model, inputs, maps, step=0.0)
    with pytest.raises(InvalidOptionError, match="mode"):
        perturbation_curve(model, inputs, maps, mode="erase")


def test_trapezoid_and_blur() -> None:
    fractions = torch.tensor([0.0, 0.5, 1.0])
    scores = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    assert trapezoid_auc(fractions, scores).tolist() == [0.25, 0.75]
    constant = torch.full((2, 3, 9, 9), 0.7)
    assert torch.allclose(gaussian_blur(constant, 2.0), constant)
    impulse = torch.zeros(1, 1, 21, 21)
    impulse[0, 0, 10, 10] = 1.0
    blurred = gaussian_blur(impulse, 1.5)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert blurred[0, 0, 10, 10] == blurred.max() and torch.allclose(blurred, blurred.flip(-1))


def test_faithfulness_restores_the_model_state() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3))
    inputs = torch.randn(2, 3, 6, 6)
    model(inputs)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deletion_auc(model, inputs, torch.rand(2, 6, 6))
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---- sanity ----------------------------------------------------------------------------------


def test_average_ranks_and_spearman_known_values() -> None:
    assert average_ranks(torch.tensor([[10.0, 20.0, 20.0, 30.0]])).tolist() == [[0, 1.5, 1.5, 3]]
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    assert spearman_correlation(x, x).item() == pytest.approx(1.0)
    assert spearman_correlation(x, -x).item() == pytest.approx(-1.0)
    # ρ = 1 − 6 Σd² / (n (n² − 1)) without ties: ranks (0,1,2,3,4) vs (1,0,2,4,3): Σd² = 4
    y = torch.tensor([[2.0, 1.0, 3.0, 5.0, 4.0]])
    assert spearman_correlation(x, y).item() == pytest.approx(1 - 6 * 4 / (5 * 24))
    # with ties: Pearson correlation of average ranks, computed by hand
    a = torch.tensor([[1.0, 2.0, 2.0, 3.0]])  # ranks 0, 1.5, 1.5, 3 (mean 1.5)
    b = torch.tensor([[1.0, 3.0, 2.0, 4.0]])  # ranks 0, 2, 1, 3 (mean 1.5)
    ra, rb = [-1.5, 0.0, 0.0, 1.5], [-1.5, 0.5, -0.5, 1.5]
    hand = sum(p * q for p, q in zip(ra, rb, strict=True)) / math.sqrt(
        sum(p * p for p in ra) * sum(q * q for q in rb)
    )
    assert spearman_correlation(a, b).item() == pytest.approx(hand)
    constant = torch.ones(1, 5)
    assert spearman_correlation(x, constant).item() == 0.0
    # batched, (N, H, W) inputs, and monotone transforms do not change ρ
    maps = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(spearman_correlation(maps, maps.exp() * 3), torch.ones(3))


class Linear(nn.Module):
    """f(x) = W x on flattened 1×16×16 inputs: the gradient map is W's row itself."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(256, 2))

    def forward(self, inputs: Tensor) -> Tensor:
        return self.body(inputs)


def test_randomised_model_decorrelates_and_original_is_untouched() -> None:
    torch.manual_seed(0)
    model = Linear()
    inputs = torch.randn(4, 1, 16, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    correlations = parameter_randomisation(model, inputs, "gradient", target=0)
    assert list(correlations) == ["body.1"] == cascade_layers(model)
    assert float(correlations["body.1"].abs().max()) < 0.2  # |W'| independent of |W|
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    same = saliency.explain(model, inputs, "gradient", 0).attributions
    again = saliency.explain(model, inputs, "gradient", 0).attributions
    assert torch.allclose(spearman_correlation(same.abs(), again.abs()), torch.ones(4))


def test_cascade_order_and_determinism() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    )
    assert cascade_layers(model) == ["5", "3", "0"]  # batch norm kept, output first
    first = [
        (n, {k: v.clone() for k, v in m.state_dict().items()})
        for n, m in cascading_randomisation(model, seed=3)
    ]
    second = [(n, m.state_dict()) for n, m in cascading_randomisation(model, seed=3)]
    assert [n for n, _ in first] == ["5", "3", "0"]
    assert all(torch.equal(first[-1][1][k], v) for k, v in second[-1][1].items())
    # cascading: after step 2 the top layer is still the step-1 random value
    assert torch.equal(first[1][1]["5.weight"], first[0][1]["5.weight"])
    assert not torch.equal(first[0][1]["5.weight"], model.state_dict()["5.weight"])
    assert torch.equal(first[0][1]["3.weight"], model.state_dict()["3.weight"])
    with pytest.raises(LayerNotFoundError, match="unknown layers"):
        next(cascading_randomisation(model, ["nope"]))


def test_gradcam_sanity_on_a_cnn() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    inputs = torch.randn(2, 3, 12, 12)
    correlations = parameter_randomisation(model, inputs, "gradcam", layer=model[3])
    assert list(correlations) == ["6", "2", "0"]
    assert all(c.shape == (2,) and bool((c.abs() <= 1).all()) for c in correlations.values())


# ---- report ----------------------------------------------------------------------------------


def test_evaluate_method_row_and_write_metrics(tmp_path: Path) -> None:
    model = tiny_cnn()  # seeds the global generator: the inputs below follow from it
    inputs = torch.randn(3, 3, 10, 10)
    masks = box_mask(10, 2, 2, 4, 4).expand(3, 10, 10)
    markers = box_mask(10, 8, 8, 2, 2).expand(3, 10, 10)
    settings = MetricSettings(step=0.1, sanity_samples=2)
    result = evaluate_method(
        model,
        inputs,
        masks,
        "gradcam",
        model_name="tiny",
        marker_masks=markers,
        settings=settings,
    )
    row = result.row
    assert row["model"] == "tiny" and row["method"] == "gradcam"
    assert set(METRIC_NAMES) <= set(row)
    sanity = [k for k in row if k.startswith("sanity_") and not k.endswith(("_low", "_high"))]
    assert sanity == ["sanity_4", "sanity_0"]
    for name in METRIC_NAMES:
        top = math.log(10 * 10) if name == "complexity" else 1.0  # entropy of 100 pixels
        assert 0.0 <= row[name] <= top and result.samples[name].shape == (3,)
    assert result.samples["sanity_4"].shape == (2,)
    assert result.explanation.attributions.shape == (3, 1, 10, 10)

    rows = [row, {"model": "tiny", "method": "gradient", "pointing_game": float("nan")}]
    json_path, csv_path = write_metrics(rows, tmp_path, notes="test")
    document = json.loads(json_path.read_text())
    assert document["notes"] == "test" and document["rows"][1]["pointing_game"] is None
    with csv_path.open() as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0])[:2] == ["model", "method"] and table[1]["relevance_mass"] == ""
    with pytest.raises(InvalidOptionError, match="model"):
        write_metrics([{"method": "x"}], tmp_path)


def test_every_metric_column_has_its_interval() -> None:
    from saliency.metrics.intervals import bootstrap_interval, wilson_interval

    model = tiny_cnn()
    inputs = torch.randn(6, 3, 10, 10, generator=torch.Generator().manual_seed(2))
    masks = box_mask(10, 2, 2, 4, 4).expand(6, 10, 10)
    settings = MetricSettings(step=0.1, sanity_samples=2, resamples=500)
    result = evaluate_method(model, inputs, masks, "gradient", model_name="tiny", settings=settings)
    row = result.row
    for name, values in result.samples.items():
        assert row[f"{name}_low"] <= row[name] <= row[f"{name}_high"], name
        # the interval columns follow their metric
        keys = list(row)
        assert keys[keys.index(name) + 1 : keys.index(name) + 3] == [f"{name}_low", f"{name}_high"]
        if name == "pointing_game":
            expected = wilson_interval(int(values.sum()), len(values))
        else:
            expected = bootstrap_interval(values.double(), resamples=500, seed=0)
        assert row[f"{name}_low"] == pytest.approx(float(expected.low), abs=1e-12), name
        assert row[f"{name}_high"] == pytest.approx(float(expected.high), abs=1e-12), name
    # the parameter-randomisation columns cover the first sanity_samples inputs
    assert result.samples["sanity_0"].shape == (2,)


def test_interval_columns_skip_nan_and_use_wilson_for_proportions() -> None:
    from saliency.metrics.report import interval_columns

    hits = torch.tensor([1.0, 0.0, 1.0, float("nan")])
    columns = interval_columns("pointing_game", hits)
    from saliency.metrics.intervals import wilson_interval

    expected = wilson_interval(2, 3)
    assert columns == {
        "pointing_game_low": float(expected.low),
        "pointing_game_high": float(expected.high),
    }
    empty = interval_columns("deletion_auc", torch.tensor([float("nan")]))
    assert all(math.isnan(value) for value in empty.values())


@pytest.mark.parametrize("control", ["baseline:centre", "baseline:random", "baseline:edges"])
def test_a_control_is_scored_like_a_method(control: str) -> None:
    from saliency.metrics import control_map
    from saliency.metrics.report import evaluate_control, sample_metrics

    model = tiny_cnn()
    inputs = torch.randn(4, 3, 10, 10, generator=torch.Generator().manual_seed(3))
    masks = box_mask(10, 2, 2, 4, 4).expand(4, 10, 10)
    markers = box_mask(10, 8, 8, 2, 2).expand(4, 10, 10)
    target = torch.tensor([0, 1, 2, 0])
    settings = MetricSettings(step=0.1, sanity_samples=2, resamples=200)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = evaluate_control(
        model,
        inputs,
        masks,
        control,  # type: ignore[arg-type]
        model_name="tiny",
        target=target,
        marker_masks=markers,
        settings=settings,
    )
    maps = control_map(control, inputs)  # type: ignore[arg-type]
    expected = sample_metrics(
        model, inputs, maps, masks, target, marker_masks=markers, settings=settings
    )
    for name, values in expected.items():
        torch.testing.assert_close(result.samples[name], values)
        assert result.row[name] == pytest.approx(float(values.double().mean()))
    assert result.row["method"] == control and set(METRIC_NAMES) <= set(result.row)
    # a control ignores the weights: the sanity check fails (correlation 1 at every layer)
    sanity = [
        k for k in result.row if k.startswith("sanity_") and not k.endswith(("_low", "_high"))
    ]
    assert sanity == ["sanity_4", "sanity_0"]
    for name in sanity:
        torch.testing.assert_close(result.samples[name], torch.ones(2))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_the_checks_on_the_first_inputs_are_the_metrics_themselves() -> None:
    from saliency.inference_copy import inference_copy
    from saliency.metrics import complexity, input_invariance, random_logit, road, sparseness

    model = tiny_cnn()
    inputs = torch.randn(5, 3, 10, 10, generator=torch.Generator().manual_seed(5))
    masks = box_mask(10, 2, 2, 4, 4).expand(5, 10, 10)
    target = torch.tensor([0, 1, 2, 0, 1])
    settings = MetricSettings(
        step=0.25,
        road_samples=3,
        road_fractions=(0.3, 0.6),
        road_noise=0.05,
        invariance_samples=2,
        random_logit_samples=4,
        resamples=200,
    )
    method = "gradient_x_input"
    result = evaluate_method(
        model, inputs, masks, method, model_name="tiny", target=target, settings=settings
    )
    maps = result.explanation.attributions
    for order in ("morf", "lerf"):
        expected = road(
            model,
            inputs[:3],
            maps[:3],
            order=order,
            fractions=(0.3, 0.6),
            target=target[:3],
            noise=0.05,
        )
        torch.testing.assert_close(result.samples[f"road_{order}"], expected)
        assert result.row[f"road_{order}_low"] <= result.row[f"road_{order}"]
    invariance = input_invariance(model, inputs[:2], method, target=target[:2])
    torch.testing.assert_close(result.samples["input_invariance"], invariance)
    assert bool((invariance > 0.1).all())  # gradient × input carries the shift
    logit = random_logit(model, inputs[:4], method, target=target[:4])
    torch.testing.assert_close(result.samples["random_logit"], logit)
    torch.testing.assert_close(result.samples["sparseness"], sparseness(maps))
    torch.testing.assert_close(result.samples["complexity"], complexity(maps))

    # the gradient is input invariant; a faster scorer gives the same perturbation metrics
    gradient = evaluate_method(
        model, inputs, masks, "gradient", model_name="tiny", target=target, settings=settings
    )
    assert float(gradient.samples["input_invariance"].max()) < 1e-5
    scored = evaluate_method(
        model,
        inputs,
        masks,
        "gradient",
        model_name="tiny",
        target=target,
        settings=settings,
        scorer=inference_copy(model),
    )
    for name in ("deletion_auc", "insertion_auc", "road_morf", "road_lerf"):
        torch.testing.assert_close(scored.samples[name], gradient.samples[name], atol=1e-5, rtol=0)


def test_controls_are_input_invariant_and_blind_to_the_class() -> None:
    from saliency.metrics.report import evaluate_control

    model = tiny_cnn()
    inputs = torch.randn(4, 3, 10, 10, generator=torch.Generator().manual_seed(6))
    masks = box_mask(10, 2, 2, 4, 4).expand(4, 10, 10)
    settings = MetricSettings(
        step=0.25, road_samples=2, invariance_samples=3, random_logit_samples=3, resamples=200
    )
    for control in ("baseline:centre", "baseline:random", "baseline:edges"):
        result = evaluate_control(
            model,
            inputs,
            masks,
            control,  # type: ignore[arg-type]
            model_name="tiny",
            target=torch.tensor([0, 1, 2, 0]),
            settings=settings,
        )
        assert result.samples["road_morf"].shape == (2,)
        # a control ignores the class: its map for another class is the same map
        torch.testing.assert_close(result.samples["random_logit"], torch.ones(3))
        # the centre and the seeded noise ignore the image; edges read differences of it
        assert float(result.samples["input_invariance"].max()) < 1e-5, control


def test_summary_columns_bootstrap_columns_together_with_the_same_intervals() -> None:
    from saliency.metrics.report import interval_columns, summary_columns

    generator = torch.Generator().manual_seed(7)
    samples = {f"metric_{i}": torch.rand(12, generator=generator) for i in range(4)}
    samples["short"] = torch.rand(3, generator=generator)  # another length: its own call
    samples["pointing_game"] = (torch.rand(12, generator=generator) > 0.5).float()  # Wilson
    samples["gappy"] = torch.tensor([0.2, float("nan"), 0.6])  # NaN left out: one by one
    settings = MetricSettings(resamples=300)
    together = summary_columns(samples, settings)
    one_by_one: dict[str, float] = {}
    for name, values in samples.items():
        one_by_one[name] = float(values.double().mean())
        one_by_one.update(interval_columns(name, values, resamples=300))
    assert list(together) == list(one_by_one)
    for key, value in one_by_one.items():
        # the same resamples: equal up to the summation order of one matrix product
        assert together[key] == pytest.approx(value, rel=1e-12, nan_ok=True), key
