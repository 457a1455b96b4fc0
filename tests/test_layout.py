"""The package layout: layering read from the import graph, a light ``import saliency``, and the
type checker seeing every public name with its real type.

Layers (DESIGN.md): core ← methods ← {demo, cli, gallery}. The core is ``saliency`` without
``saliency.methods``' plugins, ``saliency.demo``, ``saliency.cli``, ``saliency.gallery`` and
``saliency.testing``; it may use the plugin infrastructure (``saliency.methods``, its ``base`` and
``registry``), never a method module. Imports under ``if TYPE_CHECKING:`` name types only and are
not edges of the graph.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"saliency": ROOT / "saliency", "saliency.methods": ROOT / "methods"}
FOLDERS |= {"saliency.cli": ROOT / "cli", "saliency.gallery": ROOT / "gallery"}
PLUGIN_INFRASTRUCTURE = {"saliency.methods", "saliency.methods.base", "saliency.methods.registry"}
ABOVE_THE_CORE = ("saliency.demo", "saliency.cli", "saliency.gallery", "saliency.testing")


def _modules() -> dict[str, Path]:
    """Every module of the installed namespace, by dotted name (the real files, not the links)."""
    found: dict[str, Path] = {}
    for package, folder in FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            relative = path.relative_to(folder)
            if package == "saliency" and relative.parts[0] in ("methods", "cli", "gallery"):
                continue  # the links saliency/{methods,cli,gallery}: listed from their folders
            parts = [package, *relative.with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module_level: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements of a module, skipping ``if TYPE_CHECKING:`` blocks; with
    ``module_level`` only those that run when the module is imported (not in functions)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (i for child in node.orelse for i in _imports_of(child, module_level))
            continue
        yield from _imports_of(node, module_level)


def _imports_of(node: ast.AST, module_level: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    elif module_level and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
        return
    else:
        yield from _imports(node, module_level)


def _targets(name: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The saliency modules an import statement in module ``name`` loads."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in MODULES}
    if node.level:
        package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    # ``from package import module`` loads that module; ``from module import name`` the module
    found = {
        f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
        for alias in node.names
    }
    return found & MODULES.keys()


def import_graph(module_level: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        edges: set[str] = set()
        for node in _imports(tree, module_level):
            edges |= _targets(name, node)
        graph[name] = edges - {name}
    return graph


def _layer(module: str) -> str:
    for upper in ABOVE_THE_CORE:
        if module == upper or module.startswith(upper + "."):
            return upper.removeprefix("saliency.")
    if module.startswith("saliency.methods") and module not in PLUGIN_INFRASTRUCTURE:
        return "methods"
    return "core"


ALLOWED = {
    "core": {"core"},
    "methods": {"core", "methods"},
    "testing": {"core", "methods"},
    "gallery": {"core", "methods", "gallery"},
    "demo": {"core", "methods", "gallery", "demo"},
    "cli": {"core", "methods", "gallery", "demo", "cli"},
}


def test_the_graph_sees_the_whole_package() -> None:
    graph = import_graph(module_level=True)
    assert {"saliency.engine", "saliency.methods.gradient", "saliency.cli.main"} <= graph.keys()
    assert {"saliency.demo.runner", "saliency.gallery.builder", "saliency.testing"} <= graph.keys()
    assert "saliency.demo.report" in graph["saliency.demo.runner"]
    assert "saliency.gallery.builder" in graph["saliency.demo.report"]


def test_no_module_imports_a_layer_above_its_own() -> None:
    graph = import_graph(module_level=True)
    wrong = [
        f"{module} ({_layer(module)}) imports {target} ({_layer(target)})"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if _layer(target) not in ALLOWED[_layer(module)]
    ]
    assert wrong == []


def test_the_core_never_imports_the_demo_cli_gallery_or_testing_even_lazily() -> None:
    graph = import_graph(module_level=False)
    wrong = [
        f"{module} imports {target}"
        for module, targets in sorted(graph.items())
        if _layer(module) in ("core", "methods")
        for target in sorted(targets)
        if _layer(target) not in ALLOWED[_layer(module)]
    ]
    assert wrong == []


def test_there_are_no_import_cycles() -> None:
    """Strongly connected components of every import, also inside functions (Tarjan)."""
    graph = import_graph(module_level=False)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert cycles == []


def _loaded_by(code: str) -> list[str]:
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


def test_import_saliency_is_light() -> None:
    loaded = _loaded_by("import saliency")
    heavy = {"torchvision", "torch._dynamo", "matplotlib", "scipy", "captum", "jinja2"}
    assert sorted(heavy & set(loaded)) == []
    unwanted = [
        module
        for module in loaded
        if module.startswith(
            ("saliency.demo", "saliency.cli", "saliency.gallery", "saliency.metrics")
        )
        or module in ("saliency.testing", "saliency.losses")
        or (module.startswith("saliency.methods.") and module not in PLUGIN_INFRASTRUCTURE)
    ]
    assert unwanted == []


def test_import_saliency_loads_no_torch_until_a_public_name_is_used() -> None:
    assert [m for m in _loaded_by("import saliency") if m.split(".")[0] == "torch"] == []
    used = _loaded_by(
        "import saliency, saliency.explain, saliency.hvp\n"
        "from saliency.explain import explain\n"
        "assert saliency.explain is explain and callable(saliency.hvp), saliency.explain\n"
        "assert saliency.list_methods() and saliency.errors.SaliencyError"
    )
    assert "torch" in used and "saliency.engine" in used


HELP = """
from saliency.cli.main import main
try:
    main({argv!r})
except SystemExit as stop:
    assert stop.code == 0, stop.code
"""


def test_the_command_help_loads_no_torch() -> None:
    loaded = _loaded_by(HELP.format(argv=["--help"]))
    assert [m for m in loaded if m.split(".")[0] in ("torch", "torchvision", "numpy")] == []


def test_explain_help_loads_no_torchvision_captum_or_matplotlib() -> None:
    loaded = _loaded_by(HELP.format(argv=["explain", "--help"]))
    heavy = {"torchvision", "torch._dynamo", "matplotlib", "captum", "scipy", "jinja2"}
    assert sorted(heavy & set(loaded)) == []


def test_loading_a_demo_model_loads_no_runner_gallery_or_training() -> None:
    loaded = _loaded_by('import saliency\nsaliency.load_model("demo:shapes")')
    assert "saliency.demo.models" in loaded
    unwanted = [
        m
        for m in loaded
        if m.startswith(("saliency.gallery", "saliency.cli", "saliency.demo.training"))
        or m in ("saliency.demo.runner", "saliency.demo.report", "saliency.demo.rrr", "matplotlib")
    ]
    assert unwanted == []


def _public_names() -> list[str]:
    """Every name of the four packages' ``__all__``, the console script, and the documented
    paths into the subpackages."""
    import saliency
    import saliency.cli
    import saliency.gallery
    import saliency.methods

    names = []
    for package in (saliency, saliency.methods, saliency.cli, saliency.gallery):
        names += [f"{package.__name__}.{name}" for name in getattr(package, "__all__", [])]
    return [
        *(name for name in names if not name.endswith(".__version__")),
        "saliency.cli.main.main",
        "saliency.demo.run_demo",
        "saliency.demo.DemoSettings",
        "saliency.metrics.evaluate_scenes",
        "saliency.testing.check_method",
        "saliency.models.load_model",
    ]


@pytest.mark.skipif(
    subprocess.run([sys.executable, "-m", "mypy", "--version"], capture_output=True).returncode,
    reason="mypy is not installed (pip install -e '.[test]')",
)
def test_the_type_checker_sees_every_public_name_with_its_real_type(tmp_path: Path) -> None:
    names = _public_names()
    modules = sorted({name.rpartition(".")[0] for name in names})
    probe = tmp_path / "probe.py"
    probe.write_text(
        "".join(f"import {module}\n" for module in modules)
        + "".join(f"reveal_type({name})\n" for name in names),
        encoding="utf-8",
    )
    # As CI runs it: the project's configuration and cache, from the project root; the probe is
    # found beside the package through MYPYPATH (an editable install is invisible to mypy).
    env = {**os.environ, "MYPYPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "pyproject.toml", str(probe)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    revealed = re.findall(r'probe\.py:(\d+): note: Revealed type is "(.*)"', done.stdout)
    assert len(revealed) == len(names), done.stdout + done.stderr
    # Any: the checker could not find or type it; object: a module __getattr__ answered
    unresolved = ("Any", "object", "builtins.object")
    untyped = [names[int(line) - len(modules) - 1] for line, kind in revealed if kind in unresolved]
    assert untyped == []
    assert "error" not in done.stdout, done.stdout
