"""The real ``saliency`` command, run as a subprocess (``python -m saliency.cli`` and the script).

Each run imports torch (seconds of CPU), so the runs are few and all started at once by one
module fixture.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

import saliency

MODULE = (sys.executable, "-m", "saliency.cli")
SCRIPT = shutil.which("saliency")
RUNS: dict[str, tuple[str, ...]] = {
    "module --version": (*MODULE, "--version"),
    "module --help": (*MODULE, "--help"),
    "module methods": (*MODULE, "methods"),
}
if SCRIPT is not None:  # the installed console script (entry point saliency.cli.launch:console)
    RUNS["script methods"] = (SCRIPT, "methods")

# What the CLI itself imports for its help texts, whatever `import saliency` imports: the
# package's __init__ is replaced by a bare package of the same folder, then main() runs.
HELP_IMPORTS = """
import importlib.metadata, importlib.util, json, sys, types
spec = importlib.util.find_spec("saliency")
package = types.ModuleType("saliency")
package.__path__ = list(spec.submodule_search_locations)
package.__version__ = importlib.metadata.version("saliency-kit")
sys.modules["saliency"] = package
from saliency.cli.main import main
for argv in (["--help"], ["methods", "--help"], ["--version"]):
    try:
        main(argv)
    except SystemExit as stop:
        assert stop.code == 0, argv
print(json.dumps(sorted(sys.modules)))
"""
# What `saliency methods` imports (the package as installed).
METHODS_IMPORTS = """
import contextlib, io, json, sys
from saliency.cli.main import main
with contextlib.redirect_stdout(io.StringIO()):
    assert main(["methods"]) == 0
print(json.dumps(sorted(sys.modules)))
"""
RUNS["help imports"] = (sys.executable, "-c", HELP_IMPORTS)
RUNS["methods imports"] = (sys.executable, "-c", METHODS_IMPORTS)


@pytest.fixture(scope="module")
def results() -> Iterator[dict[str, subprocess.CompletedProcess[str]]]:
    environment = {**os.environ, "PYTHONIOENCODING": "utf-8", "COLUMNS": "100"}
    started = {
        name: subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            env=environment,
        )
        for name, command in RUNS.items()
    }
    finished = {}
    try:
        for name, process in started.items():
            stdout, stderr = process.communicate(timeout=120)
            finished[name] = subprocess.CompletedProcess(
                RUNS[name], process.returncode, stdout, stderr
            )
    finally:
        for process in started.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    yield finished


def method_blocks(text: str) -> dict[str, str]:
    """``saliency methods`` output split into one block per method, keyed by name."""
    blocks = {}
    for block in re.split(r"\n\s*\n", text.strip()):
        name = block.split(None, 1)[0]
        blocks[name] = block
    return blocks


def check(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_version(results: dict[str, subprocess.CompletedProcess[str]]) -> None:
    output = check(results["module --version"])
    assert output.strip() == f"saliency {saliency.__version__}"
    assert saliency.__version__ != "0.0.0+unknown"


def test_help(results: dict[str, subprocess.CompletedProcess[str]]) -> None:
    output = check(results["module --help"])
    assert output.startswith("usage: saliency")
    assert "methods" in output
    for name in saliency.list_methods():  # the epilog reads the registry
        # A method family (captum:NAME, ...) is listed once, by its entry point PREFIX:*.
        family, colon, _ = name.partition(":")
        assert (f"{family}:*" if colon else name) in output


@pytest.mark.parametrize("run", ["module methods", "script methods"])
def test_methods_lists_every_method_with_options(
    results: dict[str, subprocess.CompletedProcess[str]], run: str
) -> None:
    assert run in results, "the installed `saliency` command is not on PATH"
    output = check(results[run])
    assert results[run].stderr == ""
    blocks = method_blocks(output)
    assert sorted(blocks) == saliency.list_methods()
    for name, block in blocks.items():
        method = saliency.get_method(name)
        assert method.summary() in block
        assert f"({method.output} space)" in block
        options = [f for f in dataclasses.fields(method) if f.init]
        if not options:
            assert "options: none" in block
        for option in options:
            assert re.search(rf"\b{re.escape(option.name)}=", block), (name, option.name, block)
            if option.default is not dataclasses.MISSING:
                assert f"{option.name}={option.default!r}" in block


def imported(result: subprocess.CompletedProcess[str]) -> list[str]:
    modules: list[str] = json.loads(check(result).splitlines()[-1])
    return modules


def test_help_texts_import_no_torch_and_no_command(
    results: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    modules = imported(results["help imports"])
    heavy = [m for m in modules if m.split(".")[0] in ("torch", "torchvision", "matplotlib")]
    assert heavy == []
    assert [m for m in modules if m.startswith("saliency")] == [
        "saliency",
        "saliency.cli",
        "saliency.cli.collection",
        "saliency.cli.main",
    ]


def test_methods_imports_no_gallery_demo_training_or_metrics(
    results: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    modules = imported(results["methods imports"])
    assert "saliency.method_info" in modules and "saliency.methods.registry" in modules
    unwanted = ("saliency.gallery", "saliency.metrics", "saliency.training", "saliency.demo")
    inside = tuple(name + "." for name in unwanted)
    assert [m for m in modules if m in unwanted or m.startswith(inside)] == []
    entry = ("saliency.cli.main", "saliency.cli.collection")
    assert not any(m.startswith("saliency.cli.") and m not in entry for m in modules)


def test_top_level_help_names_the_registry_without_loading_it() -> None:
    from saliency.cli.main import ENTRY_POINT_GROUP, registered_names
    from saliency.methods import registry

    assert ENTRY_POINT_GROUP == registry.ENTRY_POINT_GROUP
    # Method families (captum:NAME, ...) are named by their entry point, PREFIX:*.
    listed = {
        f"{name.partition(':')[0]}:*" if ":" in name else name for name in saliency.list_methods()
    }
    assert registered_names() == sorted(listed)
