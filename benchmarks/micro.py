"""The ``cpu`` and ``gpu`` profiles: one method call at a time, ours and the references side by
side on the same model, the same inputs and the same targets, in one process."""

from __future__ import annotations

import contextlib
import copy
import gc
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

import saliency
from benchmarks.measure import Case, Result, alternate, describe_error, time_once

OURS, CAPTUM, GRADCAM_LIB, TORCH = "saliency-kit", "captum", "pytorch-grad-cam", "torch"
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class MicroConfig:
    """Sizes of a micro profile.

    Attributes:
        model: torchvision model name, built with random weights (``weights=None``).
        size: square input side.
        batch: images per call.
        steps: integrated-gradients steps (ours ``steps``, captum ``n_steps``).
        samples: SmoothGrad samples (ours ``samples``, captum ``nt_samples``).
        repeats: timed rounds of the slow methods (IG, SmoothGrad).
        fast_repeats: timed rounds of the one-pass methods and of the ceiling.
        warmup: untimed calls of each case before the rounds.
        ig_sweep: captum ``internal_batch_size`` values tried.
        nt_sweep: captum ``nt_samples_batch_size`` values tried.
        ceiling_batches: batch sizes of the plain forward+backward-to-input ceiling.
        precisions: ``fp32`` and optionally ``bf16`` (autocast).
        compile_ceiling: also time the ceiling under ``torch.compile``.
        sweep_rounds: timed rounds of the batch-size sweeps (the fastest call of each counts).
    """

    model: str
    size: int
    batch: int
    steps: int
    samples: int
    repeats: int
    fast_repeats: int
    warmup: int
    ig_sweep: tuple[int, ...]
    nt_sweep: tuple[int, ...]
    ceiling_batches: tuple[int, ...]
    precisions: tuple[str, ...] = ("fp32",)
    compile_ceiling: bool = False
    sweep_rounds: int = 2

    def describe(self) -> str:
        return (
            f"torchvision {self.model} (random weights), {self.size}², {self.batch} images per "
            f"call; IG steps={self.steps}, SmoothGrad samples={self.samples}; "
            f"{self.repeats} timed rounds (one-pass methods: {self.fast_repeats}) after "
            f"{self.warmup} warm-up call(s) of each case"
        )


PROFILES: dict[str, MicroConfig] = {
    "cpu": MicroConfig(
        model="resnet18",
        size=224,
        batch=4,
        steps=32,
        samples=32,
        repeats=3,
        fast_repeats=10,
        warmup=1,
        ig_sweep=(8, 16, 32, 64),
        nt_sweep=(2, 4, 8, 16),
        ceiling_batches=(4, 16),
    ),
    "gpu": MicroConfig(
        model="resnet50",
        size=224,
        batch=32,
        steps=32,
        samples=32,
        repeats=5,
        fast_repeats=20,
        warmup=2,
        ig_sweep=(64, 128, 256, 512),
        nt_sweep=(2, 4, 8, 16),
        ceiling_batches=(32, 256),
        precisions=("fp32", "bf16"),
        compile_ceiling=True,
    ),
}

SMOKE: dict[str, MicroConfig] = {
    "cpu": MicroConfig(
        model="resnet18",
        size=32,
        batch=1,
        steps=2,
        samples=2,
        repeats=1,
        fast_repeats=1,
        warmup=1,
        ig_sweep=(1,),
        nt_sweep=(1,),
        ceiling_batches=(1,),
        sweep_rounds=1,
    ),
}
SMOKE["gpu"] = replace(
    SMOKE["cpu"], batch=2, precisions=("fp32", "bf16"), compile_ceiling=True, ig_sweep=(2,)
)


@dataclass
class SweepPoint:
    group: str
    library: str
    parameter: str
    value: int
    images_per_second: float | None
    error: str | None = None


@dataclass
class MicroOutcome:
    config: MicroConfig
    device: torch.device
    results: list[Result] = field(default_factory=list)
    sweeps: list[SweepPoint] = field(default_factory=list)
    best: dict[str, int] = field(default_factory=dict)


def build_model(name: str, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None)
    return model.eval().to(device)


def make_inputs(config: MicroConfig, device: torch.device, batch: int | None = None) -> Tensor:
    generator = torch.Generator().manual_seed(1)
    pixels = torch.rand(batch or config.batch, 3, config.size, config.size, generator=generator)
    mean = torch.tensor(_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(_STD).view(1, 3, 1, 1)
    return ((pixels - mean) / std).to(device)


def _autocast(device: torch.device, precision: str) -> Callable[[], Any]:
    if precision == "fp32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _under(context: Callable[[], Any], call: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        with context():
            return call()

    return run


def _ours(model: nn.Module, inputs: Tensor, target: Tensor, method: str, **options: Any):
    return lambda: saliency.explain(model, inputs, method, target, **options).attributions


def _sweep(
    group: str,
    library: str,
    parameter: str,
    values: tuple[int, ...],
    make: Callable[[int], Case],
    rounds: int,
    device: torch.device,
    outcome: MicroOutcome,
    log: Callable[[str], None],
) -> int | None:
    """The fastest value: after one untimed call of each, ``rounds`` interleaved rounds (the
    order rotates) time every value; each value's fastest call counts."""
    cases = {value: make(value) for value in values}
    errors: dict[int, str] = {}
    fastest: dict[int, float] = {}

    def attempt(value: int) -> float | None:
        try:
            seconds, _ = time_once(cases[value], device, None)
        except Exception as exc:
            errors[value] = describe_error(exc)
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
            return None
        return seconds

    for value in values:
        attempt(value)
    for round_index in range(rounds):
        live = [v for v in values if v not in errors]
        shift = round_index % max(1, len(live))
        for value in live[shift:] + live[:shift]:
            seconds = attempt(value)
            if seconds is not None:
                fastest[value] = min(fastest.get(value, seconds), seconds)
    for value in values:
        rate = None if value in errors else cases[value].images / fastest[value]
        outcome.sweeps.append(SweepPoint(group, library, parameter, value, rate, errors.get(value)))
        log(f"  sweep {library} {parameter}={value}: {errors.get(value) or f'{rate:.3g} images/s'}")
    if not fastest:
        return None
    return max(fastest, key=lambda value: cases[value].images / fastest[value])


def run_micro(
    config: MicroConfig, device: torch.device, log: Callable[[str], None] = print
) -> MicroOutcome:
    """Run every group of the profile; returns the results in table order."""
    from captum.attr import (
        IntegratedGradients,
        LayerAttribution,
        LayerGradCam,
        NoiseTunnel,
        Saliency,
    )

    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        GradCAM = None  # reported as "not installed"

    outcome = MicroOutcome(config, device)
    model = build_model(config.model, device)
    inputs = make_inputs(config, device)
    # Everything imported so far is permanent: the gc.collect() before each timed call (for a
    # clean memory baseline) then scans only new objects, not all of torch's modules.
    gc.collect()
    gc.freeze()
    with torch.no_grad():
        target = model(inputs).argmax(1)
    n, steps, samples = config.batch, config.steps, config.samples
    flat = inputs.flatten(1)
    # captum's stdevs is absolute and shared by the batch: our default noise=0.15 of the range.
    stdev = float((0.15 * (flat.amax(1) - flat.amin(1))).mean())
    layer = _grad_cam_layer(model)
    layer_name = next(name for name, module in model.named_modules() if module is layer)
    size = inputs.shape[-2:]

    # ---- the ceiling: plain forward + backward to the input --------------------------------
    log(f"[{config.model}] forward+backward ceiling")
    ceiling_cases = _ceiling_cases(config, model, device)
    outcome.results += alternate(ceiling_cases, device, config.fast_repeats, config.warmup, log)

    # ---- the sweeps of captum's batch sizes (fp32) ----------------------------------------
    ig_group, sg_group = f"IG-{steps}", f"SmoothGrad-{samples}"

    def captum_ig(batch: int | None, context: Callable[[], Any] = contextlib.nullcontext):
        ig = IntegratedGradients(model)
        return _under(
            context,
            lambda: ig.attribute(inputs, target=target, n_steps=steps, internal_batch_size=batch),
        )

    def captum_sg(batch: int | None, context: Callable[[], Any] = contextlib.nullcontext):
        tunnel = NoiseTunnel(Saliency(model))
        return _under(
            context,
            lambda: tunnel.attribute(
                inputs,
                nt_type="smoothgrad",
                nt_samples=samples,
                nt_samples_batch_size=batch,
                stdevs=stdev,
                target=target,
            ),
        )

    log(f"[{config.model}] captum batch-size sweeps")
    best_ig = _sweep(
        ig_group,
        CAPTUM,
        "internal_batch_size",
        config.ig_sweep,
        lambda b: Case(ig_group, CAPTUM, "", captum_ig(b), n, steps),
        config.sweep_rounds,
        device,
        outcome,
        log,
    )
    best_nt = _sweep(
        sg_group,
        CAPTUM,
        "nt_samples_batch_size",
        config.nt_sweep,
        lambda b: Case(sg_group, CAPTUM, "", captum_sg(b), n, samples),
        config.sweep_rounds,
        device,
        outcome,
        log,
    )
    if best_ig is not None:
        outcome.best["internal_batch_size"] = best_ig
    if best_nt is not None:
        outcome.best["nt_samples_batch_size"] = best_nt

    def grad_cam_reference(context: Callable[[], Any]) -> Callable[[], Any]:
        if GradCAM is None:
            return _not_installed
        targets = [ClassifierOutputTarget(int(c)) for c in target.tolist()]

        def run() -> Any:
            # As its README does: one object per use, released by the with block (its hooks
            # would otherwise stay on the model and slow every other case down).
            with context(), GradCAM(model=model, target_layers=[layer]) as cam:
                maps = cam(input_tensor=inputs, targets=targets)
            model.zero_grad(set_to_none=True)  # it calls .backward(): drop the weight grads
            return maps

        return run

    def captum_grad_cam(context: Callable[[], Any]) -> Callable[[], Any]:
        explainer = LayerGradCam(model, layer)

        def run() -> Tensor:
            with context():
                maps = explainer.attribute(inputs, target=target, relu_attributions=True)
            return LayerAttribution.interpolate(maps, tuple(size), interpolate_mode="bilinear")

        return run

    for precision in config.precisions:
        context = _autocast(device, precision)
        suffix = "" if precision == "fp32" else f" · {precision}"
        if precision == "fp32":
            variants: list[tuple[str, dict[str, Any], bool]] = [
                ("defaults", {}, False),
                ("channels_last=True", {"channels_last": True}, False),
            ]
        else:
            variants = [
                (f'precision="{precision}"', {"precision": precision}, False),
                ("under the caller's autocast", {}, True),
            ]
        note = "" if precision == "fp32" else ", under the caller's autocast"

        def ours_cases(
            group: str,
            method: str,
            points: int,
            variants: list[tuple[str, dict[str, Any], bool]] = variants,
            context: Callable[[], Any] = context,
            **options: Any,
        ) -> list[Case]:
            cases = []
            for index, (label, extra, autocast) in enumerate(variants):
                shown = ", ".join(
                    [f"{k}={v}" for k, v in options.items() if k != "layer"] + [label]
                )
                call = _ours(model, inputs, target, method, **options, **extra)
                run = _under(context, call) if autocast else call
                cases.append(Case(group, OURS, shown, run, n, points, primary=index == 0))
            return cases

        groups: list[tuple[list[Case], int]] = []
        group = "gradient" + suffix
        cases = ours_cases(group, "gradient", 1)
        cases.append(
            Case(
                group,
                CAPTUM,
                f"Saliency, defaults (abs=True){note}",
                _under(context, lambda: Saliency(model).attribute(inputs, target=target)),
                n,
            )
        )
        groups.append((cases, config.fast_repeats))
        group = ig_group + suffix
        cases = ours_cases(group, "integrated_gradients", steps, steps=steps)
        cases.append(
            Case(
                group,
                CAPTUM,
                f"IntegratedGradients n_steps={steps}, defaults (one batch of {n * steps}){note}",
                captum_ig(None, context),
                n,
                steps,
            )
        )
        if best_ig is not None:
            cases.append(
                Case(
                    group,
                    CAPTUM,
                    f"IntegratedGradients n_steps={steps}, internal_batch_size={best_ig} "
                    f"(best of sweep){note}",
                    captum_ig(best_ig, context),
                    n,
                    steps,
                )
            )
        groups.append((cases, config.repeats))
        group = sg_group + suffix
        cases = ours_cases(group, "smoothgrad", samples, samples=samples)
        cases.append(
            Case(
                group,
                CAPTUM,
                f"NoiseTunnel(Saliency) nt_samples={samples}, defaults (one batch of "
                f"{n * samples}){note}",
                captum_sg(None, context),
                n,
                samples,
            )
        )
        if best_nt is not None:
            cases.append(
                Case(
                    group,
                    CAPTUM,
                    f"NoiseTunnel(Saliency) nt_samples={samples}, nt_samples_batch_size="
                    f"{best_nt} (best of sweep){note}",
                    captum_sg(best_nt, context),
                    n,
                    samples,
                )
            )
        groups.append((cases, config.repeats))
        group = "Grad-CAM" + suffix
        cases = ours_cases(group, "gradcam", 1)
        explicit = ours_cases(group, "gradcam", 1, layer=layer_name)[0]
        explicit.primary = False
        explicit.variant = f'layer="{layer_name}", ' + explicit.variant
        cases.append(explicit)
        cases.append(
            Case(
                group,
                CAPTUM,
                f"LayerGradCam({layer_name}) relu_attributions=True + "
                f"LayerAttribution.interpolate bilinear{note}",
                captum_grad_cam(context),
                n,
            )
        )
        cases.append(
            Case(
                group,
                GRADCAM_LIB,
                f"GradCAM(target_layers=[{layer_name}]), one object per call{note}",
                grad_cam_reference(context),
                n,
            )
        )
        groups.append((cases, config.fast_repeats))
        for cases, repeats in groups:
            log(f"[{config.model}] {cases[0].group}")
            outcome.results += alternate(cases, device, repeats, config.warmup, log)
    return outcome


def _not_installed() -> None:
    raise ModuleNotFoundError("not installed (pip install grad-cam)")


def _grad_cam_layer(model: nn.Module) -> nn.Module:
    """The layer every library explains: the last block of ``layer4`` for ResNets."""
    layer4 = getattr(model, "layer4", None)
    if isinstance(layer4, nn.Sequential):
        return layer4[-1]
    raise ValueError("the micro benchmarks use torchvision ResNets (a layer4 to explain)")


def _ceiling_cases(config: MicroConfig, model: nn.Module, device: torch.device) -> list[Case]:
    """Plain forward + backward to the input, no weight gradients: the fastest any gradient
    method can evaluate one point."""
    frozen = copy.deepcopy(model)
    for parameter in frozen.parameters():
        parameter.requires_grad_(False)
    # Static shapes: one graph per batch size and precision, none of them generalised.
    compiled = torch.compile(frozen, dynamic=False) if config.compile_ceiling else None
    cases = []
    for batch in config.ceiling_batches:
        inputs = make_inputs(config, device, batch)
        with torch.no_grad():
            target = frozen(inputs).argmax(1)
        variants: list[tuple[str, Callable[..., Any]]] = [("eager", frozen)]
        if batch == max(config.ceiling_batches):
            variants.append(("eager channels-last", _channels_last(frozen)))
        if compiled is not None:
            variants.append(("torch.compile", compiled))
        for kind, net in variants:
            for precision in config.precisions:
                context = _autocast(device, precision)
                cases.append(
                    Case(
                        "forward+backward",
                        TORCH,
                        f"{kind} {precision}, batch {batch}",
                        _under(context, forward_backward(net, inputs, target)),
                        batch,
                    )
                )
    return cases


def _channels_last(model: nn.Module) -> Callable[[Tensor], Any]:
    """A copy of the model with channels-last weights, fed channels-last inputs."""
    converted = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def run(points: Tensor) -> Any:
        return converted(points.contiguous(memory_format=torch.channels_last))

    return run


def forward_backward(net: Callable[..., Any], inputs: Tensor, target: Tensor):
    def run() -> Tensor:
        points = inputs.detach().requires_grad_(True)
        scores = net(points).float().gather(1, target[:, None]).sum()
        (grads,) = torch.autograd.grad(scores, points)
        return grads

    return run
