"""The project's main job: measure every registered method on the shipped demo models.

For each installed demo model (``demo:shapes``, ``demo:shapes-shortcut``, ``demo:shapes-rrr``)
:func:`run_demo` draws the model's test scenes (seeded, with exact object and marker masks),
explains the true class with every registered method, computes every metric of
:mod:`saliency.metrics` (localisation, deletion/insertion, cascading parameter randomisation,
marker versus object mass, and explanation robustness under an adversarial perturbation), and
writes one run folder::

    OUT/metrics.json, OUT/metrics.csv     one row per model × method
    OUT/manifest.json                     the run, in the ``saliency explain`` layout
    OUT/<model>/scene_NNNN.png/           original (masks outlined) + one overlay per method
    OUT/scenes/<model>/                   the scenes and masks as PNG (for ``saliency explain``)
    OUT/index.html                        the gallery, with the metrics table

Everything runs offline and is deterministic given the seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import PIL.Image
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saliency.demo_models import DEMO_MODELS, demo_scenes, installed_demo_models
from saliency.errors import InvalidOptionError, accepted
from saliency.explanation import Explanation
from saliency.gallery.builder import build_gallery
from saliency.gallery.from_explanations import run_section, write_inputs, write_manifest
from saliency.images import Preprocess
from saliency.methods.registry import get_method, list_methods
from saliency.metrics.fragility import fragility
from saliency.metrics.report import (
    DEMO_METHOD_OPTIONS,
    MethodEvaluation,
    MetricSettings,
    evaluate_method,
    write_metrics,
)
from saliency.models import load_model
from saliency.shapes import CLASS_NAMES, TEST_SEED, Scenes, save_scenes
from saliency.training import accuracy

__all__ = [
    "DemoResult",
    "DemoSettings",
    "mask_outlines",
    "outlined_pictures",
    "run_demo",
]

OBJECT_OUTLINE = (0, 255, 0)
MARKER_OUTLINE = (255, 0, 255)
ROBUSTNESS_EPSILON = 8 / 255
"""L∞ radius of the robustness attack, in pixel units ([0, 1] images)."""


@dataclass(frozen=True)
class DemoSettings:
    """What :func:`run_demo` does.

    Attributes:
        images: Test scenes per model.
        seed: Seed of the scenes (default: the test split of the weights manifest).
        device: Where to run (None: CPU).
        models: Demo model names (None: every installed one).
        methods: Registered method names (None: every registered method).
        sanity_samples: Scenes of the parameter-randomisation check (0 skips it).
        robustness_samples: Scenes of the robustness attack (0 skips it).
        robustness_steps: Ascent steps of the attack.
        step: Deletion/insertion step, a fraction of the pixels.
        gallery: Build ``index.html``.
    """

    images: int = 24
    seed: int = TEST_SEED
    device: str | torch.device | None = None
    models: tuple[str, ...] | None = None
    methods: tuple[str, ...] | None = None
    sanity_samples: int = 2
    robustness_samples: int = 2
    robustness_steps: int = 2
    step: float = 0.1
    gallery: bool = True

    def __post_init__(self) -> None:
        for name in ("images", "sanity_samples", "robustness_samples", "robustness_steps"):
            value = getattr(self, name)
            least = 1 if name in ("images", "robustness_steps") else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise InvalidOptionError(f"{name}={value!r}; accepted: an int >= {least}")
        if self.models is not None:
            unknown = [m for m in self.models if m not in DEMO_MODELS]
            if unknown:
                raise InvalidOptionError(
                    f"unknown demo model(s) {unknown}; accepted: {accepted(DEMO_MODELS)}"
                )
        if self.methods is not None:
            unknown = [m for m in self.methods if m not in list_methods()]
            if unknown:
                raise InvalidOptionError(
                    f"unknown method(s) {unknown}; accepted: {accepted(list_methods())}"
                )


@dataclass
class DemoResult:
    """What :func:`run_demo` wrote and measured.

    Attributes:
        out: The run folder.
        rows: The metrics rows (one per model × method).
        gallery: The gallery page, or None.
        seconds: Wall time.
        accuracy: Per model, the accuracy on the explained scenes.
    """

    out: Path
    rows: list[dict[str, Any]]
    gallery: Path | None
    seconds: float
    accuracy: dict[str, float] = field(default_factory=dict)


def mask_outlines(masks: Tensor) -> Tensor:
    """Boundary pixels of ``(N, H, W)`` boolean masks: inside, with an outside pixel (or the
    image border) among their 8 neighbours."""
    solid = masks[:, None].float()
    eroded = -F.max_pool2d(-F.pad(solid, (1, 1, 1, 1), value=0.0), 3, stride=1, padding=0)
    return (solid.bool() & ~eroded.bool())[:, 0]


def outlined_pictures(scenes: Scenes) -> list[PIL.Image.Image]:
    """The scenes as PIL images with the object mask outlined in green, the marker in magenta."""
    pixels = scenes.images.clone()
    for masks, colour in ((scenes.masks, OBJECT_OUTLINE), (scenes.marker_masks, MARKER_OUTLINE)):
        edge = mask_outlines(masks)[:, None].expand_as(pixels)
        paint = torch.tensor(colour, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
        pixels = torch.where(edge, paint.expand_as(pixels), pixels)
    array = pixels.permute(0, 2, 3, 1).cpu().numpy()
    return [PIL.Image.fromarray(image, mode="RGB") for image in array]


def run_demo(
    out: str | Path,
    settings: DemoSettings = DemoSettings(),
    *,
    on_step: Callable[[str], None] | None = None,
) -> DemoResult:
    """Measure every method on every installed demo model and write the run folder.

    Args:
        out: The run folder (created; files of the same names are replaced).
        settings: What to run.
        on_step: Called with a short description after each model × method (progress).

    Returns:
        A :class:`DemoResult`.
    """
    started = time.perf_counter()
    stamp = _now()
    folder = Path(out).absolute()
    models = settings.models if settings.models is not None else installed_demo_models()
    if not models:
        raise InvalidOptionError("no demo model weights are installed; reinstall saliency-kit")
    methods = settings.methods if settings.methods is not None else tuple(list_methods())
    rows, entries, accuracy = [], [], {}
    results: list[Explanation] = []
    for name in models:
        evaluations, scenes, hits = _evaluate_model(name, methods, settings, on_step)
        accuracy[f"demo:{name}"] = hits
        rows += [evaluation.row for evaluation in evaluations]
        save_scenes(scenes, folder / "scenes" / name)
        relpaths = [f"{name}/scene_{scenes.start + i:04d}.png" for i in range(len(scenes))]
        results = [evaluation.explanation for evaluation in evaluations]
        per_input = [evaluation.seconds / len(scenes) for evaluation in evaluations]
        entries += write_inputs(
            results,
            folder,
            relpaths,
            outlined_pictures(scenes),
            labels=CLASS_NAMES,
            seconds=per_input,
        )
    seconds = time.perf_counter() - started
    run = run_section(
        results,
        ", ".join(f"demo:{name}" for name in models),
        CLASS_NAMES,
        stamp,
        inputs=len(entries),
        seconds=round(seconds, 2),
    )
    write_manifest(folder, entries, run)
    write_metrics(rows, folder, notes=_notes(settings, accuracy))
    page = build_gallery(folder, title="saliency demo") if settings.gallery else None
    return DemoResult(folder, rows, page, time.perf_counter() - started, accuracy)


def _evaluate_model(
    name: str,
    methods: Sequence[str],
    settings: DemoSettings,
    on_step: Callable[[str], None] | None,
) -> tuple[list[MethodEvaluation], Scenes, float]:
    """Every method × metric on one demo model's test scenes; also its accuracy on them."""
    loaded = load_model(f"demo:{name}", device=settings.device)
    assert isinstance(loaded.transform, Preprocess)
    device = next(loaded.model.parameters()).device
    scenes = demo_scenes(name, settings.images, seed=settings.seed, device=device)
    inputs = loaded.transform.normalize(scenes.images)
    hits = accuracy(loaded.model, scenes)
    # Markers of random classes: a model that reads the marker instead of the shape fails here.
    counterfactual = None
    if DEMO_MODELS[name].counterfactual is not None:
        swapped = demo_scenes(
            name, settings.images, split="counterfactual", seed=settings.seed, device=device
        )
        counterfactual = accuracy(loaded.model, swapped)
    has_markers = scenes.config.marker != "none"
    metric_settings = MetricSettings(sanity_samples=settings.sanity_samples, step=settings.step)
    evaluations = []
    for method in methods:
        if not get_method(method).applies_to(loaded.model):
            continue  # e.g. attention methods on a CNN
        options = DEMO_METHOD_OPTIONS.get(method, {})
        # the query pixels dominate an interaction map, so randomising weights cannot move its
        # ranking: the sanity check says nothing about second-order methods and costs the most
        first_order = get_method(method).derivative_order <= 1
        evaluation = evaluate_method(
            loaded.model,
            inputs,
            scenes.masks,
            method,
            model_name=f"demo:{name}",
            target=scenes.labels,
            marker_masks=scenes.marker_masks if has_markers else None,
            options=options,
            settings=metric_settings if first_order else replace(metric_settings, sanity_samples=0),
        )
        evaluation.row["accuracy"] = hits
        evaluation.row["counterfactual_accuracy"] = counterfactual
        evaluation.row.update(_robustness(loaded.model, inputs, method, options, settings))
        evaluation.row["seconds"] = round(evaluation.seconds, 3)
        evaluations.append(evaluation)
        if on_step is not None:
            on_step(f"demo:{name} {method}")
    return evaluations, scenes, hits


def _robustness(
    model: nn.Module,
    inputs: Tensor,
    method: str,
    options: dict[str, Any],
    settings: DemoSettings,
) -> dict[str, float | None]:
    """The robustness columns: rank correlation of the maps under the attack and under noise.

    The attack runs on the Softplus(β = 10) surrogate of the ReLU model (its gradient maps are
    piecewise constant) within an L∞ ball of 8/255 pixel units; the inputs are normalised by
    σ = 0.25, so ε and the clamp are converted to input units.
    """
    count = min(settings.robustness_samples, len(inputs))
    if count == 0:
        return {}
    if get_method(method).derivative_order > 1:
        # the attack differentiates the attributions: third derivatives, too slow for a demo
        return dict.fromkeys(("robustness", "robustness_top_k", "random_robustness"), None)
    result = fragility(
        model,
        inputs[:count],
        method,
        epsilon=ROBUSTNESS_EPSILON / 0.25,
        steps=settings.robustness_steps,
        beta=10.0,
        clamp=(-2.0, 2.0),
        method_options=options,
    )
    summary = result.summary()
    return {
        "robustness": summary["spearman"],
        "robustness_top_k": summary["top_k_intersection"],
        "random_robustness": summary["random_spearman"],
    }


def _notes(settings: DemoSettings, accuracy: dict[str, float]) -> str:
    shown = ", ".join(f"{model} {value:.3f}" for model, value in accuracy.items())
    return (
        f"{settings.images} test scenes per model (seed {settings.seed}); the true class is "
        f"explained. Accuracy on them: {shown}; counterfactual_accuracy: on as many scenes "
        f"whose markers show random classes (models trained with markers). Masses and "
        f"localisation use |attribution| summed over channels; deletion substrate zeros, "
        f"insertion substrate blur, step "
        f"{settings.step:.0%}. "
        f"sanity_<layer>: Spearman correlation with the map after cascading randomisation down "
        f"to that layer ({settings.sanity_samples} scenes; low is good; first-order methods "
        f"only). robustness: Spearman "
        f"correlation of the map with the map after a label-preserving adversarial perturbation "
        f"of L∞ 8/255 ({settings.robustness_samples} scenes, {settings.robustness_steps} steps; "
        f"high is robust; not measured for second-order methods), random_robustness: the same "
        f"for random noise of that size."
    )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
