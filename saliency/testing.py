"""The contract every method must keep, as a check that any package can run on its methods.

:func:`check_method` runs a method on a small CNN in a deliberately awkward state (modules in
mixed train/eval modes, frozen parameters, pre-existing ``.grad`` tensors, user hooks of every
kind, BatchNorm running statistics) and checks, for normal calls, bad targets and a model that
raises in the middle of a forward or backward pass:

- the model runs in eval mode during the call, and afterwards its ``training`` flags, every
  parameter's ``requires_grad`` and ``.grad`` (value and identity), its buffers, parameter values
  and hooks (module, global and tensor hooks) are exactly as before; the inputs are untouched;
- the result keeps the output contract: ``(N, C, H, W)`` for input-space methods and
  ``(N, 1, H, W)`` for layer methods, in the inputs' dtype (float32 also under bf16 precision) and
  on their device, finite, with the resolved targets, and the same again on a second call;
- with ``create_graph=True`` the attributions carry their autograd graph;
- a model that is a plain callable works (input-space methods) or is refused with
  :class:`~saliency.errors.LayerNotFoundError` (layer methods);
- an option name the method does not have is refused with
  :class:`~saliency.errors.InvalidOptionError`.

>>> from saliency.testing import check_method
>>> check_method(MyMethod, {"steps": 4})        # raises AssertionError naming what broke

This module is not imported by ``import saliency``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as module_globals

from saliency.errors import InvalidOptionError, InvalidTargetError, LayerNotFoundError
from saliency.explain import explain
from saliency.explanation import Explanation
from saliency.methods.base import Method

__all__ = [
    "CheckModel",
    "assert_same_state",
    "check_method",
    "checked_inputs",
    "checked_model",
    "snapshot",
]

NUM_CLASSES = 5
"""Outputs of :class:`CheckModel`."""
TARGET = [1, 3]
"""The classes explained for the two inputs of :func:`checked_inputs`."""
FAILURES = ("first", "later", "grad", "backward")
"""Where :class:`Trip` makes the model raise (see there)."""
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


class CheckModel(nn.Module):
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


def checked_model(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> CheckModel:
    """A :class:`CheckModel` in a deliberately unusual state that a method must leave alone."""
    torch.manual_seed(0)
    model = CheckModel().to(device=device, dtype=dtype)
    for bn in (model.features[1], model.features[5]):
        assert isinstance(bn, nn.BatchNorm2d)
        assert bn.running_mean is not None and bn.running_var is not None
        assert bn.num_batches_tracked is not None
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.num_batches_tracked.fill_(7)
    # Mixed modes: most modules train, some are in eval.
    model.train()
    model.features[5].eval()
    model.dropout.eval()
    # Frozen parameters, one of them with a .grad.
    first, norm = model.features[0], model.features[1]
    assert isinstance(first, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)
    first.weight.requires_grad_(False)
    norm.bias.requires_grad_(False)
    first.weight.grad = torch.randn_like(first.weight)
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


def checked_inputs(
    requires_grad: bool, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Tensor:
    """Two 3×8×8 inputs; with ``requires_grad`` a leaf with a ``.grad`` and a hook of its own."""
    inputs = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    inputs = inputs.to(device=device, dtype=dtype)
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
    """Everything about ``model`` and ``inputs`` that a method must leave as it was."""
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


def assert_same_state(before: dict[str, Any], after: dict[str, Any], context: str = "") -> None:
    """Raise AssertionError naming the first difference between two :func:`snapshot` results."""
    where = f"{context}: " if context else ""
    _expect(after["global_hooks"] == before["global_hooks"], f"{where}global hooks changed")
    _expect(after["modules"] == before["modules"], f"{where}module hooks or training flags changed")
    for kind in ("parameters", "buffers"):
        _expect(after[kind].keys() == before[kind].keys(), f"{where}{kind} were added or removed")
        for name, old in before[kind].items():
            _same_tensor_state(f"{where}{kind[:-1]} {name}", old, after[kind][name])
    _same_tensor_state(f"{where}inputs", before["inputs"], after["inputs"])


def _same_tensor_state(what: str, old: dict[str, Any], new: dict[str, Any]) -> None:
    _expect(new["requires_grad"] == old["requires_grad"], f"{what}: requires_grad changed")
    _expect(new["grad"] is old["grad"], f"{what}: .grad replaced (was {type(old['grad'])})")
    if old["grad_value"] is not None:
        _expect(torch.equal(new["grad_value"], old["grad_value"]), f"{what}: .grad modified")
    _expect(torch.equal(new["value"], old["value"]), f"{what}: value modified")
    _expect(new["version"] == old["version"], f"{what}: modified in place")
    _expect(new["hooks"] == old["hooks"], f"{what}: tensor hooks changed")


def _expect(condition: bool, message: str) -> None:
    # An explicit raise, not ``assert``: the checks must also run under ``python -O``.
    if not condition:
        raise AssertionError(message)


@contextmanager
def _raises(kind: type[BaseException], text: str, context: str) -> Iterator[None]:
    try:
        yield
    except kind as error:
        _expect(text in str(error), f"{context}: {kind.__name__} {error!r} does not say {text!r}")
    else:
        raise AssertionError(f"{context}: no {kind.__name__} was raised")


def check_method(
    method: type[Method],
    options: Mapping[str, Any] | None = None,
    *,
    device: str | torch.device = "cpu",
    prepare: Callable[[CheckModel], None] | None = None,
) -> None:
    """Check that ``method`` keeps the lifecycle and output contract of every method.

    A method that declares ``supports_create_graph = False`` must refuse ``create_graph=True``
    before any work; one of derivative order 0 (perturbation methods) runs no backward pass, so
    a model that fails only in backward passes does not trip it.

    Args:
        method: the method class (registered or not).
        options: its options for every call; small values keep the check fast
            (e.g. ``{"steps": 3}``).
        device: where the model and inputs live.
        prepare: called on every test model before use (e.g. to give a custom layer the rule
            a propagation method needs); whatever it sets must survive each call.

    Raises:
        AssertionError: a broken promise, named with the call that broke it.
    """
    given = dict(options or {})

    def make() -> Method:
        return method.create(**given)

    def model_on(device: str | torch.device, dtype: torch.dtype = torch.float32) -> CheckModel:
        model = checked_model(device, dtype)
        if prepare is not None:
            prepare(model)
        return model

    name = method.__name__
    for create_graph in (False, True):
        for inputs_require_grad in (False, True):
            context = (
                f"{name}: a call with create_graph={create_graph}, inputs "
                + ("that are a leaf with a .grad" if inputs_require_grad else "without grad")
            )
            _check_normal_call(
                make, model_on, method, create_graph, inputs_require_grad, device, context
            )
    for target in (NUM_CLASSES, -1, [0, NUM_CLASSES + 3]):
        _check_bad_target(make, model_on, target, device, f"{name}: target={target!r}")
    for create_graph in (False, True):
        for failure in FAILURES:
            context = f"{name}: a model failing {failure!r} with create_graph={create_graph}"
            _check_model_failure(make, model_on, method, failure, create_graph, device, context)
    _check_dtypes(make, model_on, method, device, name)
    _check_callable_model(make, method, device, f"{name}: a callable model")
    _check_option_names(method, f"{name}: an unknown option")


def _check_normal_call(
    make: Callable[[], Method],
    model_on: Callable[..., CheckModel],
    method: type[Method],
    create_graph: bool,
    inputs_require_grad: bool,
    device: str | torch.device,
    context: str,
) -> None:
    model = model_on(device)
    inputs = checked_inputs(inputs_require_grad, device)
    before = snapshot(model, inputs)
    if create_graph and not method.supports_create_graph:
        with _raises(InvalidOptionError, "create_graph", context):
            explain(model, inputs, make(), target=TARGET, create_graph=True)
        assert_same_state(before, snapshot(model, inputs), context)
        _expect(not model.modes, f"{context}: create_graph was refused only after some work")
        return
    ex = explain(model, inputs, make(), target=TARGET, create_graph=create_graph)
    assert_same_state(before, snapshot(model, inputs), context)
    _expect(bool(model.modes), f"{context}: the model was never called")
    _expect(
        all(not any(modes) for modes in model.modes),
        f"{context}: a module was in train mode during the call",
    )
    _check_output(ex, inputs, method, context)
    if create_graph:
        _expect(
            ex.attributions.requires_grad,
            f"{context}: the attributions carry no autograd graph",
        )
    # The same call again gives the same result: no state leaked into the model.
    again = explain(model, inputs, make(), target=TARGET, create_graph=create_graph)
    _expect(
        torch.allclose(again.attributions, ex.attributions),
        f"{context}: a second identical call gave different attributions",
    )


def _check_output(ex: Explanation, inputs: Tensor, method: type[Method], context: str) -> None:
    n, _, h, w = inputs.shape
    expected = tuple(inputs.shape) if method.output == "input" else (n, 1, h, w)
    got = ex.attributions
    _expect(
        tuple(got.shape) == expected,
        f"{context}: attributions of shape {tuple(got.shape)}; the contract of "
        f"output={method.output!r} is {expected}",
    )
    _expect(got.dtype == inputs.dtype, f"{context}: {got.dtype} attributions of {inputs.dtype}")
    _expect(got.device == inputs.device, f"{context}: attributions on {got.device}")
    _expect(bool(torch.isfinite(got).all()), f"{context}: attributions that are not finite")
    targets = ex.targets
    _expect(
        targets is not None and targets.dtype == torch.long and targets.tolist() == TARGET,
        f"{context}: targets {targets!r}, expected the given classes {TARGET}",
    )


def _check_bad_target(
    make: Callable[[], Method],
    model_on: Callable[..., CheckModel],
    target: Any,
    device: str | torch.device,
    context: str,
) -> None:
    model = model_on(device)
    inputs = checked_inputs(False, device)
    before = snapshot(model, inputs)
    with _raises(InvalidTargetError, "out of range", context):
        explain(model, inputs, make(), target=target)
    assert_same_state(before, snapshot(model, inputs), context)
    _expect(all(not any(modes) for modes in model.modes), f"{context}: a module was in train mode")


def _check_model_failure(
    make: Callable[[], Method],
    model_on: Callable[..., CheckModel],
    method: type[Method],
    failure: str,
    create_graph: bool,
    device: str | torch.device,
    context: str,
) -> None:
    model = model_on(device)
    inputs = checked_inputs(create_graph, device)
    if method.derivative_order == 0:
        # A forward-only layer method still finds its automatic layer by one gradient probe
        # (which layers reach the target), once per model and input shape: let that happen
        # first, so what is checked below is the method's own passes.
        explain(model, inputs, make(), target=TARGET)
        model.trip.calls = 0
    before = snapshot(model, inputs)
    model.trip.mode = failure
    where = "backward" if failure == "backward" else "forward"

    def call() -> None:
        # One point per chunk: a method that needs a single forward still fails in a later one.
        explain(model, inputs, make(), target=TARGET, create_graph=create_graph, batch_size=1)

    refused = create_graph and not method.supports_create_graph
    if refused:
        with _raises(InvalidOptionError, "create_graph", context):
            call()
    elif method.derivative_order == 0 and (
        failure == "backward" or (failure == "grad" and not create_graph)
    ):
        call()  # forward-only: no backward pass, and no pass with gradients unless create_graph
    else:
        with _raises(RuntimeError, f"tripped in {where}", context):
            call()
    if failure == "later" and not refused:
        _expect(model.trip.calls >= 2, f"{context}: the failure came before a successful forward")
    model.trip.mode = None
    assert_same_state(before, snapshot(model, inputs), context)
    _expect(all(not any(modes) for modes in model.modes), f"{context}: a module was in train mode")
    # The model still works normally afterwards, and its hooks did not pile up.
    explain(model, inputs, make(), target=TARGET)
    assert_same_state(before, snapshot(model, inputs), f"{context}, then a normal call")


def _check_dtypes(
    make: Callable[[], Method],
    model_on: Callable[..., CheckModel],
    method: type[Method],
    device: str | torch.device,
    name: str,
) -> None:
    model = model_on(device, torch.float64)
    inputs = checked_inputs(False, device, torch.float64)
    ex = explain(model, inputs, make(), target=TARGET)
    _check_output(ex, inputs, method, f"{name}: float64 inputs")
    model = model_on(device)
    inputs = checked_inputs(False, device)
    ex = explain(model, inputs, make(), target=TARGET, precision="bf16")
    _expect(
        ex.attributions.dtype == torch.float32,
        f"{name}: bf16 precision gave {ex.attributions.dtype} attributions for float32 inputs",
    )


def _functional_model(device: str | torch.device) -> Callable[[Tensor], Tensor]:
    generator = torch.Generator().manual_seed(2)
    kernel = torch.randn(4, 3, 3, 3, generator=generator).to(device)
    weight = torch.randn(4, NUM_CLASSES, generator=generator).to(device)

    def model(x: Tensor) -> Tensor:
        return torch.tanh(F.conv2d(x, kernel, padding=1)).mean(dim=(2, 3)) @ weight

    return model


def _check_callable_model(
    make: Callable[[], Method], method: type[Method], device: str | torch.device, context: str
) -> None:
    model = _functional_model(device)
    inputs = checked_inputs(False, device)
    if method.output != "input" or method.needs_module:
        with _raises(LayerNotFoundError, "nn.Module", context):
            explain(model, inputs, make())
        return
    ex = explain(model, inputs, make(), target=TARGET)
    _check_output(ex, inputs, method, context)


def _check_option_names(method: type[Method], context: str) -> None:
    with _raises(InvalidOptionError, "no_such_option", context):
        method.create(no_such_option=1)
