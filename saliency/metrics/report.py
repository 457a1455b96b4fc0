"""Every metric for one model × method on a batch with ground-truth masks, as one table row.

:func:`evaluate_method` explains the inputs with :func:`saliency.explain`, computes each metric
per sample, and returns the explanation, the per-sample values and a row of means named like the
``metrics.json`` / ``metrics.csv`` columns (``docs/manifest.md``), each mean followed by its 95%
interval over the samples, ``<metric>_low`` and ``<metric>_high`` (:func:`interval_columns`).
:func:`evaluate_control` scores a model-independent control map
(:mod:`saliency.metrics.controls`) the same way. :func:`evaluate_scenes` does the same for
:mod:`saliency.demo.scenes` scenes and a model loaded by name (e.g. ``"demo:shapes"``), and
:func:`write_metrics` writes the rows.

>>> scenes = generate_scenes(24, seed=TEST_SEED)
>>> results = evaluate_scenes("demo:shapes", scenes)
>>> write_metrics([r.row for r in results], "out/")
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from saliency.errors import InvalidOptionError
from saliency.explain import explain
from saliency.explanation import Explanation
from saliency.images import Preprocess
from saliency.methods.base import Method
from saliency.methods.registry import get_method
from saliency.metrics.complexity import NonNegativeReduction, complexity, sparseness
from saliency.metrics.controls import Control, control_map
from saliency.metrics.faithfulness import deletion_auc, insertion_auc
from saliency.metrics.intervals import bootstrap_interval, wilson_interval
from saliency.metrics.invariance import input_invariance, relative_change
from saliency.metrics.localisation import pointing_game, relevance_mass, relevance_rank
from saliency.metrics.random_logit import random_logit
from saliency.metrics.relevance import Reduction, relevance_map
from saliency.metrics.road import DEFAULT_FRACTIONS, road
from saliency.metrics.sanity import (
    cascading_randomisation,
    parameter_randomisation,
    spearman_correlation,
)
from saliency.metrics.shortcut import marker_object_mass
from saliency.metrics.similarity import map_similarity
from saliency.models import load_model
from saliency.output_files import write_text_atomic
from saliency.smooth_relu import smooth_relu

if TYPE_CHECKING:  # the demo is above the core: only its type is named here
    from saliency.demo.scenes import Scenes

__all__ = [
    "COMPLEXITY_NAMES",
    "DEMO_METHOD_OPTIONS",
    "LOCALISATION_AND_FAITHFULNESS",
    "METRIC_NAMES",
    "PROPORTIONS",
    "SUBSET_METRIC_NAMES",
    "MethodEvaluation",
    "MetricSettings",
    "evaluate_control",
    "evaluate_method",
    "evaluate_scenes",
    "interval_columns",
    "sample_metrics",
    "summary_columns",
    "write_metrics",
]

LOCALISATION_AND_FAITHFULNESS: tuple[str, ...] = (
    "pointing_game",
    "relevance_mass",
    "relevance_rank",
    "deletion_auc",
    "insertion_auc",
    "marker_mass",
    "object_mass",
)
"""The per-sample columns that compare a map with the masks or query the model."""

COMPLEXITY_NAMES: tuple[str, ...] = ("sparseness", "complexity")
"""The per-sample columns read from the map alone."""

METRIC_NAMES: tuple[str, ...] = (*LOCALISATION_AND_FAITHFULNESS, *COMPLEXITY_NAMES)
"""Row columns computed per sample (the marker columns only with marker masks)."""

SUBSET_METRIC_NAMES: tuple[str, ...] = (
    "road_morf",
    "road_lerf",
    "input_invariance",
    "random_logit",
)
"""Row columns computed on the first inputs only, when :class:`MetricSettings` asks for them
(``road_samples``, ``invariance_samples``, ``random_logit_samples``)."""

DEMO_METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"steps": 8},
    "smoothgrad": {"samples": 6, "seed": 0},
    "vargrad": {"samples": 6, "seed": 0},
    "integrated_hessians": {"steps": 4, "query_steps": 8},
    "expected_gradients": {"samples": 8, "seed": 0},
    "blur_ig": {"steps": 8},
    "guided_ig": {"steps": 16},
}
"""Deterministic, cheaper options of built-in methods for the 2-core CPU demo (any method not
listed runs with its defaults)."""

PROPORTIONS: frozenset[str] = frozenset({"pointing_game", "accuracy", "counterfactual_accuracy"})
"""0/1-per-sample columns: their intervals are Wilson score intervals (the others bootstrap)."""


@dataclass(frozen=True)
class MetricSettings:
    """How the metrics are computed.

    Attributes:
        reduction: Channels → pixel relevance (see :mod:`saliency.metrics.relevance`).
        tolerance: Pointing-game tolerance in pixels.
        step: Deletion/insertion step, a fraction of the pixels.
        deletion_substrate: ``"zeros"``, ``"blur"``, a number or a tensor.
        insertion_substrate: Same choices.
        blur_sigma: σ in pixels of the ``"blur"`` substrate.
        sanity_samples: Inputs (the first ones) used for the parameter-randomisation check;
            0 skips it. It adds one ``sanity_<layer>`` column per randomised layer.
        road_samples: Inputs (the first ones) scored by ROAD, most and least relevant first
            (``road_morf``, ``road_lerf``: :mod:`saliency.metrics.road`); 0 skips it.
        road_fractions: Shares of the pixels ROAD removes.
        road_noise: σ of ROAD's imputation noise, in input units (0.01 on [0, 1] images).
        road_tolerance: Relative residual of ROAD's imputation solve.
        invariance_samples: Inputs (the first ones) of the ``input_invariance`` column
            (:mod:`saliency.metrics.invariance`); 0 skips it.
        invariance_shift: The constant input shift it compensates, in input units.
        random_logit_samples: Inputs (the first ones) of the ``random_logit`` column
            (:mod:`saliency.metrics.random_logit`, SSIM); 0 skips it.
        seed: Seeds the parameter randomisation, ROAD's noise, the random-logit classes, the
            bootstrap and ``baseline:random``.
        confidence: Coverage of the ``<metric>_low`` / ``<metric>_high`` intervals.
        resamples: Bootstrap resamples of those intervals.
    """

    reduction: Reduction = "abs"
    tolerance: float = 0.0
    step: float = 0.05
    deletion_substrate: Any = "zeros"
    insertion_substrate: Any = "blur"
    blur_sigma: float = 5.0
    sanity_samples: int = 0
    road_samples: int = 0
    road_fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    road_noise: float = 0.01
    road_tolerance: float = 1e-5
    invariance_samples: int = 0
    invariance_shift: float = -1.0
    random_logit_samples: int = 0
    seed: int = 0
    confidence: float = 0.95
    resamples: int = 10_000


@dataclass(frozen=True)
class MethodEvaluation:
    """The result of :func:`evaluate_method`.

    Attributes:
        row: ``{"model", "method", <metric>: mean, <metric>_low, <metric>_high, ...}`` — one
            ``metrics.json`` row.
        samples: ``{<metric>: (N,) values}`` (sanity columns and :data:`SUBSET_METRIC_NAMES`
            cover the first inputs only).
        explanation: The explanation the metrics were computed from.
        seconds: Wall time of explaining and measuring.
    """

    row: dict[str, Any]
    samples: dict[str, Tensor]
    explanation: Explanation
    seconds: float


def sample_metrics(
    model: Callable[[Tensor], Tensor],
    inputs: Tensor,
    attributions: Tensor,
    masks: Tensor,
    targets: Tensor,
    *,
    marker_masks: Tensor | None = None,
    settings: MetricSettings = MetricSettings(),
    batch_size: int | None = None,
) -> dict[str, Tensor]:
    """Per-sample localisation, faithfulness, complexity and (with marker masks) shortcut
    metrics; ROAD on the first ``settings.road_samples`` inputs.

    Args:
        model: The explained model, or a forward-only copy of it that computes the same scores
            faster (:func:`saliency.inference_copy.inference_copy`): only the perturbation
            metrics query it.
        inputs: ``(N, C, H, W)`` model inputs on its device.
        attributions: Their raw attributions.
        masks: ``(N, H, W)`` object masks.
        targets: ``(N,)`` explained classes (deletion/insertion track their probability).
        marker_masks: ``(N, H, W)`` marker masks, or None.
        settings: How to compute them.
        batch_size: Perturbed inputs per forward pass (None: automatic).

    Returns:
        ``{name: (N,) float32}`` for the names of :data:`METRIC_NAMES` that apply, and
        ``road_morf`` / ``road_lerf`` of the first inputs.
    """
    reduction = settings.reduction
    values = {
        "pointing_game": pointing_game(
            attributions, masks, tolerance=settings.tolerance, reduction=reduction
        ),
        "relevance_mass": relevance_mass(attributions, masks, reduction=reduction),
        "relevance_rank": relevance_rank(attributions, masks, reduction=reduction),
    }
    common: dict[str, Any] = {
        "target": targets,
        "step": settings.step,
        "blur_sigma": settings.blur_sigma,
        "reduction": reduction,
        "batch_size": batch_size,
    }
    values["deletion_auc"] = deletion_auc(
        model, inputs, attributions, substrate=settings.deletion_substrate, **common
    )
    values["insertion_auc"] = insertion_auc(
        model, inputs, attributions, substrate=settings.insertion_substrate, **common
    )
    if marker_masks is not None:
        mass = marker_object_mass(attributions, masks, marker_masks, reduction=reduction)
        values["marker_mass"], values["object_mass"] = mass.marker, mass.object
    # complexity reads magnitudes: a signed reduction would cancel, so "abs" for those
    magnitude: NonNegativeReduction = "positive" if reduction == "positive" else "abs"
    values["sparseness"] = sparseness(attributions, reduction=magnitude)
    values["complexity"] = complexity(attributions, reduction=magnitude)
    if settings.road_samples > 0:
        count = min(settings.road_samples, len(inputs))
        for order in ("morf", "lerf"):
            values[f"road_{order}"] = road(
                model,
                inputs[:count],
                attributions[:count],
                order=order,
                fractions=settings.road_fractions,
                target=targets[:count],
                noise=settings.road_noise,
                seed=settings.seed,
                reduction=reduction,
                tolerance=settings.road_tolerance,
                batch_size=batch_size,
            )
    return {name: value.float() for name, value in values.items()}


def evaluate_method(
    model: nn.Module,
    inputs: Tensor,
    masks: Tensor,
    method: str,
    *,
    model_name: str,
    target: Tensor | int | Sequence[int] | None = None,
    marker_masks: Tensor | None = None,
    options: Mapping[str, Any] | None = None,
    settings: MetricSettings = MetricSettings(),
    batch_size: int | None = None,
    smooth: float | None = None,
    scorer: Callable[[Tensor], Tensor] | None = None,
) -> MethodEvaluation:
    """Explain ``inputs`` with ``method`` and compute every metric: one row per model × method.

    Args:
        model: The model, on the inputs' device.
        inputs: ``(N, C, H, W)`` model inputs.
        masks: ``(N, H, W)`` object masks.
        method: A registered method name.
        model_name: The row's ``model`` value.
        target: Classes to explain (None: the predictions); use the true labels for
            localisation against the object's mask.
        marker_masks: Marker masks, for the ``marker_mass`` and ``object_mass`` columns.
        options: The method's options (e.g. ``DEMO_METHOD_OPTIONS[method]``).
        settings: How to compute the metrics.
        batch_size: Points per forward/backward chunk (None: automatic).
        smooth: β of a Softplus surrogate (:func:`saliency.smooth_relu`) to explain through,
            for second-order methods on ReLU models (None: the model itself); the metrics
            always score the model itself.
        scorer: What the perturbation metrics query: the model (None), or a forward-only
            copy that computes its scores faster (:func:`saliency.inference_copy`).
    """
    started = time.perf_counter()
    options = dict(options or {})
    instance = get_method(method)(**options)  # an instance: its own `seed` stays apart
    surrogate: AbstractContextManager[Any] = (
        nullcontext() if smooth is None else smooth_relu(model, smooth)
    )
    with surrogate:
        explanation = explain(model, inputs, method, target, batch_size=batch_size, **options)
        assert explanation.targets is not None
        checks = _explanation_checks(
            model, inputs, instance, explanation.targets, settings, batch_size
        )
    samples = sample_metrics(
        model if scorer is None else scorer,
        inputs,
        explanation.attributions,
        masks,
        explanation.targets,
        marker_masks=marker_masks,
        settings=settings,
        batch_size=batch_size,
    )
    if settings.sanity_samples > 0:
        count = min(settings.sanity_samples, len(inputs))
        correlations = parameter_randomisation(
            model,
            inputs[:count],
            instance,
            target=explanation.targets[:count],
            seed=settings.seed,
            reduction=settings.reduction,
            batch_size=batch_size,
        )
        samples.update({f"sanity_{layer}": rho for layer, rho in correlations.items()})
    samples.update(checks)
    row = {"model": model_name, "method": method, **summary_columns(samples, settings)}
    return MethodEvaluation(row, samples, explanation, time.perf_counter() - started)


def _explanation_checks(
    model: nn.Module,
    inputs: Tensor,
    method: Method,
    targets: Tensor,
    settings: MetricSettings,
    batch_size: int | None,
) -> dict[str, Tensor]:
    """``input_invariance`` and ``random_logit`` of the first inputs, as the settings ask: each
    explains them again (shifted inputs; another class)."""
    checks: dict[str, Tensor] = {}
    if settings.invariance_samples > 0:
        count = min(settings.invariance_samples, len(inputs))
        checks["input_invariance"] = input_invariance(
            model,
            inputs[:count],
            method,
            shift=settings.invariance_shift,
            target=targets[:count],
            batch_size=batch_size,
        )
    if settings.random_logit_samples > 0:
        count = min(settings.random_logit_samples, len(inputs))
        checks["random_logit"] = random_logit(
            model,
            inputs[:count],
            method,
            target=targets[:count],
            seed=settings.seed,
            reduction=settings.reduction,
            batch_size=batch_size,
        )
    return checks


def evaluate_control(
    model: nn.Module,
    inputs: Tensor,
    masks: Tensor,
    control: Control,
    *,
    model_name: str,
    target: Tensor,
    marker_masks: Tensor | None = None,
    settings: MetricSettings = MetricSettings(),
    batch_size: int | None = None,
    scorer: Callable[[Tensor], Tensor] | None = None,
) -> MethodEvaluation:
    """Score a control map (:func:`saliency.metrics.controls.control_map`) like a method.

    The same metrics as :func:`evaluate_method`; the parameter-randomisation columns recompute
    the control under each randomised model (a control ignores the weights, so they stay 1:
    what failing the sanity check looks like), ``random_logit`` compares the map with itself
    (a control ignores the class: 1) and ``input_invariance`` recomputes the control on the
    shifted inputs. ``baseline:random`` is seeded with ``settings.seed``.

    Args:
        model: The model the faithfulness metrics query.
        inputs: ``(N, C, H, W)`` model inputs.
        masks: ``(N, H, W)`` object masks.
        control: ``"baseline:centre"``, ``"baseline:random"`` or ``"baseline:edges"``.
        model_name: The row's ``model`` value.
        target: ``(N,)`` classes whose probability deletion/insertion track.
        marker_masks: Marker masks, for the ``marker_mass`` and ``object_mass`` columns.
        settings: How to compute the metrics.
        batch_size: Perturbed inputs per forward pass (None: automatic).
        scorer: What the perturbation metrics query, as in :func:`evaluate_method`.
    """
    started = time.perf_counter()
    maps = control_map(control, inputs, seed=settings.seed)
    targets = torch.as_tensor(target, device=inputs.device).reshape(-1).expand(len(inputs))
    samples = sample_metrics(
        model if scorer is None else scorer,
        inputs,
        maps,
        masks,
        targets,
        marker_masks=marker_masks,
        settings=settings,
        batch_size=batch_size,
    )
    if settings.sanity_samples > 0:
        count = min(settings.sanity_samples, len(inputs))
        reference = relevance_map(maps[:count], settings.reduction)
        for layer, _randomised in cascading_randomisation(model, seed=settings.seed):
            again = control_map(control, inputs[:count], seed=settings.seed)
            again_map = relevance_map(again, settings.reduction)
            samples[f"sanity_{layer}"] = spearman_correlation(reference, again_map).float()
    if settings.invariance_samples > 0:
        count = min(settings.invariance_samples, len(inputs))
        shifted = control_map(
            control, inputs[:count] + settings.invariance_shift, seed=settings.seed
        )
        samples["input_invariance"] = relative_change(maps[:count], shifted)
    if settings.random_logit_samples > 0:
        count = min(settings.random_logit_samples, len(inputs))
        # the map of any other class is the same map
        relevance = relevance_map(maps[:count], settings.reduction)
        samples["random_logit"] = map_similarity(relevance, relevance, "ssim")
    explanation = Explanation(maps, targets, control, {"seed": settings.seed}, inputs=inputs)
    row = {"model": model_name, "method": control, **summary_columns(samples, settings)}
    return MethodEvaluation(row, samples, explanation, time.perf_counter() - started)


def interval_columns(
    name: str, values: Tensor, *, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> dict[str, float]:
    """``{<name>_low, <name>_high}``: the interval of the mean of ``values`` over samples.

    Columns in :data:`PROPORTIONS` (0/1 per sample) get the Wilson score interval, the others
    the seeded percentile bootstrap (:mod:`saliency.metrics.intervals`). NaN values are left
    out; no value left gives NaN ends.
    """
    finite = values.detach().double().flatten()
    finite = finite[~finite.isnan()].cpu()
    if len(finite) == 0:
        return {f"{name}_low": math.nan, f"{name}_high": math.nan}
    if name in PROPORTIONS:
        interval = wilson_interval(int(finite.sum().round()), len(finite), confidence=confidence)
    else:
        interval = bootstrap_interval(finite, confidence=confidence, resamples=resamples, seed=seed)
    return {f"{name}_low": float(interval.low), f"{name}_high": float(interval.high)}


def summary_columns(samples: Mapping[str, Tensor], settings: MetricSettings) -> dict[str, float]:
    """Per metric: its mean over the samples, then ``<metric>_low`` and ``<metric>_high``.

    The bootstrapped columns of one length without NaN share one call of
    :func:`~saliency.metrics.intervals.bootstrap_interval`: the same seeded resamples serve
    them all, so the ends equal those of one call per column up to the last bits (one matrix
    product sums in another order), and a row's dozens of columns cost one resampling.
    """
    together: dict[int, list[str]] = {}
    for name, value in samples.items():
        flat = value.detach().flatten()
        if name not in PROPORTIONS and len(flat) > 0 and not bool(flat.isnan().any()):
            together.setdefault(len(flat), []).append(name)
    shared: dict[str, dict[str, float]] = {}
    for names in together.values():
        stacked = torch.stack([samples[n].detach().double().flatten().cpu() for n in names])
        interval = bootstrap_interval(
            stacked,
            confidence=settings.confidence,
            resamples=settings.resamples,
            seed=settings.seed,
        )
        for row, name in enumerate(names):
            shared[name] = {
                f"{name}_low": float(interval.low[row]),
                f"{name}_high": float(interval.high[row]),
            }
    columns: dict[str, float] = {}
    for name, value in samples.items():
        columns[name] = float(value.double().mean())
        columns.update(
            shared.get(name)
            or interval_columns(
                name,
                value,
                confidence=settings.confidence,
                resamples=settings.resamples,
                seed=settings.seed,
            )
        )
    return columns


def evaluate_scenes(
    model_name: str,
    scenes: Scenes,
    methods: Mapping[str, Mapping[str, Any]] | Sequence[str] = DEMO_METHOD_OPTIONS,
    *,
    target: Literal["label", "predicted"] = "label",
    device: str | torch.device | None = None,
    settings: MetricSettings = MetricSettings(),
    batch_size: int | None = None,
) -> list[MethodEvaluation]:
    """Every method × metric for a model loaded by name on :mod:`saliency.demo.scenes` scenes.

    Args:
        model_name: Anything :func:`saliency.load_model` accepts, e.g. ``"demo:shapes"``.
        scenes: The scenes (their masks, and marker masks when they have markers).
        methods: Method names, or ``{name: options}``.
        target: Explain the true ``"label"`` or the ``"predicted"`` class.
        device: Where to run (None: CPU).
        settings: How to compute the metrics.
        batch_size: Points per forward/backward chunk (None: automatic).

    Returns:
        One :class:`MethodEvaluation` per method, in order.
    """
    if target not in ("label", "predicted"):
        raise InvalidOptionError(f"target={target!r}; accepted: 'label', 'predicted'")
    loaded = load_model(model_name, device=device)
    if not isinstance(loaded.transform, Preprocess):
        raise InvalidOptionError(f"{model_name} has no Preprocess to normalise scenes with")
    on_device = scenes.to(next(loaded.model.parameters()).device)
    inputs = loaded.transform.normalize(on_device.images)
    has_markers = scenes.config.marker != "none"
    plan = dict(methods) if isinstance(methods, Mapping) else {name: {} for name in methods}
    return [
        evaluate_method(
            loaded.model,
            inputs,
            on_device.masks,
            method,
            model_name=model_name,
            target=on_device.labels if target == "label" else None,
            marker_masks=on_device.marker_masks if has_markers else None,
            options=options,
            settings=settings,
            batch_size=batch_size,
        )
        for method, options in plan.items()
    ]


def _json_number(value: Any) -> Any:
    """NaN and infinities become null (JSON has no spelling for them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_metrics(
    rows: Sequence[Mapping[str, Any]],
    directory: str | os.PathLike[str],
    notes: str | None = None,
) -> tuple[Path, Path]:
    """Write ``metrics.json`` (``{"rows": [...], "notes": ...}``) and ``metrics.csv`` atomically.

    The CSV has the columns ``model``, ``method``, then every other key in first-seen order;
    a row without a key leaves its cell empty.

    Returns:
        The two paths.
    """
    for row in rows:
        if "model" not in row or "method" not in row:
            raise InvalidOptionError(f"every row needs 'model' and 'method' keys, got {dict(row)}")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {
        "rows": [{k: _json_number(v) for k, v in row.items()} for row in rows]
    }
    if notes is not None:
        document["notes"] = notes
    json_path = write_text_atomic(root / "metrics.json", json.dumps(document, indent=2) + "\n")
    columns = ["model", "method"]
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = write_text_atomic(root / "metrics.csv", buffer.getvalue())
    return json_path, csv_path
