"""Markdown tables, the machine's description, and the atomic update of ``RESULTS.md``."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from benchmarks.measure import Result

HEADER = """\
# Benchmark results

Written by `python -m benchmarks.run` (see [README.md](README.md) for what each number means).
Each profile has its own section below; running a profile again replaces only its section.
"""

_PACKAGES = (
    "saliency-kit",
    "torch",
    "torchvision",
    "captum",
    "grad-cam",
    "matplotlib",
    "opencv-python-headless",
    "numpy",
    "pillow",
)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    found = {}
    for name in _PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def load_average() -> str:
    if not hasattr(os, "getloadavg"):
        return "n/a"
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def machine_lines(device: torch.device, command: str, load_at_start: str) -> list[str]:
    """Bullet lines: date, machine, device, versions, load, command."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cores = os.cpu_count() or 1
    if device.type == "cuda":
        shown_device = f"{device} ({torch.cuda.get_device_name(device)})"
    else:
        shown_device = f"cpu ({torch.get_num_threads()} torch threads)"
    packages = ", ".join(f"{name} {version}" for name, version in versions().items())
    lines = [
        f"- date (when the section was written, at the end of the run): {now}",
        f"- machine: {cpu_model()}, {cores} cores; {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}",
        f"- device: {shown_device}",
        f"- versions: {packages}",
        f"- load average (1/5/15 min) at start: {load_at_start}; at end: {load_average()}",
        f"- command: `{command}`",
    ]
    first = float(load_at_start.split(" / ")[0]) if load_at_start != "n/a" else 0.0
    if first >= 0.5 * cores:
        lines.append(
            "- **note: the machine was busy when this run started** (load average ≥ half the "
            "cores): absolute numbers are low; the ratios, measured interleaved in one process, "
            "are the part to read"
        )
    return lines


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def clean(cell: str) -> str:
        return cell.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(clean(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    if value >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def megabytes(value: float | None) -> str:
    return "—" if value is None else f"{value / 2**20:,.0f}"


def ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or theirs <= 0:
        return "—"
    return f"{ours / theirs:.2f}×"


def results_table(results: Sequence[Result], memory_kind: str) -> str:
    """One row per case; speed and memory ratios against the group's primary (ours) case."""
    primaries = {r.case.group: r for r in results if r.case.primary}
    rows = []
    for result in results:
        case = result.case
        primary = primaries.get(case.group)
        rate = result.images_per_second
        spread = result.spread
        compared = primary is not None and result is not primary
        speed_ratio = ratio(primary.images_per_second, rate) if compared and primary else "—"
        memory_ratio = ratio(primary.peak_bytes, result.peak_bytes) if compared and primary else "—"
        rows.append(
            [
                case.group,
                f"**{case.library}**" if case.primary else case.library,
                case.variant,
                result.error or number(rate),
                "—" if spread is None else f"{number(spread[0])}–{number(spread[1])}",
                number(None if rate is None else rate * case.points),
                megabytes(result.peak_bytes),
                speed_ratio,
                memory_ratio,
            ]
        )
    headers = [
        "method",
        "implementation",
        "options",
        "images/s (median)",
        "range",
        "passes/s",
        f"{memory_kind} (MiB)",
        "speed: ours ÷ this",
        "memory: ours ÷ this",
    ]
    return table(headers, rows)


def targets_table(rows: Sequence[tuple[str, float | None, float]]) -> str:
    """``(description, measured ratio, goal)`` rows with met / missed by how much."""
    shown = []
    for description, measured, goal in rows:
        if measured is None:
            status = "not measured"
            value = "—"
        else:
            value = f"{measured:.2f}×"
            status = (
                "**met**"
                if measured >= goal
                else f"**missed** (reaches {100 * measured / goal:.0f}% of the goal)"
            )
        shown.append([description, f"≥ {goal:g}×", value, status])
    return table(["target", "goal", "measured", "status"], shown)


def write_section(path: Path, profile: str, body: str) -> None:
    """Replace (or append) the profile's section of ``path``, written atomically."""
    begin, end = f"<!-- profile:{profile} -->", f"<!-- /profile:{profile} -->"
    section = f"{begin}\n{body.strip()}\n{end}\n"
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
