"""saliency.testing.check_method catches each broken promise of the method contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor

import saliency
from saliency.engine import Engine, Points
from saliency.methods import Method
from saliency.targets import Target
from saliency.testing import check_method

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass(frozen=True)
class GradientTimesInput(Method):
    """Gradient times input, written as a plugin would (the README's example)."""

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        return inputs * engine.accumulate(Points.of(inputs), target)


@dataclass(frozen=True)
class LeavesAHook(GradientTimesInput):
    """Registers a forward hook on the model and never removes it."""

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        model = engine.model
        assert isinstance(model, torch.nn.Module)
        model.register_forward_hook(lambda *args: None)
        return super().attribute(engine, inputs, target)


@dataclass(frozen=True)
class ModifiesTheInputs(GradientTimesInput):
    """Scales the inputs in place (by one: only the version counter shows it)."""

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        with torch.no_grad():
            inputs.mul_(1.0)
        return super().attribute(engine, inputs, target)


@dataclass(frozen=True)
class UsesBackward(Method):
    """Differentiates with ``.backward()``, which accumulates into the parameters' ``.grad``."""

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        x = inputs.detach().requires_grad_(True)
        engine.complete(target)
        model = engine.model
        assert isinstance(model, torch.nn.Module)
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        target.scores(model(x), torch.arange(len(x))).sum().backward()
        assert x.grad is not None
        return x.grad


@dataclass(frozen=True)
class WrongShape(GradientTimesInput):
    """Claims input-space maps but returns one channel."""

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        return super().attribute(engine, inputs, target).sum(1, keepdim=True)


@dataclass(frozen=True)
class NotFinite(GradientTimesInput):
    """Divides by zero."""

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        return super().attribute(engine, inputs, target) / 0.0


@dataclass(frozen=True)
class TrainsTheModel(GradientTimesInput):
    """Puts the model in train mode: its batch norms update their running statistics."""

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        model = engine.model
        assert isinstance(model, torch.nn.Module)
        model.train()
        return super().attribute(engine, inputs, target)


@dataclass(frozen=True)
class TrainsTheDropout(GradientTimesInput):
    """Puts the dropout layers in train mode (no state changes, but random maps)."""

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        model = engine.model
        assert isinstance(model, torch.nn.Module)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.train()
        return super().attribute(engine, inputs, target)


@dataclass(frozen=True)
class IgnoresGivenOptions(GradientTimesInput):
    """Accepts any option name instead of refusing unknown ones."""

    @classmethod
    def create(cls, **options: Any) -> IgnoresGivenOptions:
        return cls()


def test_a_correct_plugin_passes() -> None:
    check_method(GradientTimesInput)


def test_built_in_methods_pass_with_options() -> None:
    check_method(saliency.get_method("integrated_gradients"), {"steps": 2})


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (LeavesAHook, "module hooks"),
        (ModifiesTheInputs, "inputs: modified in place"),
        (UsesBackward, ".grad"),
        (WrongShape, "attributions of shape"),
        (NotFinite, "not finite"),
        (TrainsTheModel, "running_mean: value modified"),
        (TrainsTheDropout, "train mode during the call"),
        (IgnoresGivenOptions, "no InvalidOptionError"),
    ],
)
def test_a_broken_method_is_named_with_what_it_broke(broken: type[Method], message: str) -> None:
    with pytest.raises(AssertionError, match=message) as raised:
        check_method(broken)
    assert broken.__name__ in str(raised.value)
