"""The shipped demo models against the quality bar of the demo's metrics table.

On the test scenes of ``demo:shapes`` (seeded, the first of the split ``saliency demo`` uses):
Grad-CAM points at the object in at least 90% of them, every first-order gradient method beats
the ``baseline:random`` control on the pointing game, and Integrated Hessians with its default
query (the model's own most-attributed pixels) beats ``baseline:centre`` by at least 0.1. A
retrained model that breaks any of these must not ship.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import saliency
from saliency.demo.models import demo_scenes
from saliency.demo.runner import SMOOTH_BETA
from saliency.metrics import control_map, pointing_game
from saliency.metrics.report import DEMO_METHOD_OPTIONS

SCENES = 64


@pytest.fixture(scope="module")
def clean() -> dict[str, Any]:
    loaded = saliency.load_model("demo:shapes")
    scenes = demo_scenes("shapes", SCENES)
    inputs = loaded.transform.normalize(scenes.images)
    return {"model": loaded.model, "inputs": inputs, "scenes": scenes}


def _pointing(clean: dict[str, Any], method: str, count: int = SCENES, **extra: Any) -> float:
    options = {**DEMO_METHOD_OPTIONS.get(method, {}), **extra}
    inputs, scenes = clean["inputs"][:count], clean["scenes"]
    explanation = saliency.explain(clean["model"], inputs, method, scenes.labels[:count], **options)
    return float(pointing_game(explanation.attributions, scenes.masks[:count]).float().mean())


def _control(clean: dict[str, Any], name: str, count: int = SCENES) -> float:
    maps = control_map(name, clean["inputs"][:count])  # type: ignore[arg-type]
    return float(pointing_game(maps, clean["scenes"].masks[:count]).float().mean())


def test_gradcam_points_at_the_object_in_at_least_90_percent_of_clean_scenes(
    clean: dict[str, Any],
) -> None:
    assert _pointing(clean, "gradcam") >= 0.9


@pytest.mark.parametrize("method", ["gradient", "integrated_gradients", "smoothgrad", "gradcam"])
def test_every_first_order_method_beats_the_random_control(
    clean: dict[str, Any], method: str
) -> None:
    count = 32
    assert _pointing(clean, method, count) > _control(clean, "baseline:random", count) + 0.1


def test_integrated_hessians_beats_the_centre_control_by_a_tenth(clean: dict[str, Any]) -> None:
    count = 32
    model = clean["model"]
    with saliency.smooth_relu(model, SMOOTH_BETA):
        hessians = _pointing(clean, "integrated_hessians", count)
    assert not any(isinstance(m, torch.nn.Softplus) for m in model.modules())
    assert hessians >= _control(clean, "baseline:centre", count) + 0.1
