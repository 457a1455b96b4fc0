"""Lifecycle contract of every registered method (in the spirit of captum's test_hook_removal).

Whatever happens during ``saliency.explain`` — a normal call, a bad target, or a model that
raises in the middle of a forward or backward pass — the model comes back exactly as it was:
the same hooks (module, global and tensor hooks), ``training`` flags, parameters'
``requires_grad`` and ``.grad`` (values and identity), buffers and parameter values; the inputs
are untouched; and the model runs in eval mode during the call.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from captum.attr._utils.lrp_rules import EpsilonRule
from fast_options import captum_fast_options
from torch import Tensor, nn
from torch.nn.modules import module as module_globals

import saliency
from saliency.errors import InvalidOptionError, InvalidTargetError, LayerNotFoundError

METHODS = saliency.list_methods()
NUM_CLASSES = 5
# Small option values that keep every call fast; methods not named here use their defaults.
# captum's methods: few samples, four feature groups, seed=0 (see fast_options.py).
FAST_OPTIONS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"steps": 3},
    "smoothgrad": {"samples": 2, "seed": 0},
    "vargrad": {"samples": 2, "seed": 0},
    **captum_fast_options(METHODS, (2, 3, 8, 8)),
}
MODULE_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)
GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_hooks_with_kwargs",
    "_global_forward_hooks_always_called",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)
FAILURES = ("first", "later", "grad", "backward")


def options_for(name: str) -> dict[str, Any]:
    return dict(FAST_OPTIONS.get(name, {}))


def refuses_create_graph(method: str) -> bool:
    return not saliency.get_method(method).supports_create_graph


def trips_on(method: str, failure: str) -> bool:
    """Whether the model's failure mode fires during the method: perturbation methods
    (derivative order 0) run no pass with gradients and no backward pass."""
    return not (
        failure in ("grad", "backward") and saliency.get_method(method).derivative_order == 0
    )


class _RaiseInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        raise RuntimeError("tripped in backward")


class Trip(nn.Module):
    """Identity that raises RuntimeError on demand.

    Modes: ``None`` (never), ``"first"`` (every forward, so the very first one fails),
    ``"later"`` (every forward after the first one succeeded), ``"grad"`` (forwards with
    gradients enabled, i.e. inside a gradient evaluation), ``"backward"`` (in the backward pass).
    """

    def __init__(self) -> None:
        super().__init__()
        self.mode: str | None = None
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        if (
            self.mode == "first"
            or (self.mode == "later" and self.calls > 1)
            or (self.mode == "grad" and torch.is_grad_enabled())
        ):
            raise RuntimeError("tripped in forward")
        if self.mode == "backward":
            return _RaiseInBackward.apply(x)
        return x


class Net(nn.Module):
    """A small CNN with BatchNorm and Dropout; records every module's mode in each forward."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.trip = Trip()
        self.dropout = nn.Dropout(0.5)
        self.head = nn.Linear(8, NUM_CLASSES)
        self.modes: list[tuple[bool, ...]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.modes.append(tuple(m.training for m in self.modules()))
        x = self.pool(self.features(x)).flatten(1)
        return self.head(self.dropout(self.trip(x)))


def _noop_hook(*args: Any, **kwargs: Any) -> None:
    return None


def prepared_model(method: str | None = None) -> Net:
    """A model in a deliberately unusual state that explain must leave alone.

    For ``captum:LRP`` the custom ``Trip`` layer gets captum's ε rule (LRP refuses layers without
    a rule; its identity rule fails on a layer that returns its input object); captum deletes
    the rules it finds, so this one must survive the call.
    """
    torch.manual_seed(0)
    model = Net()
    if method == "captum:LRP":
        model.trip.rule = EpsilonRule()
    for bn in (model.features[1], model.features[5]):
        assert isinstance(bn, nn.BatchNorm2d)
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.num_batches_tracked.fill_(7)
    # Mixed modes: most modules train, some are in eval.
    model.train()
    model.features[5].eval()
    model.dropout.eval()
    # Frozen parameters, one of them with a .grad.
    model.features[0].weight.requires_grad_(False)
    model.features[1].bias.requires_grad_(False)
    model.features[0].weight.grad = torch.randn_like(model.features[0].weight)
    # Pre-existing gradients on trainable parameters.
    model.head.weight.grad = torch.randn_like(model.head.weight)
    model.head.bias.grad = torch.zeros_like(model.head.bias)
    # User hooks of every kind.
    model.features[0].register_forward_hook(_noop_hook)
    model.features[4].register_forward_pre_hook(_noop_hook)
    model.head.register_forward_hook(_noop_hook, with_kwargs=True)
    model.head.register_full_backward_hook(_noop_hook)
    model.head.register_full_backward_pre_hook(_noop_hook)
    model.head.weight.register_hook(_noop_hook)
    return model


def make_inputs(requires_grad: bool) -> Tensor:
    inputs = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    if requires_grad:
        inputs.requires_grad_(True)
        inputs.grad = torch.randn_like(inputs)
        inputs.register_hook(_noop_hook)
    return inputs


def _tensor_hooks(t: Tensor) -> tuple[Any, ...]:
    backward = t._backward_hooks
    post = getattr(t, "_post_accumulate_grad_hooks", None)
    return (
        tuple(backward.keys()) if backward is not None else None,
        tuple(post.keys()) if post is not None else None,
    )


def _tensor_state(t: Tensor) -> dict[str, Any]:
    return {
        "requires_grad": t.requires_grad,
        "grad": t.grad,  # identity is checked separately
        "grad_value": None if t.grad is None else t.grad.detach().clone(),
        "value": t.detach().clone(),
        "version": t._version,
        "hooks": _tensor_hooks(t),
    }


def snapshot(model: nn.Module, inputs: Tensor) -> dict[str, Any]:
    return {
        "global_hooks": {
            name: tuple(getattr(module_globals, name).keys()) for name in GLOBAL_HOOK_DICTS
        },
        "modules": {
            name: {
                "training": m.training,
                **{attr: tuple(getattr(m, attr).keys()) for attr in MODULE_HOOK_DICTS},
            }
            for name, m in model.named_modules()
        },
        "parameters": {name: _tensor_state(p) for name, p in model.named_parameters()},
        "buffers": {name: _tensor_state(b) for name, b in model.named_buffers()},
        "inputs": _tensor_state(inputs),
    }


def assert_same_state(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert after["global_hooks"] == before["global_hooks"], "global module hooks changed"
    assert after["modules"] == before["modules"], "module hooks or training flags changed"
    for kind in ("parameters", "buffers"):
        assert after[kind].keys() == before[kind].keys()
        for name, old in before[kind].items():
            _assert_same_tensor_state(f"{kind[:-1]} {name}", old, after[kind][name])
    _assert_same_tensor_state("inputs", before["inputs"], after["inputs"])


def _assert_same_tensor_state(what: str, old: dict[str, Any], new: dict[str, Any]) -> None:
    assert new["requires_grad"] == old["requires_grad"], f"{what}: requires_grad changed"
    assert new["grad"] is old["grad"], f"{what}: .grad replaced (was {type(old['grad'])})"
    if old["grad_value"] is not None:
        assert torch.equal(new["grad_value"], old["grad_value"]), f"{what}: .grad modified"
    assert torch.equal(new["value"], old["value"]), f"{what}: value modified"
    assert new["version"] == old["version"], f"{what}: modified in place"
    assert new["hooks"] == old["hooks"], f"{what}: tensor hooks changed"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _seeded() -> Iterator[None]:
    torch.manual_seed(0)
    yield


@pytest.mark.parametrize("inputs_require_grad", [False, True], ids=["plain", "leaf_with_grad"])
@pytest.mark.parametrize("create_graph", [False, True], ids=["first_order", "create_graph"])
@pytest.mark.parametrize("method", METHODS)
def test_normal_call_leaves_model_and_inputs_as_before(
    method: str, create_graph: bool, inputs_require_grad: bool
) -> None:
    model = prepared_model(method)
    inputs = make_inputs(inputs_require_grad)
    before = snapshot(model, inputs)
    if create_graph and refuses_create_graph(method):
        with pytest.raises(InvalidOptionError, match="create_graph"):
            saliency.explain(
                model, inputs, method, target=[1, 3], create_graph=True, **options_for(method)
            )
        assert_same_state(before, snapshot(model, inputs))
        assert not model.modes, "create_graph must be refused before any work"
        return

    ex = saliency.explain(
        model, inputs, method, target=[1, 3], create_graph=create_graph, **options_for(method)
    )

    assert_same_state(before, snapshot(model, inputs))
    assert model.modes, "the model was never called"
    assert all(not any(modes) for modes in model.modes), "a module was in train mode in a call"
    assert ex.attributions.shape[0] == len(inputs)
    assert torch.isfinite(ex.attributions).all()
    # The same call again gives the same result: no state leaked into the model.
    again = saliency.explain(
        model, inputs, method, target=[1, 3], create_graph=create_graph, **options_for(method)
    )
    torch.testing.assert_close(again.attributions, ex.attributions)


@pytest.mark.parametrize("target", [NUM_CLASSES, -1, [0, NUM_CLASSES + 3]])
@pytest.mark.parametrize("method", METHODS)
def test_bad_target_leaves_model_as_before(method: str, target: Any) -> None:
    model = prepared_model(method)
    inputs = make_inputs(False)
    before = snapshot(model, inputs)

    with pytest.raises(InvalidTargetError, match="out of range"):
        saliency.explain(model, inputs, method, target=target, **options_for(method))

    assert_same_state(before, snapshot(model, inputs))
    assert all(not any(modes) for modes in model.modes)


@pytest.mark.parametrize("create_graph", [False, True], ids=["first_order", "create_graph"])
@pytest.mark.parametrize("failure", FAILURES)
@pytest.mark.parametrize("method", METHODS)
def test_model_failure_leaves_model_as_before(
    method: str, failure: str, create_graph: bool
) -> None:
    model = prepared_model(method)
    inputs = make_inputs(create_graph)
    before = snapshot(model, inputs)
    model.trip.mode = failure

    def call() -> None:
        saliency.explain(
            model,
            inputs,
            method,
            target=[1, 3],
            create_graph=create_graph,
            batch_size=1,
            **options_for(method),
        )

    # One point per chunk: a method that needs a single forward still fails in a later one.
    if create_graph and refuses_create_graph(method):
        with pytest.raises(InvalidOptionError, match="create_graph"):
            call()
    elif trips_on(method, failure):
        with pytest.raises(
            RuntimeError, match=f"tripped in {'backward' if failure == 'backward' else 'forward'}"
        ):
            call()
    else:
        call()

    if failure == "later" and not (create_graph and refuses_create_graph(method)):
        assert model.trip.calls >= 2, "the failure should happen after a successful forward"
    model.trip.mode = None
    assert_same_state(before, snapshot(model, inputs))
    assert all(not any(modes) for modes in model.modes)
    # The model still works normally afterwards, and its hooks did not pile up.
    saliency.explain(model, inputs, method, target=[1, 3], **options_for(method))
    assert_same_state(before, snapshot(model, inputs))


def _functional_model() -> Any:
    generator = torch.Generator().manual_seed(2)
    kernel = torch.randn(4, 3, 3, 3, generator=generator)
    weight = torch.randn(4, NUM_CLASSES, generator=generator)

    def model(x: Tensor) -> Tensor:
        return torch.tanh(F.conv2d(x, kernel, padding=1)).mean(dim=(2, 3)) @ weight

    return model


@pytest.mark.parametrize("method", METHODS)
def test_callable_model(method: str) -> None:
    model = _functional_model()
    inputs = make_inputs(False)
    cls = saliency.get_method(method)
    if cls.output != "input" or cls.needs_module:
        with pytest.raises(LayerNotFoundError, match=r"nn\.Module"):
            saliency.explain(model, inputs, method, **options_for(method))
        return
    ex = saliency.explain(model, inputs, method, target=[0, 2], **options_for(method))
    assert ex.attributions.shape == inputs.shape
    assert torch.isfinite(ex.attributions).all()
    assert ex.targets is not None
    assert ex.targets.tolist() == [0, 2]
    if method == "gradient":
        x = inputs.clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(model(x)[[0, 1], [0, 2]].sum(), x)
        torch.testing.assert_close(ex.attributions, expected)
