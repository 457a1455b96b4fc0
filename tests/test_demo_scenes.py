"""Tests for saliency.demo.scenes: determinism, ground truth, markers, contrast, PNG round trips."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from saliency.demo.scenes import (
    BLOCK,
    CLASS_NAMES,
    CLEAN,
    COUNTERFACTUAL,
    DISTRACTOR_NAMES,
    GENERATOR_VERSION,
    MARKER_COLOURS,
    SHORTCUT,
    SceneConfig,
    block_seed,
    generate_scenes,
    load_scenes,
    save_scenes,
    shape_masks,
)
from saliency.demo.scenes import _contrasting_colours as contrasting_colours
from saliency.errors import InvalidOptionError


@pytest.fixture(scope="module")
def shortcut_scenes():
    return generate_scenes(2 * BLOCK, seed=7, config=SHORTCUT)


def test_shapes_dtypes_and_ranges() -> None:
    scenes = generate_scenes(10, seed=0)
    assert scenes.images.shape == (10, 3, 96, 96) and scenes.images.dtype == torch.uint8
    assert scenes.masks.shape == (10, 96, 96) and scenes.masks.dtype == torch.bool
    assert scenes.labels.dtype == torch.int64
    assert int(scenes.labels.min()) >= 0 and int(scenes.labels.max()) < len(CLASS_NAMES)
    assert not scenes.marker_masks.any() and bool((scenes.marker_labels == -1).all())
    assert scenes.floats().dtype == torch.float32 and float(scenes.floats().max()) <= 1.0
    assert len(CLASS_NAMES) >= 8 and not set(CLASS_NAMES) & set(DISTRACTOR_NAMES)
    assert isinstance(GENERATOR_VERSION, int)


def test_same_seed_same_scenes_and_prefix_property() -> None:
    first = generate_scenes(70, seed=3)
    again = generate_scenes(70, seed=3)
    assert torch.equal(first.images, again.images) and torch.equal(first.masks, again.masks)
    window = generate_scenes(10, seed=3, start=60)  # crosses a block boundary
    assert torch.equal(window.images, first.images[60:70])
    assert torch.equal(window.labels, first.labels[60:70]) and window.start == 60
    other = generate_scenes(10, seed=4)
    assert not torch.equal(other.images, first.images[:10])


def test_block_seeds_are_distinct_and_non_negative() -> None:
    seeds = {block_seed(s, b, stream) for s in range(4) for b in range(8) for stream in (0, 1)}
    assert len(seeds) == 64 and all(0 <= s < 2**63 for s in seeds)


def test_classes_roughly_balanced() -> None:
    labels = generate_scenes(4 * BLOCK, seed=11).labels
    counts = torch.bincount(labels, minlength=len(CLASS_NAMES))
    assert int(counts.min()) >= 16, counts  # 32 expected per class


def test_every_shape_fits_in_its_disk_and_has_area() -> None:
    names = CLASS_NAMES + DISTRACTOR_NAMES
    count, size, radius = len(names), 101, 40.0
    centres = torch.full((count, 2), 50.5)
    angles = torch.linspace(0.0, 3.0, count)
    masks = shape_masks(
        torch.arange(count), centres, torch.full((count,), radius), angles, size, names
    )
    pixels = torch.arange(size) + 0.5
    distance = torch.hypot(pixels.view(1, -1) - 50.5, pixels.view(-1, 1) - 50.5)
    for index, name in enumerate(names):
        assert bool((distance[masks[index]] <= radius + 0.5).all()), name
        assert int(masks[index].sum()) > 0.1 * math.pi * radius**2, name
    circle = masks[names.index("circle")]
    assert abs(int(circle.sum()) - math.pi * radius**2) < 2 * math.pi * radius


def test_object_is_flat_coloured_and_contrasting() -> None:
    scenes = generate_scenes(64, seed=2)
    image = scenes.images.float() / 255
    for i in range(len(scenes)):
        pixels = image[i][:, scenes.masks[i]]
        assert pixels.shape[1] > 100
        assert float((pixels - pixels[:, :1]).abs().max()) < 1e-6


@pytest.mark.parametrize("contrast", [0.3, 0.8])
def test_contrasting_colours_guarantee(contrast: float) -> None:
    generator = torch.Generator().manual_seed(0)
    local = torch.rand(500, 3, generator=torch.Generator().manual_seed(1))
    local[:4] = torch.tensor([[0.5, 0.5, 0.5], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.2, 0.9, 0.4]])
    colours = contrasting_colours(generator, local, contrast)
    assert float((colours - local).norm(dim=1).min()) >= contrast
    assert float(colours.min()) >= 0.0 and float(colours.max()) <= 1.0


def test_marker_agreement_and_counterfactual(shortcut_scenes) -> None:
    scenes = shortcut_scenes
    agree = (scenes.marker_labels == scenes.labels).float().mean()
    assert 0.9 <= float(agree) < 1.0
    counterfactual = generate_scenes(2 * BLOCK, seed=7, config=COUNTERFACTUAL)
    chance = (counterfactual.marker_labels == counterfactual.labels).float().mean()
    assert float(chance) < 0.3
    # same objects and backgrounds, only the marker differs
    assert torch.equal(counterfactual.labels, scenes.labels)
    assert torch.equal(counterfactual.masks, scenes.masks)
    assert torch.equal(counterfactual.marker_masks, scenes.marker_masks)
    outside = ~scenes.marker_masks.unsqueeze(1).expand_as(scenes.images)
    assert torch.equal(counterfactual.images[outside], scenes.images[outside])


def test_marker_masks_are_square_disjoint_and_class_coloured(shortcut_scenes) -> None:
    scenes = shortcut_scenes
    side = round(SHORTCUT.marker_size * SHORTCUT.size)
    assert bool((scenes.marker_masks.sum(dim=(1, 2)) == side * side).all())
    assert not bool((scenes.marker_masks & scenes.masks).any())
    assert bool((scenes.masks.sum(dim=(1, 2)) > 50).all())
    palette = (torch.tensor(MARKER_COLOURS) * 255).round()
    for i in range(8):
        ys, xs = scenes.marker_masks[i].nonzero(as_tuple=True)
        centre = scenes.images[i, :, int(ys.float().mean()), int(xs.float().mean())].float()
        assert torch.equal(centre, palette[int(scenes.marker_labels[i])])


def test_clean_scenes_have_no_marker_and_masks_are_exact() -> None:
    scenes = generate_scenes(BLOCK, seed=5, config=CLEAN)
    assert not scenes.marker_masks.any()
    # exact masks: every object pixel has the object colour, and no 4-neighbour outside does
    # unless the background happens to match it exactly (vanishingly rare with clutter)
    image = scenes.images
    for i in range(4):
        colour = image[i][:, scenes.masks[i]][:, 0]
        same = (image[i] == colour.view(3, 1, 1)).all(dim=0)
        assert torch.equal(same & scenes.masks[i], scenes.masks[i])
        assert int((same & ~scenes.masks[i]).sum()) <= 3


def test_config_validation() -> None:
    with pytest.raises(InvalidOptionError, match="marker"):
        SceneConfig(marker="sometimes")  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match="size"):
        SceneConfig(size=8)
    with pytest.raises(InvalidOptionError, match="count"):
        generate_scenes(0)
    with pytest.raises(InvalidOptionError, match="seed"):
        generate_scenes(1, seed=-1)


def test_other_sizes_and_no_distractors() -> None:
    config = SceneConfig(size=128, distractors=(0, 0))
    scenes = generate_scenes(8, seed=1, config=config)
    assert scenes.images.shape == (8, 3, 128, 128)


def test_save_and_load_round_trip(tmp_path: Path, shortcut_scenes) -> None:
    scenes = generate_scenes(5, seed=7, config=SHORTCUT, start=3)
    files = save_scenes(scenes, tmp_path)
    assert [f.name for f in files] == [f"scene_{i:04d}.png" for i in range(3, 8)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "images",
        "markers",
        "masks",
        "scenes.json",
    ]
    index = json.loads((tmp_path / "scenes.json").read_text())
    assert index["generator_version"] == GENERATOR_VERSION and index["seed"] == 7
    assert index["class_names"] == list(CLASS_NAMES)
    assert index["scenes"][0]["class"] == CLASS_NAMES[int(scenes.labels[0])]
    loaded = load_scenes(tmp_path)
    for name in ("images", "labels", "masks", "marker_masks", "marker_labels"):
        assert torch.equal(getattr(loaded, name), getattr(scenes, name)), name
    assert loaded.config == scenes.config and loaded.start == 3
    assert torch.equal(shortcut_scenes.images[3:8], scenes.images)
