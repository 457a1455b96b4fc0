"""``input_gradient_penalty`` ("Right for the Right Reasons", Ross et al. 2017).

Its value and parameter gradient match an independent double-backprop computation written with
``torch.func``; it is zero where the mask is empty; it leaves the model's mode and flags alone
and calls it exactly once.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad

from saliency.errors import InvalidOptionError, InvalidTargetError
from saliency.losses import input_gradient_penalty

LABELS = torch.tensor([0, 2, 1])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Softplus(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * 25, 3),
    ).double()


def inputs() -> Tensor:
    return torch.randn(3, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def marker_mask() -> Tensor:
    mask = torch.zeros(3, 1, 5, 5, dtype=torch.bool)
    mask[:, :, :2, 3:] = True
    return mask


def reference(
    net: nn.Module, x: Tensor, mask: Tensor, labels: Tensor | None, direction: Tensor | None = None
) -> tuple[Any, ...]:
    """Penalty and its parameter gradients by torch.func: grad over θ of a grad over x."""
    params = {name: p.detach() for name, p in net.named_parameters()}

    def score(sample: Tensor, theta: dict[str, Tensor], label: Tensor | None) -> Tensor:
        log_p = torch.log_softmax(functional_call(net, theta, (sample[None],))[0], dim=0)
        return log_p.sum() if label is None else log_p[label]

    def penalty(theta: dict[str, Tensor]) -> Tensor:
        total = torch.zeros((), dtype=x.dtype)
        for n in range(len(x)):
            label = None if labels is None else labels[n]
            g = grad(score)(x[n], theta, label)
            if direction is None:
                total = total + (mask[n].to(x.dtype) * g).square().sum()
            else:  # the squared derivative along mask ⊙ direction
                total = total + (mask[n].to(x.dtype) * direction[n] * g).sum().square()
        return total / len(x)

    value = penalty(params)
    return value, grad(penalty)(params)


DIRECTION = torch.randn(3, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("direction", [None, DIRECTION], ids=["per feature", "along a direction"])
@pytest.mark.parametrize("labels", [None, LABELS], ids=["all classes", "labels"])
def test_parameter_gradient_matches_independent_double_backprop(
    labels: Tensor | None, direction: Tensor | None
) -> None:
    net, x, mask = model(), inputs(), marker_mask()
    value = input_gradient_penalty(net, x, labels, mask, direction=direction)
    assert value.ndim == 0 and value > 0
    grads = torch.autograd.grad(value, list(net.parameters()))
    expected_value, expected = reference(net, x, mask, labels, direction)
    torch.testing.assert_close(value, expected_value, rtol=1e-12, atol=1e-15)
    for (name, _), ours in zip(net.named_parameters(), grads, strict=True):
        torch.testing.assert_close(ours, expected[name], rtol=1e-10, atol=1e-14, msg=name)


def test_zero_where_the_mask_is_empty() -> None:
    net, x = model(), inputs()
    empty = torch.zeros(3, 1, 5, 5)
    value = input_gradient_penalty(net, x, None, empty)
    assert value.item() == 0.0
    value.backward()
    assert all(torch.count_nonzero(p.grad) == 0 for p in net.parameters() if p.grad is not None)
    # Per sample: a sample with an empty mask contributes zero, the others do not.
    mask = marker_mask().clone()
    mask[1] = False
    per_sample = input_gradient_penalty(net, x, LABELS, mask, reduction="none")
    assert per_sample.shape == (3,)
    assert per_sample[1].item() == 0.0 and (per_sample[[0, 2]] > 0).all()
    total = input_gradient_penalty(net, x, LABELS, mask, reduction="sum")
    torch.testing.assert_close(total, per_sample.sum())


def test_only_features_inside_the_mask_count() -> None:
    """A model that ignores the masked region has no penalty, whatever its other gradients."""
    torch.manual_seed(0)
    head = nn.Linear(3 * 5 * 3, 3).double()

    def left_only(x: Tensor) -> Tensor:
        return head(x[..., :3].flatten(1))

    x = inputs()
    right = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    right[..., 3:] = True
    assert input_gradient_penalty(left_only, x, None, right).item() == 0.0
    assert input_gradient_penalty(left_only, x, None, ~right).item() > 0


def test_direction_penalty_of_a_linear_score_is_the_squared_change_of_the_region() -> None:
    """For a linear score S, (Σ_d A_d v_d ∂_d S)² with v = x − x̃ equals (S(x) − S(x̃))² at every
    point of the path; for a non-linear one its mean over the path is at least that
    (Cauchy–Schwarz)."""
    torch.manual_seed(0)
    linear = nn.Linear(3 * 25, 3).double()
    x = inputs()
    replaced = x.clone()
    replaced[..., :2, 3:] = torch.randn(3, 3, 2, 2, dtype=torch.float64)
    mask = marker_mask()

    def second_logit(outputs: Tensor) -> Tensor:
        return outputs[:, 1]

    def flat(v: Tensor) -> Tensor:
        return linear(v.flatten(1))

    change = (flat(x) - flat(replaced))[:, 1].square()
    for alpha in (0.0, 0.3, 1.0):
        point = replaced + alpha * (x - replaced)
        penalty = input_gradient_penalty(
            flat, point, second_logit, mask, direction=x - replaced, reduction="none"
        )
        torch.testing.assert_close(penalty, change, rtol=1e-12, atol=1e-14)
    net = model()
    alphas = (torch.arange(64, dtype=torch.float64) + 0.5) / 64  # midpoint rule over the path
    mean = sum(
        input_gradient_penalty(
            net,
            replaced + a * (x - replaced),
            second_logit,
            mask,
            direction=x - replaced,
            reduction="none",
        )
        for a in alphas
    ) / len(alphas)
    with torch.no_grad():
        total_change = (net(x) - net(replaced))[:, 1].square()
    assert (mean >= total_change * (1 - 1e-3)).all() and (total_change > 0).all()


def test_model_is_called_once_as_it_is() -> None:
    """Train mode stays (BatchNorm uses batch statistics, updated once); flags untouched."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.Softplus(),
        nn.Flatten(),
        nn.Linear(4 * 25, 3),
    ).double()
    net.train()
    net[0].bias.requires_grad_(False)
    modes: list[bool] = []
    net.register_forward_pre_hook(lambda m, i: modes.append(m.training))
    x = inputs()
    penalty, outputs = input_gradient_penalty(net, x, LABELS, marker_mask(), return_outputs=True)
    assert modes == [True]
    batch_norm = net[1]
    assert isinstance(batch_norm, nn.BatchNorm2d)
    assert batch_norm.num_batches_tracked is not None
    assert batch_norm.num_batches_tracked.item() == 1
    assert net.training and not net[0].bias.requires_grad
    assert all(p.grad is None for p in net.parameters())
    loss = nn.functional.cross_entropy(outputs, LABELS) + 10 * penalty
    loss.backward()
    assert net[0].weight.grad is not None and net[0].bias.grad is None
    assert not x.requires_grad and x.grad is None


def test_create_graph_false_gives_a_plain_tensor() -> None:
    value = input_gradient_penalty(model(), inputs(), None, marker_mask(), create_graph=False)
    assert not value.requires_grad


def test_callable_target_is_used_as_is() -> None:
    net, x, mask = model(), inputs(), marker_mask()
    ours = input_gradient_penalty(net, x, lambda out: out[:, 1], mask, reduction="none")
    leaf = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(leaf)[:, 1].sum(), leaf)
    torch.testing.assert_close(ours, (g * mask).square().flatten(1).sum(1))


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"mask": torch.zeros(3, 2, 5, 5)}, InvalidOptionError),
        ({"mask": torch.zeros(2, 3, 3, 5, 5)}, InvalidOptionError),
        ({"mask": [[0.0]]}, InvalidOptionError),
        ({"direction": torch.zeros(3, 2, 5, 5)}, InvalidOptionError),
        ({"reduction": "max"}, InvalidOptionError),
        ({"targets": torch.tensor([0, 1, 7])}, InvalidTargetError),
    ],
    ids=["mask shape", "mask dims", "mask type", "direction shape", "reduction", "target range"],
)
def test_bad_arguments_raise(arguments: dict[str, Any], error: type[Exception]) -> None:
    call: dict[str, Any] = {"targets": LABELS, "mask": marker_mask(), **arguments}
    with pytest.raises(error):
        input_gradient_penalty(model(), inputs(), **call)
