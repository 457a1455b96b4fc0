"""The project's main job: measure every registered method on the shipped demo models.

For each installed demo model (``demo:shapes``, ``demo:shapes-shortcut``, ``demo:shapes-rrr``)
:func:`run_demo` draws the model's test scenes (seeded, with exact object and marker masks),
explains the true class with every registered method, computes every metric of
:mod:`saliency.metrics` (localisation, deletion/insertion, cascading parameter randomisation,
marker versus object mass, and explanation robustness under an adversarial perturbation), scores
the model-independent controls of :mod:`saliency.metrics.controls` (``baseline:centre``,
``baseline:random``, ``baseline:edges``) with the same metrics, gives every mean its 95%
interval over the scenes (``<metric>_low`` / ``<metric>_high``), and writes one run folder::

    OUT/metrics.json, OUT/metrics.csv     one row per model × method or control
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
from typing import Any, cast

import torch
from torch import Tensor, nn

from saliency.demo.models import DEMO_MODELS, default_demo_models, demo_scenes
from saliency.demo.report import write_model, write_run
from saliency.demo.scenes import TEST_SEED, Scenes
from saliency.demo.training import accuracy
from saliency.errors import InvalidOptionError, accepted
from saliency.explanation import Explanation
from saliency.images import Preprocess
from saliency.inference_copy import inference_copy
from saliency.methods.registry import get_method, list_methods
from saliency.metrics.controls import CONTROLS, Control, control_map
from saliency.metrics.fragility import fragility
from saliency.metrics.intervals import wilson_interval
from saliency.metrics.relevance import relevance_map
from saliency.metrics.report import (
    DEMO_METHOD_OPTIONS,
    MethodEvaluation,
    MetricSettings,
    evaluate_control,
    evaluate_method,
    summary_columns,
)
from saliency.metrics.sanity import spearman_correlation
from saliency.models import load_model
from saliency.run_folder import InputRecord
from saliency.validation import require_int

__all__ = ["DemoResult", "DemoSettings", "run_demo", "shortcut_findings"]

DEFAULT_METHODS = (
    "gradient",
    "integrated_gradients",
    "smoothgrad",
    "gradcam",
    "integrated_hessians",
    "attention_rollout",
    "transformer_attribution",
)
"""What ``saliency demo`` measures by default (the first wave of methods, and on the ViT the
attention methods; a method runs on the models it applies to). ``--method all``
measures every method registered one by one (many times longer: each gets the sanity and
robustness checks too)."""


def demo_methods(chosen: Sequence[str] | None) -> tuple[str, ...]:
    """The methods a demo run measures: ``chosen``, the defaults, or with ``"all"`` every method
    registered one by one (method families such as ``captum:NAME`` are not demoed)."""
    if chosen is None:
        return DEFAULT_METHODS
    if "all" in chosen:
        return tuple(list_methods(families=False))
    return tuple(chosen)


ROBUSTNESS_EPSILON = 8 / 255
"""L∞ radius of the robustness attack, in pixel units ([0, 1] images)."""

CHECK_SHARE = 8
"""ROAD, input invariance and random-logit run on one scene in this many (8 of the default 64;
64 of the README's 512): each costs about as much per scene as the method itself."""

ROAD_NOISE = 0.01
"""σ of ROAD's imputation noise in pixel units, as in the paper (converted to input units)."""

ROAD_TOLERANCE = 1e-3
"""Relative residual of ROAD's imputation solve in the demo, at about 75% of the time of the
default 1e-5: on the demo's masks its pixel error averages 2e-4 in pixel units over the imputed
pixels (largest 0.013), against the noise σ = 0.01 that ROAD adds to them."""

SMOOTH_BETA = 10.0
"""β of the Softplus surrogate second-order methods explain the ReLU demo models through (their
Hessian is zero almost everywhere; see :func:`saliency.smooth_relu`)."""

SHORTCUT_FACTOR = 2.0
"""A method exposes the marker shortcut when the lower end of its marker mass's interval is at
least this many times the marker's share of the image area."""


@dataclass(frozen=True)
class DemoSettings:
    """What :func:`run_demo` does.

    Attributes:
        images: Test scenes per model (``saliency demo --scenes``).
        seed: Seed of the scenes (default: the test split of the weights manifest).
        device: Where to run (None: CPU).
        models: Demo model names (None: the installed ones measured by default, see
            :func:`~saliency.demo.models.default_demo_models`).
        methods: Registered method names (None: :data:`DEFAULT_METHODS`; ``("all",)``: every
            method registered one by one).
        sanity_samples: Scenes of the parameter-randomisation check (0 skips it).
        robustness_samples: Scenes of the robustness attack (0 skips it).
        robustness_steps: Ascent steps of the attack.
        road_samples: Scenes scored by ROAD, most and least relevant first (0 skips it; None:
            one scene in :data:`CHECK_SHARE`, at least one).
        road_fractions: Shares of the pixels ROAD removes.
        invariance_samples: Scenes of the input-invariance check (0 skips it; None: as ROAD).
        random_logit_samples: Scenes of the random-logit check (0 skips it; None: as ROAD).
        step: Deletion/insertion step, a fraction of the pixels.
        gallery: Build ``index.html``.
    """

    images: int = 64
    seed: int = TEST_SEED
    device: str | torch.device | None = None
    models: tuple[str, ...] | None = None
    methods: tuple[str, ...] | None = None
    sanity_samples: int = 2
    robustness_samples: int = 2
    robustness_steps: int = 2
    road_samples: int | None = None
    road_fractions: tuple[float, ...] = (0.2, 0.5, 0.8)
    invariance_samples: int | None = None
    random_logit_samples: int | None = None
    step: float = 0.1
    gallery: bool = True

    def check_samples(self, name: str) -> int:
        """Scenes of the check ``name`` (``"road_samples"``, ...): the field, or by default one
        scene in :data:`CHECK_SHARE`."""
        chosen: int | None = getattr(self, name)
        return max(1, self.images // CHECK_SHARE) if chosen is None else chosen

    def __post_init__(self) -> None:
        for name in ("images", "sanity_samples", "robustness_samples", "robustness_steps"):
            least = 1 if name in ("images", "robustness_steps") else 0
            require_int(name, getattr(self, name), least)
        for name in ("road_samples", "invariance_samples", "random_logit_samples"):
            require_int(name, getattr(self, name), 0, none=f"1 in {CHECK_SHARE} scenes")
        if self.models is not None:
            unknown = [m for m in self.models if m not in DEMO_MODELS]
            if unknown:
                raise InvalidOptionError(
                    f"unknown demo model(s) {unknown}; accepted: {accepted(DEMO_MODELS)}"
                )
        if self.methods is not None:
            unknown = [m for m in self.methods if m not in (*list_methods(), "all")]
            if unknown:
                raise InvalidOptionError(
                    f"unknown method(s) {unknown}; accepted: {accepted(list_methods())}"
                )


@dataclass
class DemoResult:
    """What :func:`run_demo` wrote and measured.

    Attributes:
        out: The run folder.
        rows: The metrics rows (one per model × method, then one per model × control).
        gallery: The gallery page, or None.
        seconds: Wall time.
        accuracy: Per model, the accuracy on the explained scenes.
        findings: Plain statements of what the table shows (:func:`shortcut_findings`).
    """

    out: Path
    rows: list[dict[str, Any]]
    gallery: Path | None
    seconds: float
    accuracy: dict[str, float] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)


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
    models = settings.models if settings.models is not None else default_demo_models()
    if not models:
        raise InvalidOptionError("no demo model weights are installed; reinstall saliency-kit")
    methods = demo_methods(settings.methods)
    rows: list[dict[str, Any]] = []
    entries: list[InputRecord] = []
    accuracy: dict[str, float] = {}
    results: list[Explanation] = []
    for name in models:
        evaluations, controls, scenes, hits = _evaluate_model(name, methods, settings, on_step)
        accuracy[f"demo:{name}"] = hits
        rows += [evaluation.row for evaluation in (*evaluations, *controls)]
        entries += write_model(folder, name, scenes, evaluations)
        results = [evaluation.explanation for evaluation in evaluations]
    findings = shortcut_findings(rows)
    page = write_run(
        folder,
        models=models,
        entries=entries,
        results=results,
        rows=rows,
        notes=" ".join([_notes(settings, accuracy), *findings]),
        started=stamp,
        seconds=time.perf_counter() - started,
        gallery=settings.gallery,
    )
    return DemoResult(folder, rows, page, time.perf_counter() - started, accuracy, findings)


def _evaluate_model(
    name: str,
    methods: Sequence[str],
    settings: DemoSettings,
    on_step: Callable[[str], None] | None,
) -> tuple[list[MethodEvaluation], list[MethodEvaluation], Scenes, float]:
    """Every method × metric and control × metric on one demo model's test scenes; also its
    accuracy on them."""
    loaded = load_model(f"demo:{name}", device=settings.device)
    assert isinstance(loaded.transform, Preprocess)
    device = next(loaded.model.parameters()).device
    scenes = demo_scenes(name, settings.images, seed=settings.seed, device=device)
    inputs = loaded.transform.normalize(scenes.images)
    hits = accuracy(loaded.model, scenes)
    common: dict[str, Any] = {"accuracy": hits}
    common.update(_proportion("accuracy", hits, len(scenes)))
    # Markers of random classes: a model that reads the marker instead of the shape fails here.
    common["counterfactual_accuracy"] = None
    if DEMO_MODELS[name].counterfactual is not None:
        swapped = demo_scenes(
            name, settings.images, split="counterfactual", seed=settings.seed, device=device
        )
        counterfactual = accuracy(loaded.model, swapped)
        common["counterfactual_accuracy"] = counterfactual
        common.update(_proportion("counterfactual_accuracy", counterfactual, len(swapped)))
    has_markers = scenes.config.marker != "none"
    metric_settings = MetricSettings(
        sanity_samples=settings.sanity_samples,
        step=settings.step,
        road_samples=settings.check_samples("road_samples"),
        road_fractions=settings.road_fractions,
        road_noise=ROAD_NOISE / _input_scale(loaded.transform),
        road_tolerance=ROAD_TOLERANCE,
        invariance_samples=settings.check_samples("invariance_samples"),
        random_logit_samples=settings.check_samples("random_logit_samples"),
    )
    scorer = inference_copy(loaded.model)  # the same scores, faster: the curves' many passes
    # explanation-only checks re-explain the scenes: second-order methods skip them (below)
    second_order = replace(
        metric_settings, sanity_samples=0, invariance_samples=0, random_logit_samples=0
    )
    if has_markers:
        area = scenes.marker_masks.flatten(1).double().mean(dim=1)
        common.update(summary_columns({"marker_area": area}, metric_settings))
    evaluations = []
    for method in methods:
        if not get_method(method).applies_to(loaded.model):
            if on_step is not None:  # e.g. attention methods on a CNN: a step done, not run
                on_step(f"demo:{name} {method} (does not apply)")
            continue
        options = DEMO_METHOD_OPTIONS.get(method, {})
        # the query pixels dominate an interaction map, so randomising weights cannot move its
        # ranking: the sanity check says nothing about second-order methods and costs the most;
        # invariance and random-logit would explain them twice more, the demo's largest cost
        first_order = get_method(method).derivative_order <= 1  # 0: forward passes only
        evaluation = evaluate_method(
            loaded.model,
            inputs,
            scenes.masks,
            method,
            model_name=f"demo:{name}",
            target=scenes.labels,
            marker_masks=scenes.marker_masks if has_markers else None,
            options=options,
            settings=metric_settings if first_order else second_order,
            smooth=None if first_order else SMOOTH_BETA,
            scorer=scorer,
        )
        evaluation.row.update(common)
        robustness = _robustness(loaded.model, inputs, method, options, settings)
        evaluation.row.update(summary_columns(robustness, metric_settings))
        evaluation.row["seconds"] = round(evaluation.seconds, 3)
        evaluations.append(evaluation)
        if on_step is not None:
            on_step(f"demo:{name} {method}")
    controls = []
    for control in CONTROLS:
        evaluation = evaluate_control(
            loaded.model,
            inputs,
            scenes.masks,
            cast(Control, control),
            model_name=f"demo:{name}",
            target=scenes.labels,
            marker_masks=scenes.marker_masks if has_markers else None,
            settings=metric_settings,
            scorer=scorer,
        )
        evaluation.row.update(common)
        robustness = _control_robustness(cast(Control, control), inputs, settings)
        evaluation.row.update(summary_columns(robustness, metric_settings))
        evaluation.row["seconds"] = round(evaluation.seconds, 3)
        controls.append(evaluation)
    return evaluations, controls, scenes, hits


def _input_scale(transform: Preprocess) -> float:
    """Input units per pixel unit: the normalisation's mean σ."""
    return sum(transform.std) / len(transform.std)


def _proportion(name: str, share: float, count: int) -> dict[str, float]:
    """``<name>_low`` / ``<name>_high``: the Wilson interval of a share of ``count`` scenes."""
    interval = wilson_interval(round(share * count), count)
    return {f"{name}_low": float(interval.low), f"{name}_high": float(interval.high)}


def _robustness(
    model: nn.Module,
    inputs: Tensor,
    method: str,
    options: dict[str, Any],
    settings: DemoSettings,
) -> dict[str, Tensor]:
    """The robustness columns, per scene: rank correlation of the maps under the attack and
    under noise (none for second-order methods).

    The attack runs on the Softplus(β = 10) surrogate of the ReLU model (its gradient maps are
    piecewise constant) within an L∞ ball of 8/255 pixel units; the inputs are normalised by
    σ = 0.25, so ε and the clamp are converted to input units.
    """
    count = min(settings.robustness_samples, len(inputs))
    if count == 0:
        return {}
    chosen = get_method(method)
    if chosen.derivative_order > 1 or not chosen.supports_create_graph:
        # the attack differentiates the attributions: third derivatives, too slow for a demo, or
        # a method without a derivative (guided_ig)
        return {}
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
    return {
        "robustness": result.spearman,
        "robustness_top_k": result.top_k_intersection,
        "random_robustness": result.random_spearman,
    }


def _control_robustness(
    control: Control, inputs: Tensor, settings: DemoSettings
) -> dict[str, Tensor]:
    """``random_robustness`` of a control: Spearman correlation of its map with its map under
    random sign noise of L∞ 8/255 (no attack: a control has no model to attack through)."""
    count = min(settings.robustness_samples, len(inputs))
    if count == 0:
        return {}
    chosen = inputs[:count]
    generator = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, chosen.shape, generator=generator).to(chosen) * 2 - 1
    noisy = (chosen + signs * (ROBUSTNESS_EPSILON / 0.25)).clamp(-2.0, 2.0)
    first = relevance_map(control_map(control, chosen))
    second = relevance_map(control_map(control, noisy))
    return {"random_robustness": spearman_correlation(first, second).float()}


def shortcut_findings(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The shortcut finding in plain words, one sentence per model with marker scenes.

    Per first-order method: its marker mass (|attribution| share on the marker patch) next to
    the marker's share of the image area; a method *exposes* the shortcut when the lower end of
    its marker mass's interval is at least :data:`SHORTCUT_FACTOR` times that share.
    """
    findings = []
    for model in dict.fromkeys(row["model"] for row in rows):
        chosen = [
            row
            for row in rows
            if row["model"] == model
            and row.get("marker_mass") is not None
            and not str(row["method"]).startswith("baseline:")
            and get_method(str(row["method"])).derivative_order <= 1
        ]
        if not chosen:
            continue
        area = float(chosen[0]["marker_area"])
        exposed = [
            str(row["method"])
            for row in chosen
            if float(row.get("marker_mass_low", row["marker_mass"])) >= SHORTCUT_FACTOR * area
        ]
        shown = ", ".join(
            f"{row['method']} {float(row['marker_mass']):.3f} "
            f"({float(row['marker_mass']) / area:.1f}×)"
            for row in chosen
        )
        verdict = (
            f"exposed by {len(exposed)} of {len(chosen)} first-order methods ({', '.join(exposed)})"
            if exposed
            else f"no first-order method puts ≥ {SHORTCUT_FACTOR:g}× the marker's area on it"
        )
        counterfactual = chosen[0].get("counterfactual_accuracy")
        reads = (
            ""
            if counterfactual is None
            else f" (accuracy with markers of random classes {float(counterfactual):.2f}: the "
            f"model {'reads' if counterfactual < 0.5 else 'does not rely on'} the marker)"
        )
        findings.append(
            f"{model}{reads}: the marker covers {area:.1%} of the image; marker mass {shown}; "
            f"the marker is {verdict}."
        )
    return findings


def _notes(settings: DemoSettings, accuracy: dict[str, float]) -> str:
    shown = ", ".join(f"{model} {value:.3f}" for model, value in accuracy.items())
    fractions = "/".join(f"{share:.0%}" for share in settings.road_fractions)
    road = settings.check_samples("road_samples")
    invariance = settings.check_samples("invariance_samples")
    logit = settings.check_samples("random_logit_samples")
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
        f"high is robust; not measured for second-order methods nor controls), "
        f"random_robustness: the same for random sign noise of that size. Second-order methods "
        f"explain the Softplus(β = {SMOOTH_BETA:g}) surrogate of the ReLU model (its Hessian is "
        f"zero almost everywhere); integrated_hessians queries each scene's top 1% pixels of "
        f"integrated gradients. Controls (model-independent maps): baseline:centre a centred "
        f"Gaussian, baseline:random seeded uniform noise, baseline:edges the Sobel edge "
        f"magnitude of the image. <metric>_low / <metric>_high: 95% interval of the mean over "
        f"the scenes (Wilson for pointing_game and accuracies, percentile bootstrap of 10,000 "
        f"seeded resamples otherwise). marker_area: the marker's share of the image area. "
        f"road_morf / road_lerf: ROAD (Rong et al. 2022), the mean probability of the true "
        f"class after noisy linear imputation of the {fractions} most (MoRF: low is "
        f"faithful) or least (LeRF: high is faithful) relevant pixels ({road} scenes; "
        f"noise σ {ROAD_NOISE:g} in pixel units, solver tolerance {ROAD_TOLERANCE:g}). "
        f"input_invariance: relative L2 change of the map when every input is shifted by "
        f"-1 (input units) and the first convolution's bias absorbs the shift (Kindermans "
        f"et al. 2019; 0 is invariant, float32 rounding leaves up to ~0.05; {invariance} "
        f"scenes). random_logit: SSIM of the map of the true class and of a random other "
        f"class (Sixt et al. 2020; low is class-sensitive, a control scores 1; {logit} "
        f"scenes). Input invariance and random-logit are not measured for second-order "
        f"methods. sparseness: Gini index of |attribution| (high is sparse); complexity: its "
        f"entropy (low is simple)."
    )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
