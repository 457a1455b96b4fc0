"""saliency.explain_many: one shared pass for the one-pass methods, equal to separate calls."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import saliency
from saliency.engine import Engine
from saliency.errors import InvalidOptionError, InvalidTargetError
from saliency.methods.gradcam import GradCAM
from saliency.targets import Target
from saliency.testing import (
    FAILURES,
    TARGET,
    assert_same_state,
    checked_inputs,
    checked_model,
    snapshot,
)

ONE_PASS = ["gradient", "gradcam", "gradient_x_input"]


class Net(nn.Module):
    """A small CNN with an in-place residual add after the hooked layer (as in ResNets)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=True))
        self.block = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Linear(6, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        out = self.block(x)
        out += x  # modifies the hooked layer's output in place
        return self.head(torch.relu(out).mean(dim=(2, 3)))


def _net(dtype: torch.dtype = torch.float32) -> Net:
    torch.manual_seed(0)
    return Net().to(dtype)


def _inputs(n: int = 5, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.randn(n, 3, 9, 9, generator=torch.Generator().manual_seed(3)).to(dtype)


@contextmanager
def _forwards(model: nn.Module) -> Iterator[list[int]]:
    """Counts the model's forward passes (its own forward hook) and their batch sizes."""
    sizes: list[int] = []
    handle = model.register_forward_hook(lambda _m, args, _out: sizes.append(len(args[0])))
    try:
        yield sizes
    finally:
        handle.remove()


def _assert_same(many: saliency.Explanation, alone: saliency.Explanation) -> None:
    assert torch.equal(many.attributions, alone.attributions), many.method
    assert many.attributions.dtype == alone.attributions.dtype
    assert many.method == alone.method and many.options == alone.options
    if alone.targets is None:
        assert many.targets is None
    else:
        assert many.targets is not None and torch.equal(many.targets, alone.targets)
    if alone.outputs is not None:
        assert many.outputs is not None and torch.equal(many.outputs, alone.outputs)


def _pick_second(outputs: Tensor) -> Tensor:
    return outputs[:, 1] - outputs[:, 0]


@pytest.mark.parametrize("target", [None, 2, [0, 1, 2, 3, 0], _pick_second])
@pytest.mark.parametrize("batch_size", [None, 2])
def test_one_pass_methods_equal_separate_calls_bit_for_bit(target: Any, batch_size: Any) -> None:
    model, inputs = _net(), _inputs()
    options = {"batch_size": batch_size, "layer": "block"}
    many = saliency.explain_many(model, inputs, ONE_PASS, target, **options)
    assert list(many) == ONE_PASS
    for name in ONE_PASS:
        own = {k: v for k, v in options.items() if k != "layer" or name == "gradcam"}
        _assert_same(many[name], saliency.explain(model, inputs, name, target, **own))


def test_one_forward_per_chunk_for_three_one_pass_methods() -> None:
    model, inputs = _net(), _inputs()
    with _forwards(model) as shared:
        saliency.explain_many(model, inputs, ONE_PASS, batch_size=2, layer="block")
    # 5 inputs in chunks of 2: the argmax target comes from the same pass (no prediction).
    assert shared == [2, 2, 1]
    with _forwards(model) as separate:
        for name in ONE_PASS:
            layer = {"layer": "block"} if name == "gradcam" else {}
            saliency.explain(model, inputs, name, batch_size=2, **layer)
    assert separate == [2, 2, 1] * 3


def test_the_automatic_layer_is_found_once_then_every_pass_is_shared() -> None:
    model, inputs = _net(), _inputs()
    with _forwards(model) as first:
        saliency.explain_many(model, inputs, ONE_PASS)
    assert first == [1, 5]  # the probe that finds the layer, then the shared pass
    with _forwards(model) as again:
        many = saliency.explain_many(model, inputs, ONE_PASS)
    assert again == [5]
    _assert_same(many["gradcam"], saliency.explain(model, inputs, "gradcam"))


def test_resnet18_layer4_and_the_input_gradient_from_one_pass() -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    inputs = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with _forwards(model) as shared:
        many = saliency.explain_many(model, inputs, ONE_PASS, layer="layer4")
    assert shared == [2]
    for name in ONE_PASS:
        layer = {"layer": "layer4"} if name == "gradcam" else {}
        _assert_same(many[name], saliency.explain(model, inputs, name, **layer))


def test_methods_that_run_their_own_passes_equal_separate_calls() -> None:
    model, inputs = _net(), _inputs(3)
    chosen = {
        "integrated_gradients": {"steps": 4},
        "gradient": {},
        "smoothgrad": {"samples": 3, "seed": 1},
        "gradcam": {"layer": "block"},
    }
    with _forwards(model) as counted:
        many = saliency.explain_many(model, inputs, chosen, batch_size=4)
    # gradient + gradcam: one pass over 3 inputs; IG: 12 points; SmoothGrad: 9 points; the
    # argmax target comes from the shared pass, so neither needs a prediction forward.
    assert counted == [3, 4, 4, 4, 4, 4, 1]
    for name, own in chosen.items():
        _assert_same(many[name], saliency.explain(model, inputs, name, batch_size=4, **own))


def test_a_pending_target_without_shared_methods_is_predicted_once() -> None:
    model, inputs = _net(), _inputs(2)
    with _forwards(model) as counted:
        many = saliency.explain_many(
            model, inputs, ["integrated_gradients", "smoothgrad"], steps=2, samples=2, seed=0
        )
    assert counted == [2, 4, 4]  # one prediction, then the methods' own passes
    assert many["smoothgrad"].targets is not None
    assert torch.equal(many["smoothgrad"].targets, saliency.explain(model, inputs).targets)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_precision_equals_separate_calls(precision: str) -> None:
    model, inputs = _net(), _inputs(3)
    many = saliency.explain_many(model, inputs, ONE_PASS, precision=precision, layer="block")
    for name in ONE_PASS:
        layer = {"layer": "block"} if name == "gradcam" else {}
        alone = saliency.explain(model, inputs, name, precision=precision, **layer)
        _assert_same(many[name], alone)
        assert many[name].attributions.dtype == torch.float32


def test_float64_equals_separate_calls() -> None:
    model, inputs = _net(torch.float64), _inputs(3, torch.float64)
    many = saliency.explain_many(model, inputs, ONE_PASS, layer="block")
    for name in ONE_PASS:
        layer = {"layer": "block"} if name == "gradcam" else {}
        _assert_same(many[name], saliency.explain(model, inputs, name, **layer))
        assert many[name].attributions.dtype == torch.float64


def test_create_graph_keeps_each_graph_and_its_second_derivatives() -> None:
    # Softplus: a ReLU network's input Hessian is zero almost everywhere.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.Softplus(), nn.Conv2d(4, 4, 3), nn.Softplus()
    )
    model.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)))
    options: dict[str, Any] = {"target": 1, "create_graph": True, "layer": "2"}
    inputs = _inputs(2).requires_grad_(True)
    many = saliency.explain_many(model, inputs, ONE_PASS, **options)
    for name in ONE_PASS:
        own = {k: v for k, v in options.items() if k != "layer" or name == "gradcam"}
        alone = saliency.explain(model, inputs, name, **own)
        assert torch.equal(many[name].attributions, alone.attributions)
        assert many[name].attributions.requires_grad
        # The explanations share one graph: keep it for the next method's derivative.
        (shared_second,) = torch.autograd.grad(
            many[name].attributions.square().sum(), inputs, retain_graph=True
        )
        (alone_second,) = torch.autograd.grad(alone.attributions.square().sum(), inputs)
        assert shared_second.abs().sum() > 0
        torch.testing.assert_close(shared_second, alone_second, rtol=0, atol=0)


@pytest.mark.parametrize("create_graph", [False, True])
@pytest.mark.parametrize("inputs_require_grad", [False, True])
def test_model_and_inputs_are_left_as_they_were(
    create_graph: bool, inputs_require_grad: bool
) -> None:
    model = checked_model()
    inputs = checked_inputs(inputs_require_grad)
    before = snapshot(model, inputs)
    many = saliency.explain_many(
        model,
        inputs,
        [*ONE_PASS, "integrated_gradients"],
        TARGET,
        create_graph=create_graph,
        steps=3,
    )
    assert_same_state(before, snapshot(model, inputs), "explain_many")
    assert model.modes and all(not any(modes) for modes in model.modes)
    for ex in many.values():
        assert ex.targets is not None and ex.targets.tolist() == TARGET
        assert ex.attributions.requires_grad == create_graph
        assert bool(torch.isfinite(ex.attributions).all())


@pytest.mark.parametrize("failure", FAILURES)
@pytest.mark.parametrize("create_graph", [False, True])
def test_a_failing_model_leaves_no_hooks_and_its_state_restored(
    failure: str, create_graph: bool
) -> None:
    model, inputs = checked_model(), checked_inputs(create_graph)
    before = snapshot(model, inputs)
    model.trip.mode = failure
    where = "backward" if failure == "backward" else "forward"
    with pytest.raises(RuntimeError, match=f"tripped in {where}"):
        saliency.explain_many(
            model, inputs, ONE_PASS, TARGET, create_graph=create_graph, batch_size=1
        )
    model.trip.mode = None
    assert_same_state(before, snapshot(model, inputs), f"after a failure {failure!r}")
    saliency.explain_many(model, inputs, ONE_PASS, TARGET)
    assert_same_state(before, snapshot(model, inputs), "then a normal call")


def test_an_out_of_range_target_is_refused_by_the_shared_pass() -> None:
    model, inputs = checked_model(), checked_inputs(False)
    before = snapshot(model, inputs)
    with pytest.raises(InvalidTargetError, match="out of range"):
        saliency.explain_many(model, inputs, ONE_PASS, target=99)
    assert_same_state(before, snapshot(model, inputs), "a bad target")


def test_options_apply_to_every_method_that_accepts_them() -> None:
    model, inputs = _net(), _inputs(2)
    many = saliency.explain_many(
        model, inputs, ["gradcam", "integrated_gradients"], layer="block", relu=False, steps=3
    )
    assert many["gradcam"].options == {"layer": "block", "relu": False}
    assert many["integrated_gradients"].options["steps"] == 3
    alone = saliency.explain(model, inputs, "gradcam", layer="block", relu=False)
    _assert_same(many["gradcam"], alone)


def test_a_mapping_gives_each_method_its_own_options_over_the_shared_ones() -> None:
    model, inputs = _net(), _inputs(2)
    many = saliency.explain_many(
        model, inputs, {"gradcam": {"relu": False}, "gradient": {}}, layer="block", relu=True
    )
    assert many["gradcam"].options == {"layer": "block", "relu": False}
    with pytest.raises(InvalidOptionError, match="steps"):
        saliency.explain_many(model, inputs, {"gradient": {"steps": 3}})


def test_bad_method_lists_and_options_are_refused_before_any_work() -> None:
    model, inputs = _net(), _inputs(2)
    with _forwards(model) as counted:
        with pytest.raises(InvalidOptionError, match=r"no method among .* 'stepz'"):
            saliency.explain_many(model, inputs, ["gradient", "gradcam"], stepz=3)
        with pytest.raises(InvalidOptionError, match="did you mean 'steps'"):
            saliency.explain_many(model, inputs, ["integrated_gradients"], stepz=3)
        with pytest.raises(InvalidOptionError, match="given twice"):
            saliency.explain_many(model, inputs, ["gradient", "gradient"])
        with pytest.raises(InvalidOptionError, match="empty"):
            saliency.explain_many(model, inputs, [])
        with pytest.raises(InvalidOptionError, match="instances"):
            saliency.explain_many(model, inputs, [GradCAM()], relu=False)
        with pytest.raises(saliency.errors.SaliencyError, match="no_such"):
            saliency.explain_many(model, inputs, ["gradient", "no_such_method"])
    assert counted == []


def test_method_instances_are_named_from_the_registry() -> None:
    model, inputs = _net(), _inputs(2)
    many = saliency.explain_many(model, inputs, [GradCAM(layer="block", relu=False), "gradient"])
    assert list(many) == ["gradcam", "gradient"]
    alone = saliency.explain(model, inputs, "gradcam", layer="block", relu=False)
    _assert_same(many["gradcam"], alone)


@dataclass(frozen=True)
class _Doubled(GradCAM):
    """A subclass that replaces attribute but inherits GradCAM's share."""

    def attribute(self, engine: Engine, inputs: Tensor, target: Target) -> Tensor:
        return 2 * super().attribute(engine, inputs, target)


def test_a_subclass_replacing_attribute_only_runs_its_own_attribute() -> None:
    model, inputs = _net(), _inputs(2)
    many = saliency.explain_many(model, inputs, [_Doubled(layer="block"), "gradient"])
    cam = saliency.explain(model, inputs, "gradcam", layer="block").attributions
    assert torch.equal(many["_Doubled"].attributions, 2 * cam)


def test_two_layers_and_the_input_gradient_from_one_pass_of_the_engine() -> None:
    model, inputs = _net(), _inputs(3)
    target = saliency.targets.pending_target(None, inputs)
    engine = Engine(model)
    methods = [GradCAM(layer="block"), GradCAM(layer="stem.0"), saliency.get_method("gradient")()]
    with _forwards(model) as counted, torch.enable_grad():
        shares = [method.share(engine, inputs) for method in methods]
        block, stem, gradient = engine.share_pass(inputs, target, shares)
    assert counted == [3]
    assert torch.equal(
        block, saliency.explain(model, inputs, "gradcam", layer="block").attributions
    )
    assert torch.equal(
        stem, saliency.explain(model, inputs, "gradcam", layer="stem.0").attributions
    )
    assert torch.equal(gradient, saliency.explain(model, inputs, "gradient").attributions)


def test_which_methods_share_a_pass() -> None:
    sharing = {
        name
        for name in saliency.list_methods(families=False)
        if saliency.get_method(name).shares_pass()
    }
    assert {"gradient", "gradcam", "gradient_x_input"} <= sharing
    assert not sharing & {"integrated_gradients", "smoothgrad", "guided_gradcam", "deconvnet"}
    assert not _Doubled.shares_pass()
