"""Lifecycle contract of every registered method (in the spirit of captum's test_hook_removal).

:func:`saliency.testing.check_method` proves it: whatever happens during ``saliency.explain`` —
a normal call, a bad target, or a model that raises in the middle of a forward or backward pass —
the model comes back exactly as it was (hooks of every kind, ``training`` flags, parameters'
``requires_grad`` and ``.grad``, buffers and parameter values), the inputs are untouched, the
model runs in eval mode during the call, and the result keeps the output contract. The same
check is available to plugin packages; here it runs for every registered method.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from captum.attr._utils.lrp_rules import EpsilonRule
from torch import Tensor

import saliency
from saliency.testing import CheckModel, check_method, checked_inputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _seeded() -> Iterator[None]:
    torch.manual_seed(0)
    yield


def _lrp_rule(model: CheckModel) -> None:
    # captum's LRP refuses a layer without a rule, and its identity rule fails on a layer that
    # returns its input object; captum deletes the rules it finds, so this one must survive.
    model.trip.rule = EpsilonRule()  # type: ignore[assignment]


def test_method_keeps_the_lifecycle_and_output_contract(
    any_method: str, any_method_options: dict[str, Any]
) -> None:
    prepare = _lrp_rule if any_method == "captum:LRP" else None
    check_method(saliency.get_method(any_method), any_method_options, prepare=prepare)


def test_gradient_of_a_callable_model_is_the_autograd_gradient() -> None:
    generator = torch.Generator().manual_seed(2)
    kernel = torch.randn(4, 3, 3, 3, generator=generator)
    weight = torch.randn(4, 5, generator=generator)

    def model(x: Tensor) -> Tensor:
        return torch.tanh(F.conv2d(x, kernel, padding=1)).mean(dim=(2, 3)) @ weight

    inputs = checked_inputs(False)
    ex = saliency.explain(model, inputs, "gradient", target=[0, 2])
    x = inputs.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(model(x)[[0, 1], [0, 2]].sum(), x)
    torch.testing.assert_close(ex.attributions, expected)
