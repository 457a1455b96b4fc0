"""The RRR demo's batches: the same inputs as plain training, with aligned marker masks."""

from __future__ import annotations

import torch

from saliency.demo_models import ShapesNet, demo_preprocess
from saliency.rrr import path_points, penalty_statistics, rrr_batches, unmarked_scenes
from saliency.shapes import MARKER_COLOURS, SHORTCUT, generate_scenes
from saliency.training import TrainConfig, training_batches


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


def test_detached_statistics_give_the_train_mode_function_without_its_batch_gradient() -> None:
    torch.manual_seed(0)
    model = ShapesNet(widths=(4, 4, 4)).train()
    x = torch.randn(6, 3, 16, 16)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with penalty_statistics(model, "detached"):
        leaf = x.clone().requires_grad_(True)
        detached = model(leaf)
        (grad,) = torch.autograd.grad(detached[0, 1], leaf)
    for key, value in model.state_dict().items():  # running statistics not updated
        assert torch.equal(value, state[key]), key
    assert all("forward" not in m.__dict__ for m in model.modules())
    leaf = x.clone().requires_grad_(True)
    plain = model(leaf)
    torch.testing.assert_close(detached, plain, rtol=1e-5, atol=1e-6)
    (batch_grad,) = torch.autograd.grad(plain[0, 1], leaf)
    # Constant statistics: other samples do not influence sample 0's output through them.
    assert torch.count_nonzero(grad[1:]) == 0 and torch.count_nonzero(batch_grad[1:]) > 0
