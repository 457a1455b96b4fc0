"""The start-up profile of the benchmarks (``--profile startup``): its cases and its table, from
measurements given here (timing real processes is the benchmark's job, not a test's)."""

from __future__ import annotations

from benchmarks import run, startup


def test_the_cases_are_the_commands_of_the_targets() -> None:
    names = [case.name for case in startup.cases()]
    assert names[0] == startup.TORCH
    assert {"import saliency", "saliency --help", "saliency explain --help"} <= set(names)
    assert "startup" in run.PROFILES


def test_the_table_checks_each_target_against_the_minimum() -> None:
    by_name = {case.name: case for case in startup.cases()}
    results = [
        startup.StartupResult(by_name[startup.TORCH], [1.6, 1.5, 1.7]),
        startup.StartupResult(by_name["import saliency"], [0.1, 0.09, 0.2]),
        startup.StartupResult(by_name["saliency --help"], [0.7, 0.6, 0.55]),
        startup.StartupResult(by_name["saliency explain --help"], [2.2, 2.0, 2.4]),
        startup.StartupResult(by_name["saliency methods"], [], error="boom"),
    ]
    section = run._startup_section(results, 3, "python -m benchmarks.run", "0 / 0 / 0", False)
    rows = {line.split(" | ")[0].strip("| `"): line for line in section.splitlines() if "|" in line}
    assert "+0.00" in rows["import torch"]
    assert "yes" in rows["import saliency"] and "-1.41" in rows["import saliency"]
    assert "**no**" in rows["saliency --help"] and "0.55" in rows["saliency --help"]
    assert "yes" in rows["saliency explain --help"] and "+0.50" in rows["saliency explain --help"]
    assert "boom" in rows["saliency methods"]
