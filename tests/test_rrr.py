"""The RRR demo's batches: the same inputs as plain training, with aligned marker masks."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from saliency.demo.models import ShapesNet, demo_preprocess
from saliency.demo.rrr import (
    SharedStatistics,
    path_points,
    penalty_statistics,
    rrr_batches,
    train_rrr,
    unmarked_scenes,
)
from saliency.demo.scenes import MARKER_COLOURS, SHORTCUT, generate_scenes
from saliency.demo.training import TrainConfig, smoke_config, training_batches
from saliency.errors import InvalidOptionError


def test_batches_match_plain_training_and_masks_follow_the_augmentation() -> None:
    noisy = TrainConfig("shapes-shortcut", images=64, batch_size=32, epochs=1)
    scenes = generate_scenes(64, seed=0, config=SHORTCUT)
    unmarked = unmarked_scenes(noisy)
    normalize = demo_preprocess(SHORTCUT.size).normalize
    for (x, y), (x2, y2, masks, clean) in zip(
        training_batches(scenes, noisy, 0, normalize),
        rrr_batches(scenes, unmarked, noisy, 0, normalize),
        strict=True,
    ):
        assert torch.equal(x, x2) and torch.equal(y, y2)  # the same noise too
        outside = ~masks.expand_as(x)
        # The unmarked scene has the same noise: it differs from the input only in the patch.
        torch.testing.assert_close(clean[outside], x[outside], rtol=0, atol=1e-5)
        assert (clean - x).abs().flatten(1).amax(1).min() > 0.5
    config = TrainConfig("shapes-shortcut", images=64, batch_size=32, epochs=1, noise=0.0)
    plain = list(training_batches(scenes, config, 0, normalize))
    ours = list(rrr_batches(scenes, unmarked, config, 0, normalize))
    assert len(plain) == len(ours) == 2
    palette = torch.tensor(MARKER_COLOURS)
    for (x, y), (x2, y2, masks, _) in zip(plain, ours, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
        assert masks.shape == (32, 1, 96, 96) and masks.dtype == torch.bool
        pixels = x * 0.25 + 0.5  # undo the normalisation
        for image, mask in zip(pixels, masks[:, 0], strict=True):
            assert mask.any()
            inside = image[:, mask].T  # (pixels, 3): black frame or a marker colour
            black = inside.abs().amax(1) < 1e-3
            coloured = (inside[:, None, :] - palette[None]).abs().amax(2).amin(1) < 3e-3
            assert (black | coloured).all()


def test_unmarked_scenes_are_the_same_scenes_without_markers() -> None:
    config = TrainConfig("shapes-shortcut", images=40)
    marked = generate_scenes(40, seed=0, config=SHORTCUT)
    unmarked = unmarked_scenes(config)
    assert torch.equal(unmarked.labels, marked.labels)
    outside = ~marked.marker_masks[:, None].expand_as(marked.images)
    assert torch.equal(unmarked.images[outside], marked.images[outside])
    assert not unmarked.marker_masks.any()


def test_path_points_lie_between_the_unmarked_and_the_marked_inputs() -> None:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(4, 3, 8, 8, generator=generator)
    unmarked = inputs.clone()
    unmarked[:, :, 2:5, 1:4] = torch.randn(4, 3, 3, 3, generator=generator)
    points = path_points(inputs, unmarked, torch.Generator().manual_seed(1))
    alpha = torch.rand(4, 1, 1, 1, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(points, unmarked + alpha * (inputs - unmarked))
    assert torch.equal(points[:, :, 5:], inputs[:, :, 5:])  # outside the patch: the input


def test_shared_statistics_give_the_training_function_per_sample() -> None:
    """The penalty's pass normalises with the cross-entropy batch's statistics: each sample's
    output and its parameter gradient (through the statistics too) are those of the training
    pass, no sample influences another, and the running statistics are left alone."""
    torch.manual_seed(0)
    model = ShapesNet(widths=(4, 4, 4)).train()
    x = torch.randn(6, 3, 16, 16)
    shared = SharedStatistics(model)
    with shared.record():
        training = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    leaf = x[:2].clone().requires_grad_(True)
    with penalty_statistics(model, "shared", shared):
        replayed = model(leaf)
    assert all("forward" not in m.__dict__ for m in model.modules())
    for key, value in model.state_dict().items():  # running statistics not updated
        assert torch.equal(value, state[key]), key
    torch.testing.assert_close(replayed, training[:2], rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(replayed[0, 1], leaf, retain_graph=True)
    assert torch.count_nonzero(grad[1]) == 0 and torch.count_nonzero(grad[0]) > 0
    params = list(model.parameters())
    ours = torch.autograd.grad(replayed[0, 1], params, retain_graph=True)
    expected = torch.autograd.grad(training[0, 1], params)
    for mine, theirs in zip(ours, expected, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)


def test_shared_statistics_restore_the_model_when_the_pass_raises() -> None:
    model = ShapesNet(widths=(4, 4, 4)).train()
    shared = SharedStatistics(model)
    with shared.record():
        model(torch.randn(4, 3, 16, 16))
    try:
        with penalty_statistics(model, "shared", shared):
            model(torch.randn(2, 5, 16, 16))  # wrong channel count
    except RuntimeError:
        pass
    else:
        raise AssertionError("the bad pass should raise")
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert all(not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize(
    "options",
    [
        {"penalty": -1.0},
        {"penalty": True},
        {"at": "corner"},
        {"form": "pixels"},
        {"score": "logits"},
        {"statistics": "detached"},
    ],
    ids=["negative", "bool", "at", "form", "score", "statistics"],
)
def test_bad_rrr_options_name_the_option_and_what_is_accepted(options: dict[str, Any]) -> None:
    name = next(iter(options))
    with pytest.raises(InvalidOptionError, match=f"{name}=") as raised:
        train_rrr(smoke_config("shapes-shortcut"), **options)
    assert "accepted" in str(raised.value)


def test_the_per_feature_form_trains_with_each_statistics_mode() -> None:
    config = TrainConfig("shapes-shortcut", images=64, epochs=1, batch_size=32, eval_images=8)
    for statistics in ("batch", "running"):
        lines: list[str] = []
        result = train_rrr(
            config,
            1.0,
            form="features",
            score="all",
            statistics=statistics,
            penalty_samples=4,
            log=lines.append,
        )
        assert not result.model.training and set(result.accuracy) == {"test", "counterfactual"}
        [epoch] = [line for line in lines if "epoch" in line]
        assert float(epoch.split("penalty ")[1].split(" ")[0]) > 0, statistics
