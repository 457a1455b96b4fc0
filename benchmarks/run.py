"""Run the benchmarks: ``python -m benchmarks.run --profile cpu|gpu|e2e [--smoke] [--out FILE]``.

Profiles (comma-separated or repeated ``--profile`` to run several):

* ``cpu``: ResNet-18 (random weights), 224², 4 images, on the CPU: gradient, IG-32,
  SmoothGrad-32 and Grad-CAM, ours against captum (defaults and its best batch size) and
  pytorch-grad-cam, plus the plain forward+backward ceiling.
* ``gpu``: the same methods on ResNet-50, 224², batches of 32, fp32 and bf16, on CUDA; the
  ceiling eager and under ``torch.compile``. Skipped with a message when CUDA is missing.
* ``e2e``: a folder of 64 generated JPEG photos → PNG overlays: ``saliency explain`` against a
  captum + matplotlib script and a pytorch-grad-cam script, each a real process.
* ``startup``: fresh processes of ``import torch``, ``import saliency``, ``saliency --help``,
  ``saliency explain --help`` and ``saliency methods``; the minimum of the rounds counts.

Each profile's section of the results file (default ``benchmarks/RESULTS.md``; with ``--smoke``
nothing is written unless ``--out`` is given) is replaced atomically; the tables are also printed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks import e2e, micro, report, startup
from benchmarks.measure import Result, memory_kind

PROFILES = ("cpu", "gpu", "e2e", "startup")
SMOKE_NOTE = " (smoke size: checks the harness; the numbers mean nothing)"
DEFAULT_OUT = Path(__file__).resolve().parent / "RESULTS.md"


def _profiles(values: Sequence[str]) -> list[str]:
    chosen: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if name not in PROFILES:
                raise argparse.ArgumentTypeError(
                    f"unknown profile {name!r}; accepted: {', '.join(PROFILES)}"
                )
            if name not in chosen:
                chosen.append(name)
    return chosen


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--profile", action="append", required=True, help="cpu, gpu, e2e, startup (comma-separated)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes that check the harness, not the speed"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="results file to update (default: benchmarks/RESULTS.md; with --smoke: none)",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="only print the tables, write no file"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch CPU threads, in this process and in every e2e pipeline (default: torch's "
        f"choice here, {torch.get_num_threads()})",
    )
    parser.add_argument(
        "--device",
        default="cuda",
        help="device of the gpu profile (default cuda; 'cpu' runs its code path on the CPU)",
    )
    parser.add_argument("--repeats", type=int, help="override the timed rounds of every profile")
    arguments = parser.parse_args(argv)
    try:
        arguments.profiles = _profiles(arguments.profile)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if arguments.threads < 1:
        parser.error("--threads must be >= 1")
    return arguments


def _section_head(
    name: str, description: str, device: torch.device, command: str, load: str, smoke: bool
) -> list[str]:
    """A profile section's title, description and machine lines, up to its results heading."""
    return [
        f"## {name}{SMOKE_NOTE if smoke else ''}",
        "",
        description + ".",
        "",
        *report.machine_lines(device, command, load),
        "",
        "### Results",
        "",
    ]


def _micro_section(
    name: str, outcome: micro.MicroOutcome, command: str, load: str, smoke: bool
) -> str:
    config = outcome.config
    memory = memory_kind(outcome.device)
    lines = [
        *_section_head(name, config.describe(), outcome.device, command, load, smoke),
        "Each method's cases ran interleaved in one process on the same model, inputs and "
        "targets. `speed: ours ÷ this` > 1 means ours (the bold row, default options) is faster; "
        "`memory: ours ÷ this` < 1 means ours needs less. `passes/s` = images/s × forward+backward "
        "evaluations per image, comparable with the forward+backward ceiling.",
        "",
        report.results_table(outcome.results, memory),
        "",
    ]
    if outcome.sweeps:
        rows = [
            [
                s.group,
                s.library,
                f"{s.parameter}={s.value}",
                s.error or report.number(s.images_per_second),
            ]
            for s in outcome.sweeps
        ]
        lines += [
            "### captum batch-size sweeps",
            "",
            f"One untimed call of each value, then {config.sweep_rounds} interleaved timed "
            "round(s); each value's fastest call is shown and the fastest value is used above.",
            "",
            report.table(["method", "library", "option", "images/s"], rows),
            "",
        ]
    lines += ["### Targets", "", report.targets_table(micro_targets(outcome)), ""]
    return "\n".join(lines)


def _find(results: Sequence[Result], group: str, library: str, contains: str = "") -> float | None:
    for result in results:
        case = result.case
        if case.group == group and case.library == library and contains in case.variant:
            return result.images_per_second
    return None


def micro_targets(outcome: micro.MicroOutcome) -> list[tuple[str, float | None, float]]:
    results, config = outcome.results, outcome.config
    ig, sg = f"IG-{config.steps}", f"SmoothGrad-{config.samples}"

    def primary(group: str) -> float | None:
        for result in results:
            if result.case.group == group and result.case.primary:
                return result.images_per_second
        return None

    def over(ours: float | None, theirs: float | None) -> float | None:
        return None if ours is None or theirs is None or theirs <= 0 else ours / theirs

    batch = max(config.ceiling_batches)
    ceiling = _find(results, "forward+backward", micro.TORCH, f"eager fp32, batch {batch}")
    rows = []
    for group, label, points in ((ig, ig, config.steps), (sg, sg, config.samples)):
        passes = primary(group)
        rows.append(
            (
                f"{label}: ours (defaults), passes/s ÷ the forward+backward ceiling at batch "
                f"{batch}",
                over(None if passes is None else passes * points, ceiling),
                0.9,
            )
        )
        rows.append(
            (
                f"{label}: ours (defaults) ÷ captum at its best batch size",
                over(passes, _find(results, group, micro.CAPTUM, "best of sweep")),
                1.0,
            )
        )
    rows.append(
        (
            "Grad-CAM: ours (defaults) ÷ captum LayerGradCam",
            over(primary("Grad-CAM"), _find(results, "Grad-CAM", micro.CAPTUM)),
            1.0,
        )
    )
    return rows


def _e2e_section(
    results: list[e2e.PipelineResult],
    config: e2e.E2EConfig,
    command: str,
    load: str,
    smoke: bool,
    ceiling: float | None = None,
) -> str:
    primary = next(r for r in results if r.pipeline.primary)
    rows = []
    for result in results:
        spread = result.spread
        rows.append(
            [
                f"**{result.pipeline.name}**" if result.pipeline.primary else result.pipeline.name,
                result.pipeline.methods,
                result.error or report.number(result.images_per_second),
                "—" if spread is None else f"{report.number(spread[0])}–{report.number(spread[1])}",
                report.number(result.inner_images_per_second),
                report.megabytes(max(result.peak_rss) if result.peak_rss else None),
                f"{statistics.median(result.device_idle):.0%}" if result.device_idle else "—",
                str(result.overlays[-1]) if result.overlays else "—",
                "—"
                if result is primary
                else report.ratio(primary.images_per_second, result.images_per_second),
            ]
        )
    by_name = {(r.pipeline.name, r.pipeline.methods): r.images_per_second for r in results}
    ours_both = by_name.get((e2e.OURS, "gradient, gradcam"))
    ours_cam = by_name.get((e2e.OURS, "gradcam"))
    captum = by_name.get(("captum + matplotlib", "gradient, gradcam"))
    gradcam = by_name.get(("pytorch-grad-cam", "gradcam"))

    def over(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b <= 0 else a / b

    targets = [
        (
            "end to end, gradient + Grad-CAM: ours ÷ captum + matplotlib",
            over(ours_both, captum),
            4,
        ),
        (
            "end to end, like for like (Grad-CAM only): ours ÷ pytorch-grad-cam",
            over(ours_cam, gradcam),
            2,
        ),
    ]
    lines = [
        *_section_head("e2e", config.describe(), _e2e_device(), command, load, smoke),
        "Images/s of the whole process (`images/s`, start-up and imports included: what a user "
        "waits for) and after its imports (`after start-up`: the CLI's own summary line, or the "
        "script's time from after its imports; model loading included). Peak RSS is the "
        "process's maximum resident set (`wait4`). `device idle`: the share of our pipeline's "
        "time the device waited for decoding or writing (median; measured by `saliency explain` "
        "itself, `totals.device_idle` in its manifest). `speed: ours ÷ this` compares with the "
        "bold row.",
        "",
        report.table(
            [
                "pipeline",
                "methods",
                "images/s (median)",
                "range",
                "after start-up",
                "peak RSS (MiB)",
                "device idle",
                "overlays written",
                "speed: ours ÷ this",
            ],
            rows,
        ),
        "",
        "### Targets",
        "",
        report.targets_table(targets),
        "",
        f"Ours (gradient + Grad-CAM) ÷ pytorch-grad-cam (Grad-CAM only) = "
        f"{report.ratio(ours_both, gradcam)}.",
        "",
        *_ceiling_lines(results, config, ceiling, captum),
    ]
    return "\n".join(lines)


def _ceiling_lines(
    results: list[e2e.PipelineResult],
    config: e2e.E2EConfig,
    ceiling: float | None,
    captum: float | None,
) -> list[str]:
    """How close our gradient + Grad-CAM run is to one forward+backward per image, and the
    largest ratio over captum + matplotlib that such a run could reach with our start-up."""
    ours = next(
        (r for r in results if r.pipeline.name == e2e.OURS and "gradient" in r.pipeline.methods),
        None,
    )
    if ceiling is None or ours is None or ours.images_per_second is None:
        return []
    inner = ours.inner_images_per_second
    lines = [
        "### Ceiling",
        "",
        f"One forward+backward to the input per image ({config.model}, batch {config.batch}, "
        f"this process, best of 5 batches): {report.number(ceiling)} images/s.",
    ]
    if inner is not None:
        start_up = config.images / ours.images_per_second - config.images / inner
        at_ceiling = config.images / (max(0.0, start_up) + config.images / ceiling)
        lines[-1] += (
            f" Ours (gradient + Grad-CAM, one shared pass per image) after start-up: "
            f"{report.number(inner)} images/s, {inner / ceiling:.0%} of it; with our start-up "
            f"({start_up:.1f} s) a run at the ceiling would make {report.number(at_ceiling)} "
            f"images/s"
        )
        if captum:
            lines[-1] += f", {at_ceiling / captum:.2f}× captum + matplotlib"
        lines[-1] += "."
    return [*lines, ""]


STARTUP_REPEATS, STARTUP_SMOKE_REPEATS = 3, 1


def _startup_section(
    results: list[startup.StartupResult], repeats: int, command: str, load: str, smoke: bool
) -> str:
    torch_seconds = next((r.best for r in results if r.case.name == startup.TORCH), None)
    rows = []
    for result in results:
        limit, written = startup.target(result, torch_seconds)
        best = result.best
        met = "—" if limit is None or best is None else ("yes" if best <= limit else "**no**")
        rows.append(
            [
                f"`{result.case.name}`",
                result.error or report.number(best),
                ", ".join(f"{value:.2f}" for value in result.seconds) or "—",
                "—" if best is None or torch_seconds is None else f"{best - torch_seconds:+.2f}",
                written,
                met,
            ]
        )
    description = (
        "Fresh processes of the first commands a user types, each run "
        f"{repeats} time(s) in rotating order; the minimum counts (start-up noise only adds "
        "time). On a shared machine the absolute numbers move with the load; the differences "
        "to `import torch`, measured in the same rounds, move less"
    )
    lines = [
        *_section_head("startup", description, torch.device("cpu"), command, load, smoke),
        report.table(
            ["command", "min (s)", "runs (s)", "− import torch (s)", "target", "met"], rows
        ),
        "",
    ]
    return "\n".join(lines)


def _e2e_device() -> torch.device:
    """Where the e2e pipelines run: each picks CUDA when it is there."""
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    torch.set_num_threads(arguments.threads)
    # captum's Saliency warns on every call that it sets requires_grad on the inputs.
    warnings.filterwarnings("ignore", message="Input Tensor .* did not already require grad")
    shown_argv = list(sys.argv[1:] if argv is None else argv)
    command = "python -m benchmarks.run " + shlex.join(shown_argv)
    out: Path | None = arguments.out
    if out is None and not arguments.smoke:
        out = DEFAULT_OUT
    if arguments.no_write:
        out = None
    status = 0
    for profile in arguments.profiles:
        load = report.load_average()
        if profile in ("cpu", "gpu"):
            table = micro.SMOKE if arguments.smoke else micro.PROFILES
            config = table[profile]
            if arguments.repeats:
                config = replace(config, repeats=arguments.repeats, fast_repeats=arguments.repeats)
            device = torch.device("cpu" if profile == "cpu" else arguments.device)
            if device.type == "cuda" and not torch.cuda.is_available():
                print(
                    f"[{profile}] skipped: CUDA is not available here (no GPU or a CPU-only torch)"
                )
                continue
            print(f"[{profile}] {config.describe()}", flush=True)
            outcome = micro.run_micro(config, device, log=_log)
            section = _micro_section(profile, outcome, command, load, arguments.smoke)
            if any(r.error for r in outcome.results if r.case.library == micro.OURS):
                status = 1
        elif profile == "startup":
            repeats = arguments.repeats or (
                STARTUP_SMOKE_REPEATS if arguments.smoke else STARTUP_REPEATS
            )
            print(f"[startup] {repeats} round(s) of fresh processes", flush=True)
            started = startup.run_startup(repeats, log=_log)
            section = _startup_section(started, repeats, command, load, arguments.smoke)
            if any(r.error for r in started):
                status = 1
        else:
            e2e_config = e2e.SMOKE if arguments.smoke else e2e.PROFILE
            if arguments.repeats:
                e2e_config = replace(e2e_config, repeats=arguments.repeats)
            print(f"[e2e] {e2e_config.describe()}", flush=True)
            results = e2e.run_e2e(e2e_config, arguments.threads, log=_log)
            ceiling = e2e.ceiling_images_per_second(e2e_config, arguments.threads)
            section = _e2e_section(
                results, e2e_config, command, load, arguments.smoke, ceiling=ceiling
            )
            if any(r.error for r in results if r.pipeline.name == e2e.OURS):
                status = 1
        print(section, flush=True)
        if out is not None:
            report.write_section(out, profile, section)
            print(f"[{profile}] written to {out}", flush=True)
    return status


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.exit(main())
