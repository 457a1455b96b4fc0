"""Model sources from the ``saliency.model_sources`` entry-point group (the ``demo:`` source is
one), loaded on first use."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

import saliency
from saliency import models
from saliency.errors import ModelLoadError


@pytest.fixture
def fresh_sources(monkeypatch: pytest.MonkeyPatch) -> list[EntryPoint]:
    """An empty registry that discovers the returned entry points (instead of the installed)."""
    found: list[EntryPoint] = []

    def discovered(group: str) -> list[EntryPoint]:
        return [entry_point for entry_point in found if entry_point.group == group]

    monkeypatch.setattr(models, "_SOURCES", {})
    monkeypatch.setattr(models, "_discovered", False)
    monkeypatch.setattr(models, "entry_points", discovered)
    return found


def test_the_demo_source_is_the_installed_entry_point() -> None:
    from importlib.metadata import entry_points

    (demo,) = [e for e in entry_points(group=models.MODEL_SOURCE_GROUP) if e.name == "demo"]
    assert demo.value == "saliency.demo.models:load_demo"
    assert "demo" in saliency.models.list_model_sources()


def test_an_entry_point_is_loaded_when_a_model_of_it_is(fresh_sources: list[EntryPoint]) -> None:
    group = models.MODEL_SOURCE_GROUP
    fresh_sources.append(EntryPoint("demo-again", "saliency.demo.models:load_demo", group))
    assert models.list_model_sources() == ("demo-again",)
    assert isinstance(models._SOURCES["demo-again"], EntryPoint)  # listed, not imported
    loaded = saliency.load_model("demo-again:shapes", weights=None)
    assert type(loaded.model).__name__ == "ShapesNet"
    assert not isinstance(models._SOURCES["demo-again"], EntryPoint)


def test_a_broken_entry_point_names_itself(fresh_sources: list[EntryPoint]) -> None:
    group = models.MODEL_SOURCE_GROUP
    fresh_sources.append(EntryPoint("broken", "no_such_package.sources:load", group))
    with pytest.raises(ModelLoadError, match=r"'broken' \(no_such_package.sources:load\) failed"):
        saliency.load_model("broken:x")


def test_an_entry_point_cannot_take_a_registered_prefix(fresh_sources: list[EntryPoint]) -> None:
    group = models.MODEL_SOURCE_GROUP
    fresh_sources.append(EntryPoint("bad prefix", "x:y", group))
    with pytest.warns(RuntimeWarning, match="'bad prefix'"):
        assert models.list_model_sources() == ()
    with pytest.raises(ModelLoadError, match="already registered"):
        models.register_model_source("dup", lambda name, weights: saliency.load_model(name))
        models.register_model_source("dup", lambda name, weights: saliency.load_model(name))


def test_a_source_name_is_dispatched_without_the_torchvision_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_torchvision() -> None:
        raise AssertionError("torchvision's model names were read")

    monkeypatch.setattr(models, "_torchvision", no_torchvision)
    loaded = saliency.load_model("demo:shapes", weights=None)
    assert type(loaded.model).__name__ == "ShapesNet"
