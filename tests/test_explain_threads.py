"""explain() from several threads on one model: each call sees eval mode, flags come back."""

from __future__ import annotations

import threading

import torch
from torch import Tensor, nn

import saliency


class _Rendezvous(nn.Module):
    """Dropout model whose first forward waits (bounded) for a second thread to start one.

    Without serialisation the second call runs while the first is inside the model, so the
    first call's restore puts the second one back in train mode mid-call.
    """

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 4)
        self.dropout = nn.Dropout(0.5)
        self.entered = threading.Event()
        self.calls = 0
        self.lock = threading.Lock()

    def forward(self, x: Tensor) -> Tensor:
        with self.lock:
            self.calls += 1
            first = self.calls == 1
        if first:
            self.entered.wait(timeout=0.5)
        else:
            self.entered.set()
        return self.linear(self.dropout(x.flatten(1)))


def test_concurrent_explain_calls_leave_train_mode_and_match_single_thread() -> None:
    torch.manual_seed(0)
    model = _Rendezvous()
    model.train()
    inputs = torch.randn(3, 2, 2, 2)
    reference = saliency.explain(model, inputs, "gradient", target=1).attributions
    model.calls = 0
    model.entered.clear()
    results: dict[int, Tensor] = {}
    errors: list[BaseException] = []

    def run(slot: int) -> None:
        try:
            results[slot] = saliency.explain(model, inputs, "gradient", target=1).attributions
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert all(module.training for module in model.modules())
    for slot in range(2):
        torch.testing.assert_close(results[slot], reference, rtol=0, atol=0)


def test_nested_explain_in_one_thread_does_not_deadlock() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 3))
    model.train()
    inputs = torch.randn(2, 2, 2, 2)

    def target(outputs: Tensor) -> Tensor:
        # A callable target that itself explains the same model (re-entrant lock).
        saliency.explain(model, inputs, "gradient", target=0)
        return outputs[:, 0]

    saliency.explain(model, inputs, "gradient", target=target)
    assert model.training
