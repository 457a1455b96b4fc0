"""Tests for saliency.engine: chunking, out-of-memory retry, parameter state, option checks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import saliency
from saliency import engine as engine_module
from saliency.engine import Engine, Points, automatic_chunk_size
from saliency.errors import InvalidOptionError, ModelOutputError
from saliency.targets import ClassTarget

METHODS = saliency.list_methods()


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


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    engine = Engine(model, batch_size=4)
    total = engine.accumulate(
        points, ClassTarget(torch.tensor([0, 1, 2])), lambda chunk: torch.ones(len(chunk.index), 1)
    )
    assert torch.equal(torch.cat(seen), torch.arange(21))
    assert [len(s) for s in seen] == [4, 4, 4, 4, 4, 1]
    assert torch.equal(total, torch.full((3, 1), 7.0))


def test_automatic_chunk_size_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "automatic_chunk_size", lambda shape, device: 5)
    model = Recorder()
    inputs = make_inputs(3)
    saliency.explain(model, inputs, "integrated_gradients", target=0, steps=7)
    assert model.no_grad_sizes() == [3]
    assert model.grad_sizes() == [5, 5, 5, 5, 1]


def test_automatic_chunking_on_cpu_is_bounded() -> None:
    model = Recorder()
    inputs = make_inputs(3)
    saliency.explain(model, inputs, "integrated_gradients", target=0, steps=50)
    chunk = automatic_chunk_size(inputs.shape[1:], inputs.device)
    sizes = model.grad_sizes()
    assert sum(sizes) == 150
    assert max(sizes) == chunk
    assert all(size == chunk for size in sizes[:-1])


def test_automatic_chunk_size_on_cpu() -> None:
    cpu = torch.device("cpu")
    assert automatic_chunk_size(torch.Size((3, 224, 224)), cpu) == 16
    assert automatic_chunk_size(torch.Size((3, 8, 8)), cpu) == 64
    assert automatic_chunk_size(torch.Size((3, 2000, 2000)), cpu) == 1


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
    inputs = make_inputs(8)
    model = Recorder(limit=3)
    ex = saliency.explain(model, inputs, "gradient")
    assert model.failures > 0
    assert model.no_grad_sizes() == [2, 2, 2, 2]
    reference = saliency.explain(Recorder(), inputs, "gradient")
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


@pytest.mark.parametrize("method", METHODS)
def test_parameters_frozen_during_first_order_call(method: str) -> None:
    model = Recorder()
    model.conv.bias.requires_grad_(False)
    before = [p.requires_grad for p in model.parameters()]
    saliency.explain(model, make_inputs(2), method, **_fast(method))
    assert model.requires_grad_seen
    assert all(not any(seen) for seen in model.requires_grad_seen)
    assert [p.requires_grad for p in model.parameters()] == before
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method", METHODS)
def test_parameters_keep_requires_grad_with_create_graph(method: str) -> None:
    model = Recorder()
    model.conv.bias.requires_grad_(False)
    before = tuple(p.requires_grad for p in model.parameters())
    saliency.explain(model, make_inputs(2), method, create_graph=True, **_fast(method))
    assert model.requires_grad_seen
    assert all(seen == before for seen in model.requires_grad_seen)
    assert tuple(p.requires_grad for p in model.parameters()) == before
    assert all(p.grad is None for p in model.parameters())


def _fast(method: str) -> dict[str, Any]:
    return {"integrated_gradients": {"steps": 3}, "smoothgrad": {"samples": 2, "seed": 0}}.get(
        method, {}
    )


# --- option checks ------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, False, "4"])
def test_bad_batch_size(batch_size: Any) -> None:
    with pytest.raises(InvalidOptionError, match="batch_size") as info:
        Engine(Recorder(), batch_size=batch_size)
    assert "positive int" in str(info.value)
    model = Recorder()
    with pytest.raises(InvalidOptionError, match="batch_size"):
        saliency.explain(model, make_inputs(2), "gradient", batch_size=batch_size)
    assert model.calls == []


@pytest.mark.parametrize("precision", ["fp64", "float32", "FP32", None, 16])
def test_bad_precision(precision: Any) -> None:
    with pytest.raises(InvalidOptionError, match="precision") as info:
        Engine(Recorder(), precision=precision)
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


@pytest.mark.parametrize("method", METHODS)
def test_detached_output_raises_model_output_error(method: str) -> None:
    model = Detaching()
    with pytest.raises(ModelOutputError) as info:
        saliency.explain(model, make_inputs(2), method, **_fast(method))
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


def test_non_tensor_output_raises() -> None:
    with pytest.raises(ModelOutputError, match="callable target"):
        saliency.explain(lambda x: {"logits": x.mean((2, 3))}, make_inputs(2), "gradient")
