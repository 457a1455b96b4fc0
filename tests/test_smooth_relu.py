"""``saliency.smooth_relu``: a reversible ReLU → Softplus(β) transform.

While active every ReLU form (modules, functional and in-place calls) computes Softplus(β);
afterwards the model holds the very same module objects and gives bit-identical outputs, also
when an exception happened inside the context; nothing outside the model is affected.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

import saliency
from saliency.errors import InvalidOptionError
from saliency.smooth_relu import SoftplusReLU

BETA = 3.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Functional(nn.Module):
    """Every ReLU spelling; ``smooth=True`` is the hand-written Softplus reference."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4, 3)
        self.smooth = False

    def forward(self, x: Tensor) -> Tensor:
        act: Any = (lambda t: F.softplus(t, beta=BETA)) if self.smooth else None
        y = self.conv(x)
        y = act(y) if act else self.act(y)
        y = self.block[0](y)
        y = act(y) if act else self.block[1](y)
        y = act(y - 0.1) if act else F.relu(y - 0.1)
        y = act(y * 2) if act else F.relu(y * 2, inplace=True)
        y = act(y - 0.2) if act else torch.relu(y - 0.2)
        z = y - 0.3
        if act:
            z = act(z)
        else:
            z.relu_()  # in place, result ignored: the side effect must be kept
        y = act(z + 0.1) if act else (z + 0.1).relu()
        y = act(y - 0.1) if act else F.relu_(y - 0.1)
        return self.head(y.mean((2, 3)))


def inputs() -> Tensor:
    return torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))


def module_identities(model: nn.Module) -> list[tuple[str, int]]:
    return [(name, id(m)) for name, m in model.named_modules(remove_duplicate=False)]


def test_every_relu_form_becomes_softplus_and_is_restored() -> None:
    model, x = Functional(), inputs()
    modules = module_identities(model)
    original = model(x)
    reference = copy.deepcopy(model)
    reference.smooth = True
    expected = reference(x)

    with saliency.smooth_relu(model, beta=BETA) as handle:
        smooth = model(x)
        assert handle.active
        assert sorted(handle.replaced) == ["act", "block.1"]
        assert not any(isinstance(m, nn.ReLU) for m in model.modules())
        assert isinstance(model.act, SoftplusReLU) and model.act.inplace

    torch.testing.assert_close(smooth, expected, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(smooth, original)
    assert not handle.active
    assert module_identities(model) == modules
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert torch.equal(model(x), original)


def test_torchvision_resnet18_matches_a_hand_swapped_copy() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    reference = copy.deepcopy(model)
    for parent in list(reference.modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, nn.ReLU):
                parent._modules[name] = nn.Softplus(beta=BETA)
    modules = module_identities(model)
    with torch.no_grad():
        original = model(x)
        with saliency.smooth_relu(model, BETA) as handle:
            smooth = model(x)
        expected = reference(x)
        after = model(x)
    assert len(handle.replaced) == 9  # the stem and one shared ReLU per basic block
    torch.testing.assert_close(smooth, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(smooth, original)
    assert module_identities(model) == modules
    assert torch.equal(after, original)


def test_exception_inside_the_context_restores_the_model() -> None:
    model, x = Functional(), inputs()
    modules = module_identities(model)
    original = model(x)
    with pytest.raises(KeyError, match="boom"), saliency.smooth_relu(model):
        model(x)
        raise KeyError("boom")
    assert module_identities(model) == modules
    assert torch.equal(model(x), original)


def test_exception_inside_the_model_restores_it_and_leaves_no_mode() -> None:
    class Failing(Functional):
        def forward(self, x: Tensor) -> Tensor:
            F.relu(x)
            raise RuntimeError("model failed")

    model = Failing()
    modules = module_identities(model)
    depth = torch._C._len_torch_function_stack()
    with pytest.raises(RuntimeError, match="model failed"), saliency.smooth_relu(model):
        assert torch._C._len_torch_function_stack() == depth
        model(inputs())
    assert torch._C._len_torch_function_stack() == depth
    assert module_identities(model) == modules
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_handle_restore_is_idempotent_and_keeps_training_flags() -> None:
    model, x = Functional(), inputs()
    model.train()
    model.block.eval()
    flags = [m.training for m in model.modules()]
    original = model(x)
    handle = saliency.smooth_relu(model, beta=2)
    assert not torch.allclose(model(x), original)
    assert isinstance(model.block[1], SoftplusReLU) and not model.block[1].training
    handle.restore()
    handle.restore()
    assert [m.training for m in model.modules()] == flags
    assert torch.equal(model(x), original)


def test_nothing_outside_the_model_is_affected() -> None:
    model, x = Functional(), inputs()
    t = torch.linspace(-1, 1, 5)
    results: dict[str, Tensor] = {}

    def other_thread() -> None:
        results["thread"] = torch.relu(t)

    with saliency.smooth_relu(model):
        model(x)
        outside = F.relu(t)
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
    assert torch.equal(outside, t.clamp_min(0))
    assert torch.equal(results["thread"], t.clamp_min(0))


def test_the_model_is_smooth_in_another_thread_while_active() -> None:
    model, x = Functional(), inputs()
    results: dict[str, Tensor] = {}
    with saliency.smooth_relu(model, beta=BETA):
        here = model(x)
        worker = threading.Thread(target=lambda: results.setdefault("thread", model(x)))
        worker.start()
        worker.join()
    torch.testing.assert_close(results["thread"], here)


def test_nested_transforms_restore_in_order() -> None:
    model, x = Functional(), inputs()
    modules = module_identities(model)
    original = model(x)
    with saliency.smooth_relu(model, beta=2.0):
        outer = model(x)
        with saliency.smooth_relu(model, beta=50.0):
            torch.testing.assert_close(model(x), outer)  # modules already Softplus(2)
        torch.testing.assert_close(model(x), outer)
    assert module_identities(model) == modules
    assert torch.equal(model(x), original)


def test_large_beta_approaches_relu() -> None:
    model, x = Functional(), inputs()
    original = model(x)
    with saliency.smooth_relu(model, beta=1e4):
        torch.testing.assert_close(model(x), original, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("beta", [0, -1.0, "10", True])
def test_bad_beta_raises(beta: Any) -> None:
    with pytest.raises(InvalidOptionError, match="beta"):
        saliency.smooth_relu(Functional(), beta=beta)


def test_non_module_raises() -> None:
    with pytest.raises(InvalidOptionError, match=r"nn\.Module"):
        saliency.smooth_relu(torch.relu)  # type: ignore[arg-type]
