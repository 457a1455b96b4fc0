"""Control maps (saliency.metrics.controls): shapes, determinism, scipy's Sobel, and what the
controls score on a scene whose object is its only structure."""

from __future__ import annotations

import subprocess
import sys
from typing import get_args

import numpy as np
import pytest
import torch
from scipy import ndimage

from saliency.errors import InvalidOptionError
from saliency.metrics import (
    CONTROLS,
    Control,
    centre_gaussian,
    control_map,
    pointing_game,
    random_noise,
    relevance_mass,
    sobel_edges,
)


def test_every_control_is_a_non_negative_map_on_the_inputs_device_and_dtype() -> None:
    assert (
        CONTROLS
        == get_args(Control)
        == (
            "baseline:centre",
            "baseline:random",
            "baseline:edges",
        )
    )
    for dtype in (torch.float32, torch.float64):
        inputs = torch.rand(3, 2, 9, 12, dtype=dtype)
        for name in CONTROLS:
            result = control_map(name, inputs)  # type: ignore[arg-type]
            assert result.shape == (3, 1, 9, 12) and result.dtype == dtype
            assert result.device == inputs.device and bool((result >= 0).all())
    assert inputs.equal(inputs.clone())  # inputs untouched
    with pytest.raises(InvalidOptionError, match="baseline:edges"):
        control_map("edges", inputs)  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match="inputs"):
        control_map("baseline:centre", torch.rand(9, 12))


def test_centre_gaussian_closed_form() -> None:
    inputs = torch.zeros(2, 3, 8, 11)
    gaussian = centre_gaussian(inputs, sigma=0.25)
    sigma = 0.25 * 8
    rows, cols = np.meshgrid(np.arange(8) - 3.5, np.arange(11) - 5.0, indexing="ij")
    expected = np.exp(-(rows**2 + cols**2) / (2 * sigma**2))
    assert gaussian[1, 0].numpy() == pytest.approx(expected, rel=1e-6)
    assert torch.equal(gaussian[0], gaussian[1])  # the same for every input
    assert torch.equal(gaussian, gaussian.flip(-1)) and torch.equal(gaussian, gaussian.flip(-2))
    assert float(centre_gaussian(torch.zeros(1, 1, 5, 7)).max()) == 1.0  # a centre pixel
    with pytest.raises(InvalidOptionError, match="sigma"):
        centre_gaussian(inputs, sigma=0.0)


def test_random_noise_is_seeded_uniform() -> None:
    inputs = torch.rand(4, 3, 16, 16)
    first = random_noise(inputs, seed=5)
    assert torch.equal(first, random_noise(inputs, seed=5))
    assert torch.equal(first, control_map("baseline:random", inputs, seed=5))
    assert not torch.equal(first, random_noise(inputs, seed=6))
    assert float(first.min()) >= 0.0 and float(first.max()) < 1.0
    assert float(first.mean()) == pytest.approx(0.5, abs=0.03)
    with pytest.raises(InvalidOptionError, match="seed"):
        random_noise(inputs, seed=-1)


def test_sobel_edges_equal_scipy() -> None:
    """E = sqrt(Σ_c sobel_rows(x_c)² + sobel_cols(x_c)²), scipy's mode="reflect" borders."""
    inputs = torch.rand(
        2, 3, 10, 13, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    image = inputs.numpy()
    edges = sobel_edges(inputs)
    for sample in range(2):
        squares = sum(
            ndimage.sobel(image[sample, c], axis=axis, mode="reflect") ** 2
            for axis in (0, 1)
            for c in range(3)
        )
        assert edges[sample, 0].numpy() == pytest.approx(np.sqrt(squares), rel=1e-12)
    flat = torch.full((1, 3, 6, 6), 0.3)
    assert float(sobel_edges(flat).abs().max()) == 0.0  # no edges in a flat image


def test_edges_control_finds_a_lone_object_and_noise_scores_chance() -> None:
    """Why the edge detector is a control: on a scene whose object is its only structure it
    localises well with no model at all, while noise scores about the mask's area share."""
    inputs = torch.full((1, 3, 32, 32), 0.2)
    inputs[:, :, 10:20, 12:22] = 0.9
    masks = torch.zeros(1, 32, 32, dtype=torch.bool)
    masks[:, 10:20, 12:22] = True
    edges = control_map("baseline:edges", inputs)
    noise = control_map("baseline:random", inputs)
    assert pointing_game(edges, masks, tolerance=1).item() == 1.0
    assert relevance_mass(edges, masks).item() > 0.45  # half the edge ring lies inside the box
    area = masks.float().mean().item()
    assert relevance_mass(noise, masks).item() == pytest.approx(area, abs=0.03)


def test_import_saliency_does_not_import_quantus() -> None:
    code = "import sys, saliency, saliency.metrics; print('quantus' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
