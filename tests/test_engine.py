"""Tests for saliency.engine: chunking, memory budget, out-of-memory retry, no host sync in the
chunk loop, parameter state, option checks."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import DIFFERENTIABLE_METHODS
from torch import Tensor, nn

import saliency
from saliency import engine as engine_module
from saliency.engine import Engine, EngineOptions, Points, automatic_chunk_size
from saliency.errors import InvalidOptionError, ModelOutputError
from saliency.memory import (
    LARGEST_OUTPUT_COPIES,
    POINT_COPIES,
    SAVED_FACTOR,
    CostMeter,
    available_ram,
    default_memory_budget,
)
from saliency.targets import ClassTarget


class Recorder(nn.Module):
    """A tiny CNN that records each forward: batch size, grad mode, parameters' requires_grad.

    With ``limit`` set, a batch larger than ``limit`` raises a (simulated) CUDA out-of-memory
    error before any work is done.
    """

    def __init__(self, limit: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)
        self.limit = limit
        self.calls: list[tuple[int, bool]] = []
        self.requires_grad_seen: list[tuple[bool, ...]] = []
        self.failures = 0

    def forward(self, x: Tensor) -> Tensor:
        self.requires_grad_seen.append(tuple(p.requires_grad for p in self.parameters()))
        if self.limit is not None and len(x) > self.limit:
            self.failures += 1
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate a batch of {len(x)} (simulated)"
            )
        self.calls.append((len(x), torch.is_grad_enabled()))
        return self.head(torch.tanh(self.conv(x)).mean(dim=(2, 3)))

    def grad_sizes(self) -> list[int]:
        return [size for size, grad in self.calls if grad]

    def no_grad_sizes(self) -> list[int]:
        return [size for size, grad in self.calls if not grad]


def make_inputs(n: int = 3) -> Tensor:
    return torch.randn(n, 3, 6, 6, generator=torch.Generator().manual_seed(1))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- chunking -----------------------------------------------------------------------------------


def test_explicit_batch_size_chunks_integrated_gradients() -> None:
    model = Recorder()
    inputs = make_inputs(3)
    ex = saliency.explain(model, inputs, "integrated_gradients", target=1, steps=7, batch_size=4)
    assert model.no_grad_sizes() == [3]  # the prediction pass
    assert model.grad_sizes() == [4, 4, 4, 4, 4, 1]  # 3 × 7 = 21 points
    reference = saliency.explain(Recorder(), inputs, "integrated_gradients", target=1, steps=7)
    torch.testing.assert_close(ex.attributions, reference.attributions, rtol=1e-5, atol=1e-7)


def test_engine_covers_every_point_exactly_once() -> None:
    model = Recorder()
    inputs = make_inputs(3)
    seen: list[Tensor] = []

    def make(index: Tensor) -> Tensor:
        seen.append(index.clone())
        return inputs[index // 7]

    points = Points(3, 7, inputs.shape[1:], inputs.device, make)
    engine = Engine(model, EngineOptions(batch_size=4))
    total = engine.accumulate(
        points, ClassTarget(torch.tensor([0, 1, 2])), lambda chunk: torch.ones(len(chunk.index), 1)
    )
    assert torch.equal(torch.cat(seen), torch.arange(21))
    assert [len(s) for s in seen] == [4, 4, 4, 4, 4, 1]
    assert torch.equal(total, torch.full((3, 1), 7.0))


def test_automatic_chunk_size_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "automatic_chunk_size", lambda shape, device, **_: 5)
    model = Recorder()
    inputs = make_inputs(3)
    saliency.explain(model, inputs, "integrated_gradients", target=0, steps=7)
    assert model.no_grad_sizes() == [3]
    # The first gradient chunk is the probe whose measured memory sizes the others.
    assert model.grad_sizes() == [2, 5, 5, 5, 4]


def test_automatic_chunking_on_cpu_is_bounded() -> None:
    model = Recorder()
    inputs = make_inputs(3)
    saliency.explain(model, inputs, "integrated_gradients", target=0, steps=50)
    # Tiny points: the measured cost fits the default budget many times; the CPU cap applies.
    chunk = automatic_chunk_size(inputs.shape[1:], inputs.device, 1 << 40, per_point_bytes=1)
    sizes = model.grad_sizes()
    assert sum(sizes) == 150
    assert sizes[0] == 2  # the probe
    assert max(sizes) == chunk
    assert all(size == chunk for size in sizes[1:-1])


def test_automatic_chunk_size_on_cpu() -> None:
    cpu = torch.device("cpu")
    budget = 8 << 30  # the default budget's cap; the default itself depends on the machine
    assert automatic_chunk_size(torch.Size((3, 224, 224)), cpu, memory_budget=budget) == 16
    assert automatic_chunk_size(torch.Size((3, 112, 112)), cpu, memory_budget=budget) == 64
    assert automatic_chunk_size(torch.Size((3, 8, 8)), cpu, memory_budget=budget) == 64
    assert automatic_chunk_size(torch.Size((3, 2000, 2000)), cpu, memory_budget=budget) == 1
    # From a memory budget and a (measured) cost per point; the CPU throughput cap still holds.
    small = torch.Size((3, 8, 8))
    assert automatic_chunk_size(small, cpu, memory_budget=3000, per_point_bytes=1000) == 3
    assert automatic_chunk_size(small, cpu, memory_budget=999, per_point_bytes=1000) == 1
    assert automatic_chunk_size(small, cpu, memory_budget=1 << 40, per_point_bytes=1) == 64


# --- memory budget ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("integrated_gradients", {"steps": 10}),
        ("smoothgrad", {"samples": 5, "seed": 0}),
        ("gradcam", {}),
    ],
)
def test_memory_budget_bounds_chunks(
    method: str, options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = make_inputs(7)
    big_model = Recorder()
    big = saliency.explain(big_model, inputs, method, target=1, memory_budget=1 << 40, **options)
    # A fixed measured cost makes the chunk size exact: budget // cost.
    monkeypatch.setattr(CostMeter, "per_point", lambda self, count: 1000)
    small_model = Recorder()
    small = saliency.explain(small_model, inputs, method, target=1, memory_budget=3000, **options)
    assert max(small_model.grad_sizes()) == 3
    # gradcam's automatic layer search is one point with gradients: no no-grad pass at all.
    assert max(small_model.no_grad_sizes(), default=0) <= 3
    assert max(big_model.grad_sizes()) > 3
    assert sum(small_model.grad_sizes()) == sum(big_model.grad_sizes())
    torch.testing.assert_close(small.attributions, big.attributions, rtol=1e-5, atol=1e-7)


def test_tiny_memory_budget_gives_one_point_chunks() -> None:
    model = Recorder()
    inputs = make_inputs(2)
    ex = saliency.explain(model, inputs, "integrated_gradients", target=0, steps=4, memory_budget=1)
    assert model.no_grad_sizes() == [1, 1]
    assert model.grad_sizes() == [1] * 8
    reference = saliency.explain(Recorder(), inputs, "integrated_gradients", target=0, steps=4)
    torch.testing.assert_close(ex.attributions, reference.attributions, rtol=1e-5, atol=1e-7)


def test_a_batch_that_fits_the_guess_runs_in_one_chunk_without_a_probe() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten())
    calls: list[int] = []
    model.register_forward_pre_hook(lambda _, args: calls.append(len(args[0])))
    engine = Engine(model)
    inputs = make_inputs(4)
    engine.accumulate(Points.of(inputs), ClassTarget(torch.zeros(4, dtype=torch.long)))
    assert calls == [4] and not engine._sizes[inputs.shape[1:]].measured


def test_measured_cost_per_point_grows_with_the_activations() -> None:
    def cost(width: int) -> int:
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        engine = Engine(model, EngineOptions(memory_budget=1 << 40))
        inputs = make_inputs(100)  # more than one guessed chunk: the first chunk is a probe
        engine.accumulate(Points.of(inputs), ClassTarget(torch.zeros(100, dtype=torch.long)))
        sizing = engine._sizes[inputs.shape[1:]]
        assert sizing.measured
        assert engine.chunk_size(inputs.shape[1:]) == sizing.size
        meter = CostMeter(model, inputs.device)
        with meter.measure():
            x = inputs[:2].requires_grad_(True)
            meter.note_points(x)
            model(x)
        return meter.per_point(2)

    narrow, wide = cost(4), cost(64)
    point = 3 * 6 * 6 * 4
    # tanh saves its output, width × 6 × 6 float32 per point (the conv saves its input, the
    # same for both); the largest output is that size too; point-sized tensors come on top.
    assert narrow >= (SAVED_FACTOR + LARGEST_OUTPUT_COPIES) * 4 * 6 * 6 * 4 + POINT_COPIES * point
    assert wide - narrow == (SAVED_FACTOR + LARGEST_OUTPUT_COPIES) * (64 - 4) * 6 * 6 * 4


def test_parameters_are_not_counted_as_per_point_cost() -> None:
    model = nn.Linear(3 * 6 * 6, 5).requires_grad_(False)  # as during a first-order call
    meter = CostMeter(model, torch.device("cpu"))
    with meter.measure():
        x = make_inputs(2).flatten(1).requires_grad_(True)
        meter.note_points(x)
        model(x).sum().backward()
    assert meter.saved_bytes == 0  # the weight is saved for ∂/∂x, but it is the model's own
    largest_output = 5 * 4  # per point
    assert meter.per_point(2) == LARGEST_OUTPUT_COPIES * largest_output + POINT_COPIES * 108 * 4


def test_probe_leaves_no_global_hook_behind() -> None:
    from torch.nn.modules import module as module_module

    before = dict(module_module._global_forward_hooks)
    saliency.explain(Recorder(), make_inputs(2), "integrated_gradients", steps=3)
    with pytest.raises(ModelOutputError):
        saliency.explain(Detaching(), make_inputs(2), "integrated_gradients", steps=3)
    assert dict(module_module._global_forward_hooks) == before


def test_default_memory_budget_on_cpu() -> None:
    budget = default_memory_budget(torch.device("cpu"))
    ram = available_ram()
    assert 0 < budget <= 8 << 30
    if ram is not None:
        assert budget <= ram


@pytest.mark.parametrize("budget", [0, -5, 1.5, True, "1GB"])
def test_bad_memory_budget(budget: Any) -> None:
    with pytest.raises(InvalidOptionError, match="memory_budget") as info:
        EngineOptions(memory_budget=budget)
    assert "positive int" in str(info.value)
    model = Recorder()
    with pytest.raises(InvalidOptionError, match="memory_budget"):
        saliency.explain(model, make_inputs(2), "gradient", memory_budget=budget)
    assert model.calls == []


def test_explicit_batch_size_ignores_memory_budget() -> None:
    model = Recorder()
    saliency.explain(
        model, make_inputs(3), "integrated_gradients", steps=3, batch_size=4, memory_budget=1
    )
    assert model.grad_sizes() == [4, 4, 1]


# --- no host synchronisation in the chunk loop ---------------------------------------------------


_SYNCING = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("gradient", {}),
        ("integrated_gradients", {"steps": 5}),
        ("smoothgrad", {"samples": 3, "seed": 0}),
        ("gradcam", {"layer": "conv"}),
    ],
)
def test_chunk_loop_does_not_synchronise(
    method: str, options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = Recorder()
    inputs = make_inputs(3)
    target = ClassTarget(torch.tensor([0, 1, 2]))
    instance = saliency.get_method(method).create(**options)
    reference = instance.attribute(Engine(model), inputs, target)

    def forbidden(name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"Tensor.{name} called inside the engine's chunk loop")

        return call

    for name in _SYNCING:
        monkeypatch.setattr(Tensor, name, forbidden(name))
    result = instance.attribute(Engine(model, EngineOptions(memory_budget=1 << 30)), inputs, target)
    monkeypatch.undo()
    torch.testing.assert_close(result, reference)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_chunk_loop_does_not_synchronise_on_cuda() -> None:
    model = Recorder().cuda()
    inputs = make_inputs(3).cuda()
    target = ClassTarget(torch.tensor([0, 1, 2], device="cuda"))
    instance = saliency.get_method("integrated_gradients").create(steps=5)
    engine = Engine(model, EngineOptions(batch_size=4))
    instance.attribute(engine, inputs, target)  # warm-up
    torch.cuda.set_sync_debug_mode("error")
    try:
        instance.attribute(engine, inputs, target)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# --- out of memory ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("integrated_gradients", {"steps": 7}),
        ("gradient", {}),
        ("smoothgrad", {"samples": 4, "seed": 0}),
    ],
)
def test_out_of_memory_halves_automatic_chunk(method: str, options: dict[str, Any]) -> None:
    inputs = make_inputs(3)
    reference_model = Recorder()
    reference = saliency.explain(reference_model, inputs, method, target=2, **options)
    assert reference_model.failures == 0

    model = Recorder(limit=2)
    ex = saliency.explain(model, inputs, method, target=2, **options)
    assert model.failures > 0
    assert all(size <= 2 for size, _ in model.calls)
    torch.testing.assert_close(ex.attributions, reference.attributions, rtol=1e-5, atol=1e-7)


def test_out_of_memory_in_prediction_pass_halves_too() -> None:
    # Integrated gradients needs the predicted classes before its path points: a no-grad pass.
    inputs = make_inputs(8)
    model = Recorder(limit=3)
    ex = saliency.explain(model, inputs, "integrated_gradients", steps=2)
    assert model.failures > 0
    assert model.no_grad_sizes() == [2, 2, 2, 2]
    reference = saliency.explain(Recorder(), inputs, "integrated_gradients", steps=2)
    assert ex.targets is not None and reference.targets is not None
    assert torch.equal(ex.targets, reference.targets)
    torch.testing.assert_close(ex.attributions, reference.attributions)


def test_out_of_memory_propagates_with_explicit_batch_size() -> None:
    model = Recorder(limit=5)
    with pytest.raises(torch.OutOfMemoryError, match="simulated"):
        saliency.explain(model, make_inputs(3), "integrated_gradients", steps=7, batch_size=8)
    assert model.failures == 1
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_out_of_memory_at_chunk_size_one_propagates() -> None:
    model = Recorder(limit=0)
    with pytest.raises(torch.OutOfMemoryError):
        saliency.explain(model, make_inputs(2), "gradient")
    assert model.training


# --- parameter state during the call ------------------------------------------------------------


def test_parameters_frozen_during_first_order_call(
    method: str, method_options: dict[str, Any]
) -> None:
    model = Recorder()
    model.conv.bias.requires_grad_(False)
    before = [p.requires_grad for p in model.parameters()]
    saliency.explain(model, make_inputs(2), method, **method_options)
    assert model.requires_grad_seen
    assert all(not any(seen) for seen in model.requires_grad_seen)
    assert [p.requires_grad for p in model.parameters()] == before
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method", DIFFERENTIABLE_METHODS)
def test_parameters_keep_requires_grad_with_create_graph(
    method: str, method_options: dict[str, Any]
) -> None:
    model = Recorder()
    model.conv.bias.requires_grad_(False)
    before = tuple(p.requires_grad for p in model.parameters())
    saliency.explain(model, make_inputs(2), method, create_graph=True, **method_options)
    assert model.requires_grad_seen
    assert all(seen == before for seen in model.requires_grad_seen)
    assert tuple(p.requires_grad for p in model.parameters()) == before
    assert all(p.grad is None for p in model.parameters())


# --- option checks ------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, False, "4"])
def test_bad_batch_size(batch_size: Any) -> None:
    with pytest.raises(InvalidOptionError, match="batch_size") as info:
        EngineOptions(batch_size=batch_size)
    assert "positive int" in str(info.value)
    model = Recorder()
    with pytest.raises(InvalidOptionError, match="batch_size"):
        saliency.explain(model, make_inputs(2), "gradient", batch_size=batch_size)
    assert model.calls == []


@pytest.mark.parametrize("precision", ["fp64", "float32", "FP32", None, 16])
def test_bad_precision(precision: Any) -> None:
    with pytest.raises(InvalidOptionError, match="precision") as info:
        EngineOptions(precision=precision)
    assert "'fp32'" in str(info.value) and "'bf16'" in str(info.value)
    model = Recorder()
    with pytest.raises(InvalidOptionError, match="precision"):
        saliency.explain(model, make_inputs(2), "gradient", precision=precision)
    assert model.calls == []


@pytest.mark.parametrize("create_graph", ["yes", 1, None])
def test_bad_create_graph(create_graph: Any) -> None:
    with pytest.raises(InvalidOptionError, match="create_graph"):
        saliency.explain(Recorder(), make_inputs(2), "gradient", create_graph=create_graph)


def test_bf16_precision_returns_float32() -> None:
    inputs = make_inputs(2)
    ex = saliency.explain(Recorder(), inputs, "gradient", target=0, precision="bf16")
    reference = saliency.explain(Recorder(), inputs, "gradient", target=0)
    assert ex.attributions.dtype == torch.float32
    torch.testing.assert_close(ex.attributions, reference.attributions, rtol=0.1, atol=0.02)


# --- model output errors ------------------------------------------------------------------------


class Detaching(Recorder):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x).detach()


def test_detached_output_raises_model_output_error(
    any_method: str, any_method_options: dict[str, Any]
) -> None:
    # Every registered method, captum's included (a gradient captum method on a model that cuts
    # the graph raises the same error).
    method, method_options = any_method, any_method_options
    # 8×8 inputs: the size the fast options are made for (captum's feature masks, baselines).
    inputs = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    model = Detaching()
    if saliency.get_method(method).derivative_order == 0:
        # Forward passes only (Score-CAM, captum:Occlusion, ...): a model without gradients is
        # fine.
        ex = saliency.explain(model, inputs, method, **method_options)
        assert torch.isfinite(ex.attributions).all()
        assert model.training
        return
    with pytest.raises(ModelOutputError) as info:
        saliency.explain(model, inputs, method, **method_options)
    message = str(info.value)
    assert "differentiable" in message
    assert ".detach()" in message
    assert model.training
    assert all(p.requires_grad for p in model.parameters())


class WrongShape(Recorder):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x)[:, :, None]


def test_output_of_wrong_shape_raises() -> None:
    with pytest.raises(ModelOutputError, match=r"\(2, K\)"):
        saliency.explain(WrongShape(), make_inputs(2), "gradient")


@pytest.mark.parametrize(
    "output",
    [lambda y: {"scores": y}, lambda y: (None, y), lambda y: "logits"],
    ids=["dict without logits", "tuple led by no tensor", "string"],
)
def test_output_without_class_scores_needs_a_callable_target(output: Any) -> None:
    # Logits, dicts with "logits" and tuples led by (N, K) take class targets (see
    # test_token_models); anything else is refused before any gradient work.
    with pytest.raises(ModelOutputError, match="callable target"):
        saliency.explain(lambda x: output(x.mean((2, 3))), make_inputs(2), "gradient")


# --- forwards per call --------------------------------------------------------------------------


@pytest.mark.parametrize("target", [None, 2, [0, 1, 2]], ids=["argmax", "int", "list"])
@pytest.mark.parametrize("method", ["gradient", "gradcam"])
def test_a_single_pass_method_runs_one_forward(method: str, target: Any) -> None:
    # The pass at the inputs is also the prediction: no separate no-grad forward.
    inputs = make_inputs(3)
    model = Recorder()
    options = {"layer": "conv"} if method == "gradcam" else {}
    saliency.explain(model, inputs, method, target, **options)
    assert model.calls == [(3, True)]


def test_outputs_and_targets_of_the_pass_match_a_prediction() -> None:
    inputs = make_inputs(5)
    model = Recorder()
    ex = saliency.explain(model, inputs, "gradient", batch_size=2)
    assert model.calls == [(2, True), (2, True), (1, True)]
    with torch.no_grad():
        expected = model(inputs)
    assert ex.outputs is not None and ex.targets is not None
    torch.testing.assert_close(ex.outputs, expected)
    assert torch.equal(ex.targets, expected.argmax(dim=1))


def test_path_methods_predict_once(method: str = "integrated_gradients") -> None:
    for target in (None, 1):
        model = Recorder()
        ex = saliency.explain(model, make_inputs(3), method, target, steps=4)
        assert model.no_grad_sizes() == [3]
        assert model.grad_sizes() == [12]
        assert ex.outputs is not None and ex.outputs.shape == (3, 3)


def test_automatic_layer_is_found_once_per_model_and_shape() -> None:
    model = Recorder()
    inputs = make_inputs(3)
    first = saliency.explain(model, inputs, "gradcam", 1)
    # The layer search (one point, with gradients: which layers reach the target), then the pass.
    assert model.calls == [(1, True), (3, True)]
    model.calls.clear()
    again = saliency.explain(model, inputs, "gradcam", 1)
    assert model.calls == [(3, True)]
    torch.testing.assert_close(again.attributions, first.attributions)
    model.calls.clear()
    saliency.explain(model, torch.randn(2, 3, 8, 8), "gradcam", 1)
    assert model.calls == [(1, True), (2, True)]  # a new input shape searches again
    # A replaced submodule is not taken from the cache.
    model.conv = nn.Conv2d(3, 4, 3, padding=1)
    model.calls.clear()
    saliency.explain(model, inputs, "gradcam", 1)
    assert model.calls == [(1, True), (3, True)]


def test_per_sample_sums_add_in_place_unless_a_graph_is_kept() -> None:
    from saliency.engine import _add_rows

    total = torch.zeros(3, 2)
    samples = torch.tensor([0, 0, 2])
    part = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    assert _add_rows(total, samples, part) is total  # no copy of the whole total per chunk
    assert total.tolist() == [[4.0, 6.0], [0.0, 0.0], [5.0, 6.0]]
    weights = torch.ones(3, 2, requires_grad=True)
    summed = _add_rows(torch.zeros(3, 2), samples, part * weights)
    assert summed.requires_grad
    (gradient,) = torch.autograd.grad(summed.sum(), weights)
    assert torch.equal(gradient, part)
