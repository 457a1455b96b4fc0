"""``compile=True``: torch.compile of the model forward, cached per model, with eager fallback.

Real compilations use the ``aot_eager`` backend (AOTAutograd, as inductor, without the slow C++
code generation); ``SALIENCY_COMPILE_BACKEND=inductor`` runs them with inductor, and
``SALIENCY_TEST_INDUCTOR=1`` adds a test of the default backend. The cache and fallback logic is
tested with a stand-in for ``torch.compile``, which costs nothing.
"""

from __future__ import annotations

import gc
import os
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from conftest import DIFFERENTIABLE_METHODS
from torch import Tensor, nn

import saliency
from saliency import compiled
from saliency.compiled import CompileFallbackWarning
from saliency.engine import Engine, EngineOptions
from saliency.errors import InvalidOptionError

REAL_COMPILE = torch.compile


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def make_inputs(n: int = 4, size: int = 8) -> Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


class Compiles:
    """Stands in for ``torch.compile``: records each call and each call of its result."""

    def __init__(self, make: Callable[..., Callable[..., Any]] | None = None) -> None:
        self.make = make
        self.compiles: list[dict[str, Any]] = []
        self.calls = 0

    def __call__(self, fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
        self.compiles.append(options)
        inner = self.make(fn, **options) if self.make is not None else fn

        def run(*args: Any) -> Any:
            self.calls += 1
            return inner(*args)

        return run


@pytest.fixture(autouse=True, scope="module")
def _fast_backend() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        if not os.environ.get(compiled.BACKEND_ENV):
            patch.setenv(compiled.BACKEND_ENV, "aot_eager")
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def real_compiles() -> Iterator[Compiles]:
    """A counting wrapper around the real torch.compile, shared by the module's models."""
    counter = Compiles(REAL_COMPILE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "compile", counter)
        yield counter


@pytest.fixture(scope="module")
def shared_model() -> nn.Module:
    return tiny_cnn()


def fallback_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, CompileFallbackWarning)]


# --- compiled results equal eager results -------------------------------------------------------


def test_compiled_matches_eager(
    method: str, method_options: dict[str, Any], real_compiles: Compiles, shared_model: nn.Module
) -> None:
    inputs = make_inputs()
    options = method_options
    eager = saliency.explain(shared_model, inputs, method, target=1, batch_size=4, **options)
    calls = real_compiles.calls
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        ex = saliency.explain(
            shared_model, inputs, method, target=1, batch_size=4, compile=True, **options
        )
    torch.testing.assert_close(ex.attributions, eager.attributions, rtol=1e-4, atol=1e-6)
    assert ex.attributions.dtype == torch.float32
    chosen = saliency.get_method(method)
    if not chosen.compiles or chosen.output == "layer" or chosen.derivative_order != 1:
        # hooked layers, forward-only and second-order passes (create_graph inside) and
        # methods that declare it (propagation rules) run eagerly
        assert real_compiles.calls == calls
    else:
        assert real_compiles.calls > calls
    # All chunks have 4 points and the same point shape: one compilation for every method.
    assert len(real_compiles.compiles) <= 1
    assert shared_model.training  # state restored as without compile


def test_compiled_cache_does_not_keep_the_model_alive(real_compiles: Compiles) -> None:
    model = tiny_cnn(seed=1)
    inputs = make_inputs(2)
    eager = saliency.explain(model, inputs, "integrated_gradients", steps=4)
    ex = saliency.explain(model, inputs, "integrated_gradients", steps=4, compile=True)
    torch.testing.assert_close(ex.attributions, eager.attributions, rtol=1e-4, atol=1e-6)
    reference = weakref.ref(model)
    del model, ex
    gc.collect()
    assert reference() is None


@pytest.mark.skipif(
    os.environ.get("SALIENCY_TEST_INDUCTOR") != "1",
    reason="inductor on CPU compiles C++ for ~30 s; set SALIENCY_TEST_INDUCTOR=1",
)
@pytest.mark.parametrize("method", ["gradient", "integrated_gradients"])
def test_inductor_matches_eager(
    method: str, method_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(compiled.BACKEND_ENV, raising=False)
    model = tiny_cnn(seed=2)
    inputs = make_inputs(2)
    eager = saliency.explain(model, inputs, method, target=0, batch_size=4, **method_options)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        ex = saliency.explain(
            model, inputs, method, target=0, batch_size=4, compile=True, **method_options
        )
    torch.testing.assert_close(ex.attributions, eager.attributions, rtol=1e-4, atol=1e-6)


# --- the cache ----------------------------------------------------------------------------------


def test_cache_is_reused_per_model_and_point_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(compiled.BACKEND_ENV)
    counter = Compiles()
    monkeypatch.setattr(torch, "compile", counter)
    model = tiny_cnn()
    inputs = make_inputs(3)
    for _ in range(3):
        saliency.explain(model, inputs, "integrated_gradients", steps=5, compile=True)
        saliency.explain(model, inputs[:2], "gradient", compile=True, batch_size=1)
    assert len(counter.compiles) == 1  # every chunk size and call shares one compilation
    assert counter.compiles[0]["backend"] == "inductor"  # the default backend
    assert counter.calls > 0

    saliency.explain(model, make_inputs(2, size=6), "gradient", compile=True, batch_size=1)
    assert len(counter.compiles) == 2  # another point shape
    saliency.explain(tiny_cnn(), inputs, "gradient", compile=True, batch_size=1)
    assert len(counter.compiles) == 3  # another model
    saliency.explain(model, inputs, "gradient", compile=True, batch_size=1)
    assert len(counter.compiles) == 3
    # Keys: the point shape (not the batch size), dtype, device and compiler settings.
    key = compiled.cache_key(inputs)
    assert key == compiled.cache_key(inputs[:1])
    assert key != compiled.cache_key(inputs.double())
    assert key != compiled.cache_key(inputs[..., :4])
    monkeypatch.setenv(compiled.MODE_ENV, "max-autotune")
    assert key != compiled.cache_key(inputs)


def test_last_chunk_of_one_point_runs_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = Compiles()
    monkeypatch.setattr(torch, "compile", counter)
    model = tiny_cnn()
    # 3 × 3 = 9 points in chunks of 4, 4, 1: the single point would need a graph of its own.
    saliency.explain(
        model, make_inputs(3), "integrated_gradients", steps=3, batch_size=4, compile=True
    )
    assert counter.calls == 2
    # With chunks of one point by choice, every chunk is compiled.
    saliency.explain(model, make_inputs(2), "gradient", batch_size=1, compile=True)
    assert counter.calls == 4


def test_engine_without_compile_does_not_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = Compiles()
    monkeypatch.setattr(torch, "compile", counter)
    saliency.explain(tiny_cnn(), make_inputs(2), "integrated_gradients", steps=3)
    assert counter.compiles == []


@pytest.mark.parametrize("method", DIFFERENTIABLE_METHODS)
def test_create_graph_runs_eagerly(
    method: str, method_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = Compiles()
    monkeypatch.setattr(torch, "compile", counter)
    model = tiny_cnn()
    inputs = make_inputs(2).requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        ex = saliency.explain(
            model, inputs, method, target=0, create_graph=True, compile=True, **method_options
        )
    (grad,) = torch.autograd.grad(ex.attributions.square().sum(), inputs)
    assert grad.shape == inputs.shape
    assert counter.calls == 0


# --- fallback to eager --------------------------------------------------------------------------


def _raise_at_compile(fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
    raise RuntimeError("boom: the compiler is unavailable")


def _raise_at_call(fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        raise RuntimeError("Unsupported: data-dependent control flow (simulated)")

    return call


class _FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        raise RuntimeError("backward compilation failed (simulated)")


def _raise_at_backward(fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
    def call(model: Callable[[Tensor], Tensor], points: Tensor) -> Tensor:
        return model(_FailingBackward.apply(points))

    return call


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_raise_at_compile, "RuntimeError: boom"),
        (_raise_at_call, "Unsupported: data-dependent"),
        (_raise_at_backward, "backward compilation failed"),
    ],
)
@pytest.mark.parametrize("method", ["integrated_gradients", "smoothgrad"])
def test_failure_falls_back_to_eager_with_one_warning(
    make: Callable[..., Any],
    message: str,
    method: str,
    method_options: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = tiny_cnn()
    inputs = make_inputs(3)
    eager = saliency.explain(model, inputs, method, target=2, **method_options)
    monkeypatch.setattr(torch, "compile", make)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        results = [
            saliency.explain(model, inputs, method, target=2, compile=True, batch_size=2, **opts)
            for opts in (method_options, method_options, method_options)
        ]
    messages = fallback_warnings(record)
    assert len(messages) == 1, messages
    assert message in messages[0]
    assert "Sequential" in messages[0] and "eagerly" in messages[0]
    for ex in results:
        torch.testing.assert_close(ex.attributions, eager.attributions)
    assert model.training
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


class _Broken(nn.Module):
    """Fails in every forward, compiled or not: a model error, not a compilation failure."""

    def forward(self, x: Tensor) -> Tensor:
        raise ValueError("the model's own error")


def test_model_error_is_raised_without_fallback_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "compile", Compiles())
    engine = Engine(_Broken(), EngineOptions(batch_size=2, compile=True))
    points = saliency.engine.Points.of(make_inputs(2))
    target = saliency.targets.ClassTarget(torch.tensor([0, 1]))
    with warnings.catch_warnings(record=True) as record, pytest.raises(ValueError, match="own"):
        warnings.simplefilter("always")
        engine.accumulate(points, target)
    assert fallback_warnings(record) == []


def test_out_of_memory_in_compiled_call_still_halves(monkeypatch: pytest.MonkeyPatch) -> None:
    def limited(fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
        def call(model: Callable[[Tensor], Any], points: Tensor) -> Any:
            if len(points) > 3:
                try:
                    raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
                except torch.OutOfMemoryError as error:  # as a compiler wraps it
                    raise RuntimeError("backend compiler failed") from error
            return fn(model, points)

        return call

    counter = Compiles(limited)
    monkeypatch.setattr(torch, "compile", counter)
    model = tiny_cnn()
    inputs = make_inputs(3)
    eager = saliency.explain(model, inputs, "integrated_gradients", steps=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        ex = saliency.explain(model, inputs, "integrated_gradients", steps=8, compile=True)
    torch.testing.assert_close(ex.attributions, eager.attributions, rtol=1e-5, atol=1e-7)
    assert counter.calls > 0


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_bad_compile_option(value: Any) -> None:
    with pytest.raises(InvalidOptionError, match="compile"):
        EngineOptions(compile=value)
    with pytest.raises(InvalidOptionError, match="compile"):
        saliency.explain(tiny_cnn(), make_inputs(2), "gradient", compile=value)
