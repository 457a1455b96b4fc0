"""The CAM family against pytorch-grad-cam, analytic cases, exact Grad-CAM++, and option errors.

Agreement: torchvision resnet18, vgg11 and mobilenet_v2 with random weights (seeded; batch-norm
statistics and biases randomised too, so that FullGrad's bias terms are not all zero), two
64×64 images, the same target layer on both sides. pytorch-grad-cam returns
``minmax(cv2.resize(minmax(relu(cam))))`` per image (FullGrad: one min-max), where minmax is
its ``scale_cam_image``; our maps are raw and upsampled by torch. Bilinear upsampling commutes
with min-max rescaling (it is affine and keeps constants), cv2's bilinear resize equals torch's
``align_corners=False`` (checked below), so the fair comparison applies the reference's own
``scale_cam_image`` as often as it does to our maps, at the input resolution. Run with ``-s``
for the table of maximum differences.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from pytorch_grad_cam import (
    AblationCAM,
    EigenCAM,
    FullGrad,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import Tensor, nn

import saliency
from saliency.errors import InvalidOptionError, LayerNotFoundError
from saliency.methods.eigencam import principal_projection

TOLERANCE = 1e-4
FAMILY = (
    "gradcam_pp",
    "hirescam",
    "xgradcam",
    "layercam",
    "scorecam",
    "ablationcam",
    "eigencam",
    "fullgrad",
)
LAYER_METHODS = tuple(m for m in FAMILY if m != "fullgrad")
REFERENCES: dict[str, type] = {
    "gradcam_pp": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "scorecam": ScoreCAM,
    "ablationcam": AblationCAM,
    "eigencam": EigenCAM,
    "fullgrad": FullGrad,
}
MODELS = ("resnet18", "vgg11", "mobilenet_v2")
# The usual last feature maps (2×2 at 64²), for the one-pass methods.
LAYERS = {"resnet18": "layer4", "vgg11": "features", "mobilenet_v2": "features"}
# Score-CAM and Ablation-CAM cost one forward pass per channel and sample: smaller layers
# (128, 64 and 32 channels), all after a ReLU, where pytorch-grad-cam also ablates to 0 (it
# uses min − 1e7 for layers without zeros). On mobilenet_v2 the deeper ReLU6 maps give the
# second image an all-zero Ablation-CAM (every channel's ablation raises its score), which
# would compare vacuously; `features` (1280 channels) has so many channels that each
# ablation's score change is near float32 resolution.
FORWARD_ONLY_LAYERS = {
    "resnet18": "layer2",
    "vgg11": "features.2",
    "mobilenet_v2": "features.1.conv.0",
}
FORWARD_ONLY = ("scorecam", "ablationcam")
# pytorch-grad-cam's Grad-CAM++ adds ε = 1e-6 to α's denominator 2g² + ΣA·g³; these random
# heads have g ≈ 1e-3…1e-2, so ε would change α by up to ~20%. Logits scaled by 1e4 make it
# negligible (both sides explain the same scaled model).
GRADCAM_PP_LOGIT_SCALE = 1e4

_MAX_DIFFERENCE: dict[tuple[str, str], float] = {}

# On shared cores a thread team spins and stalls on mobilenet's many small convolutions.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", autouse=True)
def _report_differences() -> Iterator[None]:
    yield
    if _MAX_DIFFERENCE:
        print("\nmax |ours - pytorch-grad-cam| after the reference's min-max scaling:")
        print(f"  {'method':<12s}" + "".join(f"{m:>14s}" for m in MODELS))
        for method in FAMILY:
            cells = [_MAX_DIFFERENCE.get((method, m)) for m in MODELS]
            print(
                f"  {method:<12s}"
                + "".join(f"{'-':>14s}" if c is None else f"{c:>14.2e}" for c in cells)
            )


def random_model(name: str) -> nn.Module:
    """Random weights, seeded; batch norms with random affine parameters and running statistics
    measured on random images (so their eval-mode biases, which FullGrad uses, are not 0)."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=10)
    generator = torch.Generator().manual_seed(1)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for norm in norms:
            norm.weight.uniform_(0.8, 1.2, generator=generator)
            norm.bias.normal_(0.0, 0.1, generator=generator)
            norm.momentum = None  # running statistics = those of the calibration batch
        for module in model.modules():
            if isinstance(module, nn.Conv2d) and module.bias is not None:
                module.bias.normal_(0.0, 0.05, generator=generator)
        if norms:
            model.train()(torch.randn(8, 3, 64, 64, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {name: random_model(name) for name in MODELS}


@pytest.fixture(scope="module")
def x() -> Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))


class ScaledLogits(nn.Module):
    def __init__(self, model: nn.Module, factor: float) -> None:
        super().__init__()
        self.model = model
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) * self.factor


def predicted(model: nn.Module, x: Tensor) -> list[int]:
    """The explained classes: the predictions (on random weights other classes often have no
    positive evidence at all, and an all-zero map on both sides would agree vacuously)."""
    with torch.no_grad():
        return model(x).argmax(1).tolist()


def reference(
    method: str, model: nn.Module, layer: nn.Module | None, x: Tensor, targets: list[int]
) -> np.ndarray:
    layers = [] if layer is None else [layer]
    with REFERENCES[method](model, layers) as cam:
        return cam(x.clone(), [ClassifierOutputTarget(t) for t in targets])


def scaled_like_reference(ours: Tensor, method: str) -> np.ndarray:
    maps = ours[:, 0].detach().numpy()
    for _ in range(1 if method == "fullgrad" else 2):
        maps = scale_cam_image(maps)
    return maps


def check_reference(ref: np.ndarray) -> None:
    # A map that is all zeros on both sides would agree vacuously.
    assert (ref.reshape(len(ref), -1).max(1) > 0.99).all(), "a degenerate reference map"


def record(method: str, model: str, ours: np.ndarray, ref: np.ndarray) -> float:
    check_reference(ref)
    difference = float(np.abs(ours - ref).max())
    _MAX_DIFFERENCE[(method, model)] = difference
    return difference


# ------------------------------------------------------------------ pytorch-grad-cam agreement


def test_cv2_bilinear_resize_equals_torch_bilinear() -> None:
    """What makes comparing at the input resolution fair."""
    generator = torch.Generator().manual_seed(0)
    for shape, size in (((2, 2), (64, 64)), ((8, 8), (64, 64)), ((5, 7), (33, 47))):
        small = torch.rand(shape, generator=generator)
        theirs = cv2.resize(small.numpy(), size[::-1])
        ours = F.interpolate(small[None, None], size=size, mode="bilinear", align_corners=False)
        np.testing.assert_allclose(ours[0, 0].numpy(), theirs, rtol=0, atol=1e-6)


def _ours_and_reference(
    method: str, model_name: str, models: dict[str, nn.Module], x: Tensor
) -> tuple[Tensor, np.ndarray]:
    model = models[model_name]
    targets = predicted(model, x)
    if method == "fullgrad":
        ours = saliency.explain(model, x, method, target=targets).attributions
        return ours, reference(method, model, None, x, targets)
    name = (FORWARD_ONLY_LAYERS if method in FORWARD_ONLY else LAYERS)[model_name]
    layer = model.get_submodule(name)
    if method == "gradcam_pp":
        model = ScaledLogits(model, GRADCAM_PP_LOGIT_SCALE).eval()
        name = f"model.{name}"
    ours = saliency.explain(model, x, method, target=targets, layer=name).attributions
    return ours, reference(method, model, layer, x, targets)


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("method", [m for m in FAMILY if m not in ("scorecam", "eigencam")])
def test_matches_pytorch_grad_cam(
    method: str, model_name: str, models: dict[str, nn.Module], x: Tensor
) -> None:
    ours, ref = _ours_and_reference(method, model_name, models, x)
    assert ours.shape == (2, 1, 64, 64)
    assert ours.dtype == torch.float32
    difference = record(method, model_name, scaled_like_reference(ours, method), ref)
    assert difference <= TOLERANCE, f"{method} on {model_name}: {difference:.2e}"


def test_gradcam_pp_differs_from_pytorch_grad_cam_only_by_its_epsilon(
    models: dict[str, nn.Module], x: Tensor
) -> None:
    # On the unscaled model: the closed form from the layer's activations and gradients, by
    # hand, with ε = 0 is ours; with pytorch-grad-cam's ε = 1e-6 it is the reference's.
    model = models["resnet18"]
    targets = predicted(model, x)
    captured: dict[str, Tensor] = {}
    handle = model.layer4.register_forward_hook(lambda m, i, o: captured.__setitem__("a", o))
    try:
        outputs = model(x)
    finally:
        handle.remove()
    a = captured["a"]
    (g,) = torch.autograd.grad(outputs[[0, 1], targets].sum(), a)
    a, total = a.detach(), a.detach().sum(dim=(2, 3), keepdim=True)

    def closed_form(epsilon: float) -> Tensor:
        alpha = torch.where(g != 0, g**2 / (2 * g**2 + total * g**3 + epsilon), 0)
        weights = (alpha * F.relu(g)).sum(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * a).sum(1, keepdim=True))
        return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)

    ours = saliency.explain(model, x, "gradcam_pp", target=targets, layer="layer4").attributions
    torch.testing.assert_close(ours, closed_form(0.0), rtol=1e-5, atol=1e-6 * ours.abs().max())
    ref = reference("gradcam_pp", model, model.layer4, x, targets)
    with_epsilon = scaled_like_reference(closed_form(1e-6), "gradcam_pp")
    assert np.abs(with_epsilon - ref).max() <= TOLERANCE
    unscaled = np.abs(scaled_like_reference(ours, "gradcam_pp") - ref).max()
    print(f"gradcam_pp vs pytorch-grad-cam on unscaled resnet18 logits: {unscaled:.2e}")
    assert unscaled > 1e-3


@pytest.mark.parametrize("model_name", MODELS)
def test_scorecam_matches_pytorch_grad_cam(
    model_name: str, models: dict[str, nn.Module], x: Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pytorch-grad-cam upsamples the masks with nn.UpsamplingBilinear2d (align_corners=True);
    # ours, like the Score-CAM authors' code and like the maps themselves, does not align
    # corners. Its upsampler is swapped for the same interpolation as ours.
    def upsampler(size: Any) -> nn.Module:
        return nn.Upsample(size=size, mode="bilinear", align_corners=False)

    monkeypatch.setattr(torch.nn, "UpsamplingBilinear2d", upsampler)
    ours, ref = _ours_and_reference("scorecam", model_name, models, x)
    difference = record("scorecam", model_name, scaled_like_reference(ours, "scorecam"), ref)
    assert difference <= TOLERANCE, f"scorecam on {model_name}: {difference:.2e}"


@pytest.mark.parametrize("model_name", MODELS)
def test_eigencam_matches_pytorch_grad_cam_up_to_sign(
    model_name: str, models: dict[str, nn.Module], x: Tensor
) -> None:
    model = models[model_name]
    name = LAYERS[model_name]
    positive = saliency.explain(model, x, "eigencam", layer=name).attributions
    raw = saliency.explain(model, x, "eigencam", layer=name, relu=False).attributions
    ref = reference("eigencam", model, model.get_submodule(name), x, predicted(model, x))
    # The reference keeps whichever sign its SVD returned, per image, then applies ReLU (before
    # upsampling, as we do): the other sign's map is U(ReLU(-p)) = U(ReLU(p)) - U(p).
    candidates = [scaled_like_reference(m, "eigencam") for m in (positive, positive - raw)]
    per_image = np.minimum(*(np.abs(c - ref).reshape(len(ref), -1).max(1) for c in candidates))
    check_reference(ref)
    _MAX_DIFFERENCE[("eigencam", model_name)] = float(per_image.max())
    assert per_image.max() <= TOLERANCE


def test_eigencam_sign_follows_the_channel_sum() -> None:
    # p = Ā v₁ and p · (Ā 1) = σ₁² (v₁ · 1): the map correlates positively with the centred
    # channel sum exactly when Σ_k v₁k ≥ 0, whatever sign the SVD returns.
    activations = torch.randn(6, 5, 4, 3, generator=torch.Generator().manual_seed(0))
    for flip in (1.0, -1.0):
        maps = principal_projection(flip * activations)
        total = (flip * activations).sum(1, keepdim=True)
        total = total - total.mean(dim=(2, 3), keepdim=True)
        assert ((maps * total).flatten(1).sum(1) > 0).all()


# --------------------------------------------------------------------- exact Grad-CAM++


def curved_cnn(head: nn.Module) -> nn.Sequential:
    """conv → ReLU → conv(stride 2) → ReLU (the layer, "act", 3 × 4 × 4) → 1×1 conv → head
    activation → pool → linear; float64, seeded."""
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 4, 3, padding=1),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(4, 3, 3, stride=2, padding=1),
            act=nn.ReLU(),
            mix=nn.Conv2d(3, 5, 1),
            curve=head,
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(5, 4),
        )
    )
    return model.double().eval()


def exact_gradcam_pp_reference(model: nn.Sequential, x: Tensor, targets: list[int]) -> Tensor:
    """Grad-CAM++ from the paper's α with the true derivatives of Y = exp(f_t − f_t(A)),
    by torch.autograd.functional on the head alone, sample by sample (no shared code)."""
    names = list(model._modules)
    prefix = nn.Sequential(*[model._modules[n] for n in names[: names.index("act") + 1]])
    head = nn.Sequential(*[model._modules[n] for n in names[names.index("act") + 1 :]])
    maps = []
    for activations, target in zip(prefix(x).detach(), targets, strict=True):
        count = activations.numel()
        base = head(activations[None])[0, target].detach()

        def y(a: Tensor, target: int = target, base: Tensor = base) -> Tensor:
            return torch.exp(head(a[None])[0, target] - base)

        def second(a: Tensor) -> Tensor:
            hessian = torch.autograd.functional.hessian(y, a, create_graph=True)
            return hessian.reshape(a.numel(), a.numel()).diagonal()

        g = torch.autograd.functional.jacobian(y, activations)  # = ∂f/∂A at A (Y = 1 there)
        d2 = second(activations).view_as(activations)
        d3 = torch.autograd.functional.jacobian(second, activations)
        d3 = d3.reshape(count, count).diagonal().view_as(activations)
        total = activations.sum(dim=(1, 2), keepdim=True)
        alpha = d2 / (2 * d2 + total * d3)
        weights = (alpha * F.relu(g)).sum(dim=(1, 2), keepdim=True)
        maps.append(F.relu((weights * activations).sum(0, keepdim=True)))
    small = torch.stack(maps)
    return F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)


@pytest.mark.parametrize("head", [nn.Softplus(), nn.Tanh()], ids=["softplus", "tanh"])
def test_exact_gradcam_pp_uses_the_true_derivatives(head: nn.Module) -> None:
    model = curved_cnn(head)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    targets = [0, 2, 3]
    exact = saliency.explain(model, x, "gradcam_pp", target=targets, layer="act", exact=True)
    expected = exact_gradcam_pp_reference(model, x, targets)
    assert expected.abs().amax() > 0
    torch.testing.assert_close(exact.attributions, expected, rtol=1e-9, atol=1e-12)
    # A curved head: the closed form (which assumes f_t linear in A) is a different map.
    closed = saliency.explain(model, x, "gradcam_pp", target=targets, layer="act").attributions
    relative = (closed - exact.attributions).abs().amax() / exact.attributions.abs().amax()
    assert relative > 1e-2, f"closed form and exact differ by only {relative:.1e}"


def test_exact_gradcam_pp_equals_the_closed_form_for_a_linear_head() -> None:
    # After the layer only ReLU, a 1×1 convolution, pooling and a linear map: f_t is linear in
    # A (piecewise), Y = exp(f_t) is the exponential of a linear function, as the paper
    # assumes, and the true second and third derivatives are those of the closed form.
    model = curved_cnn(nn.ReLU())
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    exact = saliency.explain(model, x, "gradcam_pp", target=[0, 2, 3], layer="act", exact=True)
    closed = saliency.explain(model, x, "gradcam_pp", target=[0, 2, 3], layer="act")
    assert closed.attributions.abs().amax() > 0
    torch.testing.assert_close(exact.attributions, closed.attributions, rtol=1e-12, atol=1e-15)
    expected = exact_gradcam_pp_reference(model, x, [0, 2, 3])
    torch.testing.assert_close(exact.attributions, expected, rtol=1e-9, atol=1e-12)


def test_exact_gradcam_pp_is_batch_size_invariant() -> None:
    model = curved_cnn(nn.Softplus())
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    maps = [
        saliency.explain(
            model, x, "gradcam_pp", target=1, layer="act", exact=True, batch_size=b
        ).attributions
        for b in (1, 2, None)
    ]
    for other in maps[1:]:
        torch.testing.assert_close(other, maps[0], rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------- analytic cases


def test_hirescam_sums_to_the_score_of_a_linear_head() -> None:
    # The layer keeps the input's 5×6 resolution, so upsampling is the identity; with a
    # flattening linear head f_t = Σ W_t ⊙ A + b_t, HiResCAM's map sums to f_t − b_t exactly,
    # while Grad-CAM's (one weight per channel) does not.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 5 * 6, 4)
    ).double()
    x = torch.randn(3, 2, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 3, 1])
    with torch.no_grad():
        scores = model(x)[torch.arange(3), targets] - model[3].bias[targets]
    hires = saliency.explain(model, x, "hirescam", target=targets, layer="1", relu=False)
    torch.testing.assert_close(hires.attributions.sum(dim=(1, 2, 3)), scores, rtol=1e-12, atol=0)
    cam = saliency.explain(model, x, "gradcam", target=targets, layer="1", relu=False)
    assert (cam.attributions.sum(dim=(1, 2, 3)) - scores).abs().amax() > 1e-3


def test_fullgrad_reads_gradients_before_an_inplace_relu() -> None:
    # The tensor hook on a batch norm's output is registered before ReLU(inplace=True)
    # overwrites it: the maps equal those of the same model with an out-of-place ReLU.
    def net(inplace: bool) -> nn.Module:
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1, bias=False),
            nn.BatchNorm2d(4),
            nn.ReLU(inplace=inplace),
            nn.Conv2d(4, 6, 3, stride=2, padding=1),
            nn.ReLU(inplace=inplace),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(6, 3),
        )
        with torch.no_grad():
            model[1].running_mean.uniform_(-0.5, 0.5)
            model[1].bias.uniform_(-0.5, 0.5)
        return model.eval()

    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    inplace = saliency.explain(net(True), x, "fullgrad", target=[0, 2]).attributions
    plain = saliency.explain(net(False), x, "fullgrad", target=[0, 2]).attributions
    torch.testing.assert_close(inplace, plain, rtol=0, atol=0)
    # The bias terms count: without the batch norm's bias the map changes.
    model = net(False)
    with torch.no_grad():
        model[1].bias.zero_()
        model[1].running_mean.zero_()
        model[3].bias.zero_()
    without = saliency.explain(model, x, "fullgrad", target=[0, 2]).attributions
    assert (without - plain).abs().amax() > 1e-2


# ------------------------------------------------------------------- forward-only batching


class RowCounter(nn.Module):
    """Records the number of rows of every forward pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.rows.append(len(x))
        return self.model(x)


def tiny_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 6, 3, padding=1),
            act1=nn.ReLU(),
            conv2=nn.Conv2d(6, 8, 3, stride=2),
            act2=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(8, 5),
        )
    ).eval()


@pytest.mark.parametrize("method", FORWARD_ONLY)
def test_forward_only_methods_run_in_bounded_chunks(method: str) -> None:
    x = torch.randn(3, 3, 11, 13, generator=torch.Generator().manual_seed(1))
    counter = RowCounter(tiny_cnn())
    reference_map = saliency.explain(counter, x, method, target=[0, 2, 4]).attributions
    # 3 samples × 8 channels of `act2` scored one chunk at a time, never all masks at once.
    counter.rows.clear()
    chunked = saliency.explain(counter, x, method, target=[0, 2, 4], batch_size=5).attributions
    assert max(counter.rows) <= 5
    assert sum(counter.rows) == 3 + 3 * 8  # the layer's activations, then one pass per mask
    torch.testing.assert_close(chunked, reference_map, rtol=1e-6, atol=1e-7)
    # The automatic size follows the memory budget (200× a float32 point per no-grad point).
    counter.rows.clear()
    point = 3 * 11 * 13 * 4 * 200
    saliency.explain(counter, x, method, target=[0, 2, 4], memory_budget=4 * point)
    assert max(counter.rows) <= 4 and sum(counter.rows) == 3 + 3 * 8


@pytest.mark.parametrize("method", ("scorecam", "ablationcam", "eigencam"))
def test_forward_only_methods_predict_on_the_way(method: str) -> None:
    # With target=None the pass that records the layer's activations also gives the predicted
    # classes: no separate prediction pass. (The automatic layer choice runs on one image.)
    x = torch.randn(3, 3, 11, 13, generator=torch.Generator().manual_seed(1))
    counter = RowCounter(tiny_cnn())
    ex = saliency.explain(counter, x, method)
    passes = 1 if method == "eigencam" else 1 + 8
    assert counter.rows[0] == 1 and sum(counter.rows[1:]) == 3 * passes
    with torch.no_grad():
        assert ex.targets is not None and ex.targets.tolist() == counter(x).argmax(1).tolist()


@pytest.mark.parametrize("method", ("scorecam", "ablationcam", "eigencam"))
def test_forward_only_layer_must_be_a_map(method: str) -> None:
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    counter = RowCounter(tiny_cnn())
    # An (N, 8) layer has no channel maps to mask, ablate or project: refused after one pass.
    with pytest.raises(LayerNotFoundError, match=r"outputs shape \(2, 8\).*\(N, C, h, w\)"):
        saliency.explain(counter, x, method, layer="model.flatten")
    assert counter.rows == [2]


# -------------------------------------------------------------- the family on a small model


@pytest.mark.parametrize("method", FAMILY)
def test_shapes_dtypes_and_batch_size_invariance(method: str) -> None:
    model = tiny_cnn()
    x = torch.randn(3, 3, 11, 13, generator=torch.Generator().manual_seed(1))
    maps = [
        saliency.explain(model, x, method, target=[0, 2, 4], batch_size=b).attributions
        for b in (1, 2, None)
    ]
    assert maps[0].shape == (3, 1, 11, 13) and maps[0].dtype == torch.float32
    assert maps[0].abs().amax() > 0
    # Chunks of other sizes round convolutions differently: slack relative to the map's scale.
    scale = float(maps[0].abs().amax())
    for other in maps[1:]:
        torch.testing.assert_close(other, maps[0], rtol=1e-5, atol=1e-6 * scale)
    x64 = x.double()
    ex = saliency.explain(model.double(), x64, method, target=[0, 2, 4])
    assert ex.attributions.dtype == torch.float64
    torch.testing.assert_close(ex.attributions.float(), maps[0], rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("method", FAMILY)
def test_callable_target_and_bf16(method: str) -> None:
    model = tiny_cnn()
    x = torch.randn(2, 3, 11, 13, generator=torch.Generator().manual_seed(1))

    def margin(outputs: Tensor) -> Tensor:
        return outputs[:, 2] - outputs[:, 1]

    by_function = saliency.explain(model, x, method, target=margin)
    assert by_function.targets is None
    assert torch.isfinite(by_function.attributions).all()
    bf16 = saliency.explain(model, x, method, target=[1, 3], precision="bf16").attributions
    fp32 = saliency.explain(model, x, method, target=[1, 3]).attributions
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    cosine = F.cosine_similarity(bf16.flatten(1), fp32.flatten(1)).min()
    assert cosine > 0.9, f"bf16 vs fp32 cosine similarity {cosine:.3f}"


# --------------------------------------------------------------------- layers and options


@pytest.mark.parametrize("method", ("gradcam", *LAYER_METHODS))
def test_layer_is_resolved_in_the_options(method: str) -> None:
    model = tiny_cnn()
    x = torch.randn(2, 3, 11, 13, generator=torch.Generator().manual_seed(1))
    automatic = saliency.explain(model, x, method, target=0)
    assert automatic.options["layer"] == "act2"  # the last spatial map
    by_module = saliency.explain(model, x, method, target=0, layer=model.conv2)
    assert by_module.options["layer"] == "conv2"
    by_name = saliency.explain(model, x, method, target=0, layer="act2")
    torch.testing.assert_close(by_name.attributions, automatic.attributions)


@pytest.mark.parametrize("method", LAYER_METHODS)
def test_option_errors(method: str) -> None:
    model = tiny_cnn()
    x = torch.randn(1, 3, 11, 13, generator=torch.Generator().manual_seed(1))
    with pytest.raises(InvalidOptionError, match="relu='yes'"):
        saliency.explain(model, x, method, relu="yes")
    with pytest.raises(InvalidOptionError, match="no option 'exactly'"):
        saliency.explain(model, x, method, exactly=True)
    with pytest.raises(LayerNotFoundError, match="layer 'conv3' does not exist"):
        saliency.explain(model, x, method, layer="conv3")
    with pytest.raises(LayerNotFoundError, match="not a submodule"):
        saliency.explain(model, x, method, layer=nn.Conv2d(3, 3, 1))


def test_gradcam_pp_exact_must_be_a_bool() -> None:
    with pytest.raises(InvalidOptionError, match="exact=1; accepted: True or False"):
        saliency.explain(tiny_cnn(), torch.zeros(1, 3, 8, 8), "gradcam_pp", exact=1)


def test_fullgrad_has_no_layer_option() -> None:
    with pytest.raises(InvalidOptionError, match="no option 'layer'"):
        saliency.explain(tiny_cnn(), torch.zeros(1, 3, 8, 8), "fullgrad", layer="conv1")


def test_registered_with_their_papers() -> None:
    for method in FAMILY:
        cls = saliency.get_method(method)
        assert cls.output == "layer"
        assert cls.paper
    assert [saliency.get_method(m).derivative_order for m in FORWARD_ONLY] == [0, 0]
