"""Sparseness, complexity, noisy linear imputation, ROAD, SSIM, random logit and input
invariance: known values on hand-built cases, and each metric detecting what it exists to
detect."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity
from torch import Tensor, nn

import saliency
from saliency.engine import Engine, Points
from saliency.errors import InvalidOptionError, InvalidTargetError, LayerNotFoundError
from saliency.methods.base import Method
from saliency.metrics import (
    complexity,
    control_map,
    first_linear_layer,
    input_invariance,
    linear_imputation,
    map_similarity,
    noisy_linear_imputation,
    off_target_classes,
    random_logit,
    road,
    road_curve,
    sparseness,
    ssim,
)
from saliency.targets import Target


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    """Tiny float64 convolutions: one thread (see tests/conftest.py)."""


# ---- sparseness and complexity ---------------------------------------------------------------


def test_sparseness_and_complexity_known_values() -> None:
    pixels = 16
    uniform = torch.ones(1, 4, 4)
    peak = torch.zeros(1, 4, 4)
    peak[0, 2, 1] = -3.0  # magnitude counts
    half = torch.zeros(1, 4, 4)
    half[0, :2] = 1.0  # 8 equal pixels, 8 zeros
    maps = torch.cat([uniform, peak, half, torch.zeros(1, 4, 4)])
    assert sparseness(maps).tolist() == pytest.approx([0.0, 1 - 1 / pixels, 0.5, 0.0])
    assert complexity(maps).tolist() == pytest.approx(
        [math.log(pixels), 0.0, math.log(8), math.log(pixels)]
    )
    # Gini by its mean-difference definition: Σ_ij |r_i − r_j| / (2 P Σ r)
    values = torch.rand(1, 1, 5, 7, generator=torch.Generator().manual_seed(0)).double()
    flat = values.flatten()
    gini = (flat[:, None] - flat[None, :]).abs().sum() / (2 * flat.numel() * flat.sum())
    assert sparseness(values).item() == pytest.approx(gini.item(), abs=1e-6)
    shares = flat / flat.sum()
    assert complexity(values).item() == pytest.approx(-(shares * shares.log()).sum().item())
    # channels are summed by magnitude
    split = torch.stack([values[:, 0], -values[:, 0]], dim=1)
    assert sparseness(split).item() == pytest.approx(sparseness(values).item())
    with pytest.raises(InvalidOptionError, match="reduction"):
        sparseness(values, reduction="sum")  # type: ignore[arg-type]


def test_sparseness_tells_a_focused_gradient_from_the_controls() -> None:
    """A model that reads 4 pixels has a 4-pixel gradient: far sparser, far simpler than the
    noise and centre controls."""
    weights = torch.zeros(1, 16, 16)
    weights[0, 5:7, 9:11] = 1.0
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.cat([weights.flatten(1), -weights.flatten(1)]))
    inputs = torch.rand(3, 1, 16, 16)
    gradient = saliency.explain(model, inputs, "gradient", 0).attributions
    noise = control_map("baseline:random", inputs)
    centre = control_map("baseline:centre", inputs)
    assert bool((sparseness(gradient) > 0.95).all())
    assert bool((sparseness(noise) < 0.4).all()) and bool((sparseness(centre) < 0.6).all())
    assert complexity(gradient).tolist() == pytest.approx([math.log(4)] * 3)
    assert bool((complexity(noise) > math.log(256) - 0.3).all())


# ---- noisy linear imputation -----------------------------------------------------------------

NEIGHBOURS = [(-1, -1, 1 / 12), (-1, 0, 1 / 6), (-1, 1, 1 / 12), (0, -1, 1 / 6)]
NEIGHBOURS += [(0, 1, 1 / 6), (1, -1, 1 / 12), (1, 0, 1 / 6), (1, 1, 1 / 12)]


def test_one_removed_pixel_is_the_weighted_mean_of_its_neighbours() -> None:
    image = torch.rand(1, 2, 6, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for row, col in ((2, 3), (0, 0), (5, 2)):  # interior, corner, border
        removed = torch.zeros(1, 6, 7, dtype=torch.bool)
        removed[0, row, col] = True
        filled = linear_imputation(image, removed)
        found = [
            (weight, image[0, :, row + dr, col + dc])
            for dr, dc, weight in NEIGHBOURS
            if 0 <= row + dr < 6 and 0 <= col + dc < 7
        ]
        expected = sum(w * v for w, v in found) / sum(w for w, _ in found)
        assert filled[0, :, row, col].tolist() == pytest.approx(expected.tolist(), abs=1e-12)
        keep = ~removed[0]
        assert torch.equal(filled[0][:, keep], image[0][:, keep])  # kept pixels are untouched


def test_imputation_reconstructs_linear_images_and_fills_an_empty_image_with_zeros() -> None:
    """The stencil is symmetric, so a plane a·i + b·j + c is its own imputation inside."""
    axes = torch.arange(24.0, dtype=torch.float64), torch.arange(20.0, dtype=torch.float64)
    rows, cols = torch.meshgrid(*axes, indexing="ij")
    plane = (0.3 * rows - 0.2 * cols + 1.0).expand(2, 3, 24, 20)
    removed = torch.zeros(2, 24, 20, dtype=torch.bool)
    removed[0, 4:18, 3:15] = True  # a block
    removed[1, 1:-1, 1:-1] = torch.rand(22, 18, generator=torch.Generator().manual_seed(1)) < 0.9
    assert linear_imputation(plane, removed) == pytest.approx(plane, abs=1e-7)
    everything = torch.ones(1, 24, 20, dtype=torch.bool)
    assert torch.equal(linear_imputation(plane[:1], everything), torch.zeros(1, 3, 24, 20).double())
    single = plane[:1].float()
    assert linear_imputation(single, removed[:1]).dtype == torch.float32
    with pytest.raises(InvalidOptionError, match="removed"):
        linear_imputation(plane, removed[:1])


def test_noisy_imputation_adds_seeded_noise_on_removed_pixels_only() -> None:
    image = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    removed = torch.rand(2, 32, 32, generator=torch.Generator().manual_seed(1)) < 0.5
    clean = linear_imputation(image, removed)
    noisy = noisy_linear_imputation(image, removed, noise=0.05, seed=4)
    assert torch.equal(noisy, noisy_linear_imputation(image, removed, noise=0.05, seed=4))
    difference = (noisy - clean)[:, 0]
    assert torch.equal(difference[~removed], torch.zeros_like(difference[~removed]))
    assert float(difference[removed].std()) == pytest.approx(0.05, rel=0.1)
    with pytest.raises(InvalidOptionError, match="noise"):
        noisy_linear_imputation(image, removed, noise=-0.1)
    quick = linear_imputation(image, removed, tolerance=1e-5)  # solved in float32
    assert float((quick - clean).abs().max()) < 1e-3
    with pytest.warns(RuntimeWarning, match="stopped after 1 iterations"):
        linear_imputation(image, removed, max_iterations=1)
    with pytest.raises(InvalidOptionError, match="max_iterations"):
        linear_imputation(image, removed, max_iterations=0)


# ---- ROAD ------------------------------------------------------------------------------------


def patch_reader(size: int = 16) -> tuple[nn.Module, Tensor]:
    """Class 0 scores the evidence in a 6×6 patch, class 1 a fixed threshold: a model whose
    right explanation is that patch."""
    weights = torch.zeros(size, size)
    weights[3:9, 5:11] = 1.0
    model = nn.Sequential(nn.Flatten(), nn.Linear(size * size, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([weights.flatten() * 2.0, torch.zeros(size * size)]))
        model[1].bias.copy_(torch.tensor([0.0, 24.0]))
    return model.eval(), weights


def scenes_for(weights: Tensor, count: int = 4) -> Tensor:
    """Dark scenes with a bright patch where the model looks: class 0 is predicted."""
    generator = torch.Generator().manual_seed(0)
    inputs = 0.1 * torch.rand(count, 1, *weights.shape, generator=generator)
    return inputs + 0.8 * weights


def test_road_ranks_the_right_map_above_the_wrong_one_in_both_orders() -> None:
    model, weights = patch_reader()
    inputs = scenes_for(weights)
    assert bool((model(inputs).argmax(1) == 0).all())
    right = weights.expand(4, 1, 16, 16) + 0.01 * torch.rand(4, 1, 16, 16)
    wrong = 1.0 - right
    options = {"target": 0, "fractions": (0.1, 0.2, 0.3, 0.5)}
    morf_right = road(model, inputs, right, order="morf", **options)
    morf_wrong = road(model, inputs, wrong, order="morf", **options)
    lerf_right = road(model, inputs, right, order="lerf", **options)
    lerf_wrong = road(model, inputs, wrong, order="lerf", **options)
    assert bool((morf_right < morf_wrong - 0.3).all())  # removing the patch first kills class 0
    assert bool((lerf_right > lerf_wrong + 0.3).all())  # removing background first keeps it
    accuracy = road_curve(model, inputs, right, score="accuracy", **options)
    assert accuracy.fractions.tolist() == pytest.approx([25 / 256, 51 / 256, 76 / 256, 128 / 256])
    assert accuracy.scores[:, -1].tolist() == [0.0] * 4


def test_road_does_not_depend_on_batch_size_and_restores_the_model() -> None:
    model, weights = patch_reader()
    model.train()
    inputs = scenes_for(weights, count=3)
    maps = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    whole = road_curve(model, inputs, maps, target=0, score="logit", seed=3)
    pieces = road_curve(model, inputs, maps, target=0, score="logit", seed=3, batch_size=2)
    assert torch.allclose(whole.scores, pieces.scores, atol=1e-5)
    assert not torch.allclose(
        whole.scores, road_curve(model, inputs, maps, target=0, score="logit", seed=4).scores
    )
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(InvalidOptionError, match="order"):
        road(model, inputs, maps, order="random")  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match="fractions"):
        road(model, inputs, maps, fractions=(0.5, 1.5))
    with pytest.raises(InvalidOptionError, match="fractions"):
        road(model, inputs, maps, fractions=())
    with pytest.raises(InvalidOptionError, match="do not fit"):
        road(model, inputs, maps[:2])
    with pytest.raises(InvalidTargetError):
        road(model, inputs, maps, target=lambda outputs: outputs[:, 0])


# ---- similarity ------------------------------------------------------------------------------


def test_ssim_equals_scikit_image() -> None:
    generator = torch.Generator().manual_seed(0)
    first = torch.rand(3, 12, 15, generator=generator, dtype=torch.float64)
    second = first + 0.3 * torch.rand(3, 12, 15, generator=generator, dtype=torch.float64)
    second[2] = torch.rand(12, 15, generator=generator)
    ours = ssim(first, second)
    for index in range(3):
        a, b = first[index].numpy(), second[index].numpy()
        span = float(max(a.max(), b.max()) - min(a.min(), b.min()))
        expected = structural_similarity(a, b, data_range=span)
        assert ours[index].item() == pytest.approx(expected, abs=1e-6)
    assert ssim(first, first).tolist() == pytest.approx([1.0] * 3)
    constant = torch.ones(1, 8, 8)
    assert ssim(constant, constant).item() == 1.0
    assert map_similarity(first, first, "spearman").tolist() == pytest.approx([1.0] * 3)
    with pytest.raises(InvalidOptionError, match="at least 7"):
        ssim(torch.rand(1, 6, 9), torch.rand(1, 6, 9))
    with pytest.raises(InvalidOptionError, match="similarity"):
        map_similarity(first, first, "pearson")  # type: ignore[arg-type]


# ---- random logit ----------------------------------------------------------------------------


def test_off_target_classes_are_uniform_over_the_others_and_seeded() -> None:
    targets = torch.tensor([0, 3, 4] * 400)
    drawn = off_target_classes(targets, 5, seed=2)
    assert not bool((drawn == targets).any()) and bool(((drawn >= 0) & (drawn < 5)).all())
    assert torch.equal(drawn, off_target_classes(targets, 5, seed=2))
    counts = torch.bincount(drawn[targets == 3], minlength=5)
    assert counts[3] == 0 and bool((counts[[0, 1, 2, 4]] > 70).all())
    with pytest.raises(InvalidOptionError, match="classes"):
        off_target_classes(targets, 1)


@dataclass(frozen=True)
class InputMagnitude(Method):
    """A class-blind "explanation": |x|, whatever the target (an edge-detector-like method)."""

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        return inputs.abs()


def test_random_logit_tells_class_sensitive_maps_from_class_blind_ones() -> None:
    """Four classes that each read their own quadrant: the gradient of another class points
    elsewhere (low similarity), a class-blind map is the same for every class (similarity 1)."""
    size = 16
    quadrants = torch.zeros(4, size, size)
    for index, (row, col) in enumerate(((0, 0), (0, 8), (8, 0), (8, 8))):
        quadrants[index, row : row + 8, col : col + 8] = 1.0
    model = nn.Sequential(nn.Flatten(), nn.Linear(size * size, 4))
    with torch.no_grad():
        model[1].weight.copy_(quadrants.flatten(1))
    inputs = torch.rand(5, 1, size, size, generator=torch.Generator().manual_seed(0))
    sensitive = random_logit(model, inputs, "gradient", seed=1)
    blind = random_logit(model, inputs, InputMagnitude(), seed=1)
    assert bool((sensitive < 0.2).all()) and blind.tolist() == pytest.approx([1.0] * 5)
    ranked = random_logit(model, inputs, "gradient", similarity="spearman", seed=1)
    assert bool((ranked < 0).all())  # inside vs outside the other quadrant: anti-correlated
    with pytest.raises(InvalidOptionError, match="similarity"):
        random_logit(model, inputs, similarity="l2")  # type: ignore[arg-type]


# ---- input invariance ------------------------------------------------------------------------


@dataclass(frozen=True)
class GradientTimesInput(Method):
    """x ⊙ ∂f/∂x, computed by hand from the engine's gradient."""

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        return inputs * engine.accumulate(Points.of(inputs), target)


def padded_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.Softplus(),
        nn.Conv2d(6, 6, 3, stride=2),
        nn.Softplus(),
        nn.Flatten(),
        nn.LazyLinear(3),
    )


def test_gradient_is_input_invariant_and_gradient_times_input_is_not() -> None:
    """Kindermans et al.'s finding, on a zero-padded CNN (the compensation is exact at the
    borders too) and a per-channel shift."""
    model = padded_cnn()
    inputs = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    model(inputs)
    shift = torch.tensor([-0.5, 0.2, 1.0]).view(3, 1, 1)
    assert bool((input_invariance(model, inputs, "gradient", shift=shift) < 1e-5).all())
    assert bool((input_invariance(model, inputs, GradientTimesInput(), shift=shift) > 0.1).all())
    ig = {"steps": 8}
    zero_baseline = input_invariance(model, inputs, "integrated_gradients", shift=1.0, **ig)
    moved_baseline = input_invariance(
        model, inputs, "integrated_gradients", shift=1.0, shifted_options={"baseline": 1.0}, **ig
    )
    assert bool((zero_baseline > 0.1).all()) and bool((moved_baseline < 1e-5).all())
    cam = input_invariance(model, inputs, "gradcam", shift=-1.0, layer="0")
    assert bool((cam < 1e-4).all())  # the hooked layer is the compensated one


class Normalised(nn.Module):
    """(x − mean) / std before the first convolution: still an affine path to it."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.2, 0.3, 0.25]).view(1, 3, 1, 1))
        self.body = padded_cnn()

    def forward(self, inputs: Tensor) -> Tensor:
        return self.body((inputs - self.mean) / self.std)


class InputSkip(nn.Module):
    """Adds the raw input back after the convolution: no bias of that layer absorbs a shift."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.head = nn.Sequential(nn.Tanh(), nn.Flatten(), nn.Linear(64, 2))

    def forward(self, inputs: Tensor) -> Tensor:
        return self.head(self.conv(inputs) + inputs)


class LateRegistration(nn.Module):
    """Registers the head before the stem: the first layer to run is not the first registered."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 2)
        self.stem = nn.Conv2d(1, 2, 3)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.head(self.stem(inputs).amax(dim=(2, 3)).repeat(1, 4))


def test_compensation_through_an_affine_path_and_its_limits() -> None:
    model = Normalised()
    inputs = torch.rand(2, 3, 16, 16)
    model(inputs)
    assert first_linear_layer(model, inputs) == "body.0"
    assert bool((input_invariance(model, inputs, "gradient", shift=0.7) < 1e-5).all())
    skip = InputSkip()
    with pytest.raises(InvalidOptionError, match="affine map"):
        input_invariance(skip, torch.rand(2, 1, 8, 8))
    late = LateRegistration()
    assert first_linear_layer(late, torch.rand(1, 1, 6, 6)) == "stem"
    with pytest.raises(LayerNotFoundError, match="no Linear or Conv"):
        first_linear_layer(nn.Sequential(nn.Flatten(), nn.Tanh()), inputs)
    with pytest.raises(LayerNotFoundError, match="layer='nope'"):
        input_invariance(late, torch.rand(1, 1, 6, 6), layer="nope")
    with pytest.raises(InvalidOptionError, match="broadcast"):
        input_invariance(model, inputs, shift=torch.ones(2, 1, 1))
    with pytest.raises(InvalidOptionError, match="shift=nan"):
        input_invariance(model, inputs, shift=float("nan"))


def test_input_invariance_leaves_the_model_as_it_was() -> None:
    model = padded_cnn()
    inputs = torch.rand(2, 3, 16, 16)
    model(inputs)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    input_invariance(model, inputs, "gradient")
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(
        not module._forward_hooks and not module._forward_pre_hooks for module in model.modules()
    )
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    outputs = model.eval()(inputs + 0.5)
    assert not torch.allclose(outputs, model(inputs))  # no compensation left behind
    assert np.isfinite(outputs.detach().numpy()).all()
