"""Tests for the method registry and third-party plugin discovery (entry-point group)."""

from __future__ import annotations

import sys
import textwrap
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from reference_models import tiny_cnn
from torch import Tensor, nn

import saliency
from saliency.errors import DuplicateMethodError, InvalidOptionError, UnknownMethodError
from saliency.methods import registry
from saliency.methods.base import Method

BUILT_INS = {
    "gradient": "saliency.methods.gradient:Gradient",
    "integrated_gradients": "saliency.methods.integrated_gradients:IntegratedGradients",
    "smoothgrad": "saliency.methods.smoothgrad:SmoothGrad",
    "gradcam": "saliency.methods.gradcam:GradCAM",
}

PLUGIN_SOURCE = '''
"""A third-party saliency method plugin."""

from dataclasses import dataclass

from saliency.engine import Points
from saliency.methods.base import Method


@dataclass(frozen=True)
class InputTimesGradient(Method):
    r"""Input times gradient: a_i = x_i * df/dx_i.

    Shrikumar et al. (2016), arXiv:1605.01713.
    """

    paper = "Shrikumar et al. 2016, arXiv:1605.01713"

    def attribute(self, engine, inputs, target):
        return inputs * engine.accumulate(Points.of(inputs), target)
'''


@dataclass(frozen=True)
class Doubled(Method):
    """Twice nothing: a test method."""

    def attribute(self, engine: object, inputs: Tensor, target: object) -> Tensor:
        return torch.zeros_like(inputs)


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An empty, undiscovered registry; the real one comes back after the test."""
    monkeypatch.setattr(registry, "_registry", {})
    monkeypatch.setattr(registry, "_families", {})
    monkeypatch.setattr(registry, "_hidden", set())
    monkeypatch.setattr(registry, "_discovered", False)
    yield


def install_distribution(
    root: Path, name: str, entry_points: dict[str, str], modules: dict[str, str]
) -> None:
    """Write a minimal installed distribution ``name`` (dist-info + modules) into ``root``."""
    info = root / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "\n".join(f"{key} = {value}" for key, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[saliency.methods]\n{lines}\n")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def plugin_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_registry: None
) -> Iterator[Path]:
    """A folder on sys.path for fake distributions; their modules are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("saliency_test_plugin"):
            del sys.modules[name]


def test_list_methods_includes_built_ins() -> None:
    names = saliency.list_methods()
    assert set(BUILT_INS) <= set(names)
    assert names == sorted(names)
    for name, value in BUILT_INS.items():
        module, cls = value.split(":")
        method = saliency.get_method(name)
        assert (method.__module__, method.__qualname__) == (module, cls)
        assert issubclass(method, Method)


def test_unknown_method_lists_names_and_suggests_close_match() -> None:
    with pytest.raises(UnknownMethodError) as info:
        saliency.get_method("integrated_gradient")
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "'integrated_gradient'" in message
    assert "Did you mean 'integrated_gradients'" in message
    for name in saliency.list_methods():
        assert name in message


def test_unknown_method_through_explain() -> None:
    with pytest.raises(UnknownMethodError, match="integrated_gradients"):
        saliency.explain(tiny_cnn(nn.Tanh), torch.rand(1, 3, 4, 4), method="integrated_gradient")


def test_unknown_method_without_close_match_still_lists_names() -> None:
    with pytest.raises(UnknownMethodError) as info:
        saliency.get_method("zzzz")
    assert "Did you mean" not in str(info.value)
    assert "gradcam" in str(info.value)


def test_register_and_unregister() -> None:
    assert "doubled_test" not in saliency.list_methods()
    saliency.register_method(Doubled, name="doubled_test")
    try:
        assert "doubled_test" in saliency.list_methods()
        assert saliency.get_method("doubled_test") is Doubled
        ex = saliency.explain(tiny_cnn(nn.Tanh), torch.rand(2, 3, 4, 4), method="doubled_test")
        assert ex.method == "doubled_test"
        assert torch.equal(ex.attributions, torch.zeros(2, 3, 4, 4))
    finally:
        saliency.unregister_method("doubled_test")
    assert "doubled_test" not in saliency.list_methods()
    with pytest.raises(UnknownMethodError):
        saliency.get_method("doubled_test")
    with pytest.raises(UnknownMethodError):
        saliency.unregister_method("doubled_test")


def test_register_default_name_is_snake_case() -> None:
    @dataclass(frozen=True)
    class SnakeCaseTestMethod(Doubled):
        pass

    saliency.register_method(SnakeCaseTestMethod)
    try:
        assert saliency.get_method("snake_case_test_method") is SnakeCaseTestMethod
    finally:
        saliency.unregister_method("snake_case_test_method")


def test_duplicate_name_raises() -> None:
    with pytest.raises(DuplicateMethodError, match="'gradient'") as info:
        saliency.register_method(Doubled, name="gradient")
    assert isinstance(info.value, ValueError)
    assert saliency.get_method("gradient").__name__ == "Gradient"


def test_duplicate_name_raises_in_decorator_form() -> None:
    with pytest.raises(DuplicateMethodError, match="already registered"):

        @saliency.register_method(name="integrated_gradients")
        @dataclass(frozen=True)
        class Other(Doubled):
            pass

    saliency.register_method(Doubled, name="doubled_twice_test")
    try:
        with pytest.raises(DuplicateMethodError):
            saliency.register_method(name="doubled_twice_test")(Doubled)
    finally:
        saliency.unregister_method("doubled_twice_test")
    assert saliency.get_method("integrated_gradients").__name__ == "IntegratedGradients"


def test_register_rejects_non_methods() -> None:
    with pytest.raises(TypeError, match="Method"):
        saliency.register_method(dict, name="not_a_method")  # type: ignore[type-var]
    assert "not_a_method" not in saliency.list_methods()


def test_plugin_discovered_through_entry_points(plugin_path: Path) -> None:
    install_distribution(
        plugin_path,
        "saliency-test-plugin-gxi",
        {"input_times_gradient": "saliency_test_plugin_gxi:InputTimesGradient"},
        {"saliency_test_plugin_gxi": PLUGIN_SOURCE},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        names = saliency.list_methods()
    assert "input_times_gradient" in names
    assert set(BUILT_INS) <= set(names)

    model = tiny_cnn(nn.Tanh)
    inputs = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    ex = saliency.explain(model, inputs, method="input_times_gradient", target=1)
    assert ex.method == "input_times_gradient"
    gradient = saliency.explain(model, inputs, method="gradient", target=1).attributions
    torch.testing.assert_close(ex.attributions, inputs * gradient)


def test_broken_plugin_warns_instead_of_failing(plugin_path: Path) -> None:
    install_distribution(
        plugin_path,
        "saliency-test-plugin-broken",
        {
            "broken_import": "saliency_test_plugin_broken:Anything",
            "missing_attribute": "saliency_test_plugin_fine:DoesNotExist",
            "not_a_method": "saliency_test_plugin_fine:NotAMethod",
        },
        {
            "saliency_test_plugin_broken": "raise ImportError('plugin dependency missing')\n",
            "saliency_test_plugin_fine": "class NotAMethod:\n    pass\n",
        },
    )
    with pytest.warns(RuntimeWarning) as record:
        names = saliency.list_methods()
    messages = "\n".join(str(w.message) for w in record)
    assert "broken_import" in messages
    assert "plugin dependency missing" in messages
    assert "missing_attribute" in messages
    assert "not_a_method" in messages
    assert set(BUILT_INS) <= set(names)
    assert not {"broken_import", "missing_attribute", "not_a_method"} & set(names)
    # Discovery ran once: asking again neither warns nor changes anything.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert saliency.list_methods() == names


@pytest.mark.parametrize("position", ["first", "last"])
def test_plugin_colliding_with_built_in_warns_and_built_in_wins(
    plugin_path: Path, monkeypatch: pytest.MonkeyPatch, position: str
) -> None:
    """Whatever the order of sys.path (so of discovery), a built-in name stays built in."""
    if position == "last":
        others = [entry for entry in sys.path if entry != str(plugin_path)]
        monkeypatch.setattr(sys, "path", [*others, str(plugin_path)])
    install_distribution(
        plugin_path,
        "saliency-test-plugin-collide",
        {"gradient": "saliency_test_plugin_collide:InputTimesGradient"},
        {"saliency_test_plugin_collide": PLUGIN_SOURCE},
    )
    with pytest.warns(RuntimeWarning, match="gradient") as record:
        names = saliency.list_methods()
    messages = [str(w.message) for w in record]
    assert any("saliency_test_plugin_collide" in m for m in messages), messages
    assert set(BUILT_INS) <= set(names)
    # A third-party package must not be able to replace a built-in method.
    assert saliency.get_method("gradient").__module__ == "saliency.methods.gradient", messages


def test_unknown_option_of_a_method_without_options_says_it_has_none() -> None:
    with pytest.raises(InvalidOptionError) as raised:
        saliency.get_method("gradient").create(steps=5)
    message = str(raised.value)
    assert "no options of its own" in message
    assert "accepted:  " not in message  # never an empty list
    assert "'batch_size'" in message


def test_misspelt_option_suggests_the_close_name() -> None:
    with pytest.raises(InvalidOptionError, match=r"did you mean 'steps'\?"):
        saliency.get_method("integrated_gradients").create(stepz=5)


FAMILY_SOURCE = '''
"""A third-party method family: toyfam:Double and toyfam:Half scale the gradient."""

from dataclasses import dataclass

from saliency.engine import Points
from saliency.methods.base import Method

LOADS = []


def _scaled(factor):
    @dataclass(frozen=True)
    class Scaled(Method):
        """The gradient times a constant."""

        def attribute(self, engine, inputs, target):
            return factor * engine.accumulate(Points.of(inputs), target)

    return Scaled


class Family:
    def __init__(self):
        self.classes = {"Double": _scaled(2.0), "Half": _scaled(0.5)}

    def members(self):
        return tuple(self.classes)

    def method(self, member):
        return self.classes[member]


LOADS.append(1)
FAMILY = Family()
'''


def test_method_family_is_loaded_lazily_from_one_entry_point(plugin_path: Path) -> None:
    install_distribution(
        plugin_path,
        "saliency-test-plugin-family",
        {"toyfam:*": "saliency_test_plugin_family:FAMILY"},
        {"saliency_test_plugin_family": FAMILY_SOURCE},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = saliency.list_methods(families=False)
        saliency.get_method("gradient")
        assert "saliency_test_plugin_family" not in sys.modules  # not needed yet
        names = saliency.list_methods()
    assert {"toyfam:Double", "toyfam:Half"} <= set(names)
    assert not any(name.startswith("toyfam:") for name in plain)
    family_module = sys.modules["saliency_test_plugin_family"]
    assert family_module.LOADS == [1]
    double = saliency.get_method("toyfam:Double")
    assert saliency.get_method("toyfam:Double") is double  # the same class every time
    model = tiny_cnn(nn.Tanh)
    inputs = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    ex = saliency.explain(model, inputs, method="toyfam:Double", target=1)
    gradient = saliency.explain(model, inputs, method="gradient", target=1).attributions
    torch.testing.assert_close(ex.attributions, 2 * gradient)
    with pytest.raises(UnknownMethodError, match="toyfam:Half"):
        saliency.get_method("toyfam:Triple")
    with pytest.raises(DuplicateMethodError, match="toyfam:Half"):
        saliency.register_method(Doubled, name="toyfam:Half")
    saliency.unregister_method("toyfam:Half")
    assert "toyfam:Half" not in saliency.list_methods()
    saliency.register_method(Doubled, name="toyfam:Half")  # the name is free now
    assert saliency.get_method("toyfam:Half") is Doubled


def test_broken_or_colliding_family_warns_and_is_skipped(plugin_path: Path) -> None:
    install_distribution(
        plugin_path,
        "saliency-test-plugin-badfamily",
        {
            "badfam:*": "saliency_test_plugin_badfamily:NOT_A_FAMILY",
            "captum:*": "saliency_test_plugin_badfamily:NOT_A_FAMILY",
        },
        {"saliency_test_plugin_badfamily": "NOT_A_FAMILY = 3\n"},
    )
    with pytest.warns(RuntimeWarning) as record:
        names = saliency.list_methods()
    messages = "\n".join(str(w.message) for w in record)
    assert "'badfam:*'" in messages and "MethodFamily" in messages
    assert "'captum:*'" in messages and "prefix is already taken" in messages
    assert not any(name.startswith("badfam:") for name in names)
    assert saliency.get_method("captum:Saliency").__module__ == "saliency.methods.captum_methods"
