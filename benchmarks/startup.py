"""Start-up time: how long the first commands a user types take, each a fresh process.

``python -m benchmarks.run --profile startup``: ``import torch`` (the floor of anything that
computes), ``import saliency``, ``saliency --help``, ``saliency explain --help`` and
``saliency methods``, each run ``repeats`` times in rotating order; the minimum counts (start-up
noise only ever adds time). Targets (issue 16): ``import saliency`` ≤ ``import torch`` + 0.3 s,
``saliency --help`` ≤ 0.5 s, ``saliency explain --help`` ≤ ``import torch`` + 0.6 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StartupCase:
    """One command and its target.

    Attributes:
        name: What the table shows.
        argv: The command.
        budget: Seconds allowed; over ``import torch`` when ``over_torch``.
        over_torch: Whether ``budget`` is added to the ``import torch`` time.
    """

    name: str
    argv: tuple[str, ...]
    budget: float | None = None
    over_torch: bool = False


@dataclass(frozen=True)
class StartupResult:
    case: StartupCase
    seconds: list[float]
    error: str | None = None

    @property
    def best(self) -> float | None:
        return min(self.seconds) if self.seconds else None


TORCH = "import torch"


def _command() -> tuple[str, ...]:
    """The installed console script beside this Python, else ``python -m saliency.cli``."""
    script = Path(sys.executable).with_name("saliency")
    if script.exists():
        return (str(script),)
    found = shutil.which("saliency")
    return (found,) if found else (sys.executable, "-m", "saliency.cli")


def cases() -> list[StartupCase]:
    command = _command()
    return [
        StartupCase(TORCH, (sys.executable, "-c", "import torch")),
        StartupCase("import saliency", (sys.executable, "-c", "import saliency"), 0.3, True),
        StartupCase(
            "import saliency; saliency.explain",
            (sys.executable, "-c", "import saliency; saliency.explain"),
        ),
        StartupCase("saliency --help", (*command, "--help"), 0.5),
        StartupCase("saliency explain --help", (*command, "explain", "--help"), 0.6, True),
        StartupCase("saliency methods", (*command, "methods")),
    ]


def run_startup(repeats: int, log: Callable[[str], None]) -> list[StartupResult]:
    """Every case ``repeats`` times, in rotating order (ABC, BCA, ...), after one untimed run
    of each (which also writes the byte-code caches)."""
    chosen = cases()
    times: dict[str, list[float]] = {case.name: [] for case in chosen}
    errors: dict[str, str] = {}
    environment = dict(os.environ)
    environment.pop("PYTHONDONTWRITEBYTECODE", None)  # compiled modules cached, as installed
    for case in chosen:
        subprocess.run(case.argv, capture_output=True, env=environment, check=False)
    for round_ in range(repeats):
        order = chosen[round_ % len(chosen) :] + chosen[: round_ % len(chosen)]
        for case in order:
            started = time.perf_counter()
            done = subprocess.run(
                case.argv, capture_output=True, text=True, env=environment, check=False
            )
            elapsed = time.perf_counter() - started
            if done.returncode != 0:
                errors[case.name] = (done.stderr.strip().splitlines() or ["failed"])[-1]
                continue
            times[case.name].append(elapsed)
        log(f"[startup] round {round_ + 1}/{repeats} done")
    return [StartupResult(case, times[case.name], errors.get(case.name)) for case in chosen]


def target(result: StartupResult, torch_seconds: float | None) -> tuple[float | None, str]:
    """The case's limit in seconds (None: no target) and how it is written."""
    case = result.case
    if case.budget is None:
        return None, "-"
    if not case.over_torch:
        return case.budget, f"≤ {case.budget:.1f} s"
    limit = None if torch_seconds is None else torch_seconds + case.budget
    return limit, f"≤ import torch + {case.budget:.1f} s"
