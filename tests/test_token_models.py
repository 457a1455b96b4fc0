"""Transformers just work: token and channels-last layers, the automatic layer, attention
methods and second order, on small random-init models of torchvision, timm and Hugging Face.

References: pytorch-grad-cam with the reshape a user writes by hand (hard-coded prefix and grid)
on the same layer; attention rollout and the gradient-weighted attention rule computed by hand
from each library's own materialised attention; Hessian-vector products against central
differences of gradients. Everything is offline (``pretrained=False``, configs built here).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from pytorch_grad_cam import (
    AblationCAM,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.ablation_layer import AblationLayerVit
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import Tensor, nn
from torchvision.models.swin_transformer import SwinTransformer
from transformers import ViTConfig, ViTForImageClassification
from transformers.modeling_outputs import ImageClassifierOutput

import saliency
from saliency.attention import record_attention
from saliency.errors import LayerNotFoundError, ModelOutputError
from saliency.layers import find_layer, layer_layout
from saliency.tokens import Layout, patch_grid, probe_points, probed_layout, proportional_layout

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = 5
Reshape = Callable[[Tensor], Tensor] | None


def tokens_to_map(prefix: int, h: int, w: int) -> Callable[[Tensor], Tensor]:
    """The reshape_transform pytorch-grad-cam asks users to write, with a hard-coded grid."""

    def reshape(tensor: Tensor) -> Tensor:
        patches = tensor[:, prefix:, :]
        return patches.reshape(tensor.size(0), h, w, tensor.size(2)).permute(0, 3, 1, 2)

    return reshape


def channels_last_to_map(tensor: Tensor) -> Tensor:
    return tensor.permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------------- models


def torchvision_vit() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=CLASSES,
    )
    nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision starts the head at zero
    return model


def torchvision_swin() -> nn.Module:
    torch.manual_seed(0)
    return SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[1, 1, 1], num_heads=[2, 2, 2],
        window_size=[2, 2], num_classes=CLASSES,
    )


def timm_vit() -> nn.Module:  # a non-square grid: 4×6 patches
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=(32, 48), patch_size=8, depth=2,
        embed_dim=32, num_heads=2, num_classes=CLASSES,
    )


def timm_deit() -> nn.Module:  # class + distillation token
    torch.manual_seed(0)
    return timm.create_model(
        "deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
        embed_dim=32, num_heads=2, num_classes=CLASSES,
    )


def timm_dinov2() -> nn.Module:  # class + 4 register tokens
    torch.manual_seed(0)
    return timm.create_model(
        "vit_small_patch14_reg4_dinov2", pretrained=False, img_size=42, patch_size=14, depth=2,
        embed_dim=32, num_heads=2, num_classes=CLASSES,
    )


def timm_swin() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, img_size=32, patch_size=4,
        window_size=2, embed_dim=16, depths=(1, 1, 1), num_heads=(2, 2, 2), num_classes=CLASSES,
    )


def timm_convnext() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "convnext_atto", pretrained=False, depths=(1, 1, 1, 1), dims=(8, 16, 24, 32),
        num_classes=CLASSES,
    )


def hf_vit(attention: str = "sdpa") -> nn.Module:
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=CLASSES, initializer_range=0.2,
        attn_implementation=attention,
    )
    return ViTForImageClassification(config)


@dataclass(frozen=True)
class Case:
    """A model, its input size, the automatic layer expected and the hand reshape for it."""

    make: Callable[[], nn.Module]
    size: tuple[int, int]
    layer: str
    layout: Layout
    reshape: Reshape
    attention: bool  # global self-attention with a class token (rollout applies)


CASES: dict[str, Case] = {
    "torchvision_vit": Case(
        torchvision_vit, (32, 32), "encoder.layers.encoder_layer_1.ln_1",
        Layout("tokens", 1, (4, 4)), tokens_to_map(1, 4, 4), True,
    ),
    "torchvision_swin": Case(
        torchvision_swin, (32, 32), "permute", Layout("channels_first"), None, False
    ),
    "timm_vit": Case(
        timm_vit, (32, 48), "blocks.1.norm1", Layout("tokens", 1, (4, 6)),
        tokens_to_map(1, 4, 6), True,
    ),
    "timm_deit": Case(
        timm_deit, (32, 32), "blocks.1.norm1", Layout("tokens", 2, (4, 4)),
        tokens_to_map(2, 4, 4), True,
    ),
    "timm_dinov2": Case(
        timm_dinov2, (42, 42), "blocks.1.norm1", Layout("tokens", 5, (3, 3)),
        tokens_to_map(5, 3, 3), True,
    ),
    "timm_swin": Case(
        timm_swin, (32, 32), "norm", Layout("channels_last"), channels_last_to_map, False
    ),
    "timm_convnext": Case(
        timm_convnext, (64, 64), "stages", Layout("channels_first"), None, False
    ),
    "hf_vit": Case(
        hf_vit, (32, 32), "vit.layers.1.layernorm_before", Layout("tokens", 1, (4, 4)),
        tokens_to_map(1, 4, 4), True,
    ),
}
ATTENTION = [name for name, case in CASES.items() if case.attention]
PATCH_EMBEDDINGS = {"conv_proj", "patch_embed", "patch_embed.proj", "features.0", "stem"}


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {name: case.make().eval() for name, case in CASES.items()}


def inputs_for(name: str, n: int = 3, dtype: torch.dtype = torch.float32) -> Tensor:
    h, w = CASES[name].size
    return torch.randn(n, 3, h, w, dtype=dtype, generator=torch.Generator().manual_seed(1))


def logits(model: nn.Module, x: Tensor) -> Tensor:
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


class Logits(nn.Module):
    """The model with its output reduced to the logits tensor (for the reference libraries)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return logits(self.model, x)


class RawGradCAM(GradCAM):
    """pytorch-grad-cam's Grad-CAM, keeping its per-layer CAM before normalisation."""

    raw: Any = None

    def get_cam_image(self, *args: Any, **kwargs: Any) -> Any:
        self.raw = super().get_cam_image(*args, **kwargs)
        return self.raw


def grad_cam_reference(
    model: nn.Module,
    layer: nn.Module,
    x: Tensor,
    target: list[int],
    reshape: Reshape,
    relu: bool = True,
) -> Tensor:
    """pytorch-grad-cam on ``layer`` with the hand reshape, then (its) ReLU and the same
    bilinear upsampling (align_corners=False) as ours, before its min-max normalisation."""
    with RawGradCAM(model=Logits(model), target_layers=[layer], reshape_transform=reshape) as cam:
        cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in target])
        raw = torch.from_numpy(cam.raw).float()[:, None]
    raw = raw.clamp_min(0) if relu else raw
    model.eval()
    return F.interpolate(raw, size=x.shape[-2:], mode="bilinear", align_corners=False)


def assert_maps_equal(ours: Tensor, reference: Tensor) -> None:
    scale = reference.abs().max()
    assert scale > 0, "the reference map is all zeros: the comparison would be vacuous"
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5 * float(scale))


# ------------------------------------------------------------------ automatic layer, Grad-CAM


@pytest.mark.parametrize("name", list(CASES))
def test_automatic_layer_is_a_map_layer_and_equals_pytorch_grad_cam(
    models: dict[str, nn.Module], name: str
) -> None:
    case, model, x = CASES[name], models[name], inputs_for(name)
    target = [0, 2, 4]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no blank-map warning: the layer carries gradient
        ex = saliency.explain(model, x, "gradcam", target=target)
    assert ex.options["layer"] == case.layer
    assert ex.options["layer"] not in PATCH_EMBEDDINGS
    layout = layer_layout(model.get_submodule(case.layer))
    assert layout is not None
    assert (layout.kind, layout.prefix, layout.grid) == (
        case.layout.kind, case.layout.prefix, case.layout.grid,
    )
    maps = ex.attributions
    assert maps.shape == (3, 1, *case.size)
    assert torch.isfinite(maps).all()
    assert (maps.flatten(1).amax(1) > maps.flatten(1).amin(1)).all(), "a constant map"
    reference = grad_cam_reference(model, model.get_submodule(case.layer), x, target, case.reshape)
    assert_maps_equal(maps, reference)


@pytest.mark.parametrize(
    ("name", "layer", "reshape"),
    [
        ("timm_vit", "blocks.0", tokens_to_map(1, 4, 6)),
        ("timm_deit", "blocks.0.norm2", tokens_to_map(2, 4, 4)),
        ("timm_dinov2", "blocks.0", tokens_to_map(5, 3, 3)),
        ("torchvision_vit", "encoder.layers.encoder_layer_0", tokens_to_map(1, 4, 4)),
        ("hf_vit", "vit.layers.0", tokens_to_map(1, 4, 4)),
        ("timm_swin", "layers.1", channels_last_to_map),
        ("torchvision_swin", "features.5", channels_last_to_map),
        ("timm_convnext", "stages.2", None),
    ],
)
def test_named_token_and_channels_last_layers_equal_pytorch_grad_cam(
    models: dict[str, nn.Module], name: str, layer: str, reshape: Reshape
) -> None:
    model, x = models[name], inputs_for(name)
    target = [1, 1, 3]
    for method_options in ({"layer": layer}, {"layer": model.get_submodule(layer)}):
        ex = saliency.explain(model, x, "gradcam", target=target, **method_options)
        assert ex.options["layer"] == layer
        reference = grad_cam_reference(model, model.get_submodule(layer), x, target, reshape)
        assert_maps_equal(ex.attributions, reference)


def test_gradcam_relu_false_keeps_the_sign_on_tokens(models: dict[str, nn.Module]) -> None:
    model, x = models["timm_vit"], inputs_for("timm_vit")
    signed = saliency.explain(model, x, "gradcam", target=2, layer="blocks.0", relu=False)
    assert bool((signed.attributions < 0).any())
    reference = grad_cam_reference(
        model, model.blocks[0], x, [2, 2, 2], tokens_to_map(1, 4, 6), relu=False
    )
    assert_maps_equal(signed.attributions, reference)


@pytest.mark.parametrize(
    ("name", "layer"),
    [
        ("timm_vit", "blocks.1"),
        ("timm_deit", "norm"),
        ("torchvision_vit", "encoder.layers.encoder_layer_1"),
        ("hf_vit", "vit.layernorm"),
    ],
)
def test_the_last_block_of_a_vit_gives_blank_maps_with_a_warning_naming_it(
    models: dict[str, nn.Module], name: str, layer: str
) -> None:
    with pytest.warns(RuntimeWarning, match=f"maps of layer '{layer}' are all zeros for 3 of 3"):
        ex = saliency.explain(models[name], inputs_for(name), "gradcam", target=0, layer=layer)
    assert not ex.attributions.any()


def test_automatic_layer_is_remembered_per_model_and_input_shape() -> None:
    model = timm_vit().eval()
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda m, args: calls.append(len(args[0])))
    try:
        saliency.explain(model, inputs_for("timm_vit"), "gradcam", target=0)
        first = list(calls)
        calls.clear()
        saliency.explain(model, inputs_for("timm_vit"), "gradcam", target=0)
    finally:
        handle.remove()
    assert first[-1] == 3 and len(first) >= 2  # the layer search, then the pass
    assert calls == [3]  # remembered: the pass only


# ---------------------------------------------------------------- the CAM family on tokens

CAM_REFERENCES: dict[str, type] = {
    "gradcam_pp": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "scorecam": ScoreCAM,
    "ablationcam": AblationCAM,
    "eigencam": EigenCAM,
}
# Grad-CAM++'s reference adds ε = 1e-6 to α's denominator: logits scaled by 1e4 make it
# negligible (as in test_cam_family).
GRADCAM_PP_LOGIT_SCALE = 1e4


class ZeroAblationVit(AblationLayerVit):
    """pytorch-grad-cam's token ablation with the paper's value, 0: its own uses min − 10⁷
    for layers without an exact zero, which a LayerNorm output never has."""

    def __call__(self, x: Tensor) -> Tensor:
        output = self.activations.transpose(-1, 1).clone()
        for i in range(output.size(0)):
            output[i, self.indices[i]] = 0
        return output.transpose(-1, 1)


class ScaledLogits(nn.Module):
    def __init__(self, model: nn.Module, factor: float) -> None:
        super().__init__()
        self.model = model
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return logits(self.model, x) * self.factor


def minmax_twice(maps: Tensor) -> np.ndarray:
    """Our raw maps scaled as pytorch-grad-cam scales its own (min-max at the layer's resolution,
    resized, min-max again; bilinear resizing commutes with min-max)."""
    return scale_cam_image(scale_cam_image(maps[:, 0].detach().numpy()))


@pytest.mark.parametrize("name", ["timm_vit", "timm_deit", "timm_swin", "torchvision_vit"])
@pytest.mark.parametrize("method", list(CAM_REFERENCES))
def test_cam_family_on_token_layers_equals_pytorch_grad_cam(
    models: dict[str, nn.Module], name: str, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    case, model, x = CASES[name], models[name], inputs_for(name, n=2)
    with torch.no_grad():
        target = logits(model, x).argmax(1).tolist()  # classes with positive evidence
    explained = ScaledLogits(model, GRADCAM_PP_LOGIT_SCALE) if method == "gradcam_pp" else model
    reference_model = explained if method == "gradcam_pp" else Logits(model)
    layer_name = ("model." if method == "gradcam_pp" else "") + case.layer
    ours = saliency.explain(explained, x, method, target=target, layer=layer_name).attributions
    # Score-CAM's reference upsamples its masks with align_corners=True; ours, like the maps,
    # does not (see test_cam_family): the same interpolation on both sides.
    monkeypatch.setattr(
        torch.nn,
        "UpsamplingBilinear2d",
        lambda size: nn.Upsample(size=size, mode="bilinear", align_corners=False),
    )
    extra = {"ablation_layer": ZeroAblationVit()} if method == "ablationcam" else {}
    with CAM_REFERENCES[method](
        model=reference_model,
        target_layers=[model.get_submodule(case.layer)],
        reshape_transform=case.reshape,
        **extra,
    ) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in target])
    assert (ref.reshape(len(ref), -1).max(1) > 0.99).all(), "a degenerate reference map"
    if method == "eigencam":  # up to the sign of the component, per image
        raw = saliency.explain(model, x, method, layer=case.layer, relu=False).attributions
        candidates = [minmax_twice(m) for m in (ours, ours - raw)]
        difference = float(
            np.minimum(*(np.abs(c - ref).reshape(len(ref), -1).max(1) for c in candidates)).max()
        )
    else:
        difference = float(np.abs(minmax_twice(ours) - ref).max())
    assert difference <= 1e-4, f"{method} on {name}: {difference:.2e}"


# ------------------------------------------------------------- a transformer without metadata


class HandAttention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: Tensor) -> Tensor:
        n, length, dim = tokens.shape
        q, k, v = self.qkv(tokens).view(n, length, 3, 2, dim // 2).permute(2, 0, 3, 1, 4)
        mixed = F.scaled_dot_product_attention(q, k, v)
        return self.proj(mixed.transpose(1, 2).reshape(n, length, dim))


class HandBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = HandAttention(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, tokens: Tensor) -> Tensor:
        tokens = tokens + self.attn(self.norm1(tokens))
        return tokens + self.mlp(self.norm2(tokens))


class HandViT(nn.Module):
    """A ViT no library describes: 8-px patches, a class token then 2 register tokens."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(3, dim, 8, stride=8)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.registers = nn.Parameter(torch.randn(1, 2, dim))
        self.position = nn.Parameter(0.1 * torch.randn(1, 15, dim))
        self.blocks = nn.Sequential(HandBlock(dim), HandBlock(dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        patches = self.embed(x).flatten(2).transpose(1, 2) + self.position
        prefix = torch.cat([self.cls, self.registers], 1).expand(len(x), -1, -1)
        return self.head(self.norm(self.blocks(torch.cat([prefix, patches], 1)))[:, 0])


def test_structural_probe_finds_prefix_and_non_square_grid_without_metadata() -> None:
    model = HandViT().eval()
    x = torch.randn(2, 3, 24, 40, generator=torch.Generator().manual_seed(0))  # 3×5 patches
    ex = saliency.explain(model, x, "gradcam", target=[1, 2])
    assert ex.options["layer"] == "blocks.1.norm1"
    layout = layer_layout(model.blocks[1].norm1)
    assert layout == Layout("tokens", 3, (3, 5), "probe")
    reference = grad_cam_reference(model, model.blocks[1].norm1, x, [1, 2], tokens_to_map(3, 3, 5))
    assert_maps_equal(ex.attributions, reference)
    # A named layer is read from its first output, by the input's proportions (no probe pass).
    named = saliency.explain(model, x, "gradcam", target=[1, 2], layer="blocks.0")
    assert layer_layout(model.blocks[0]) == Layout("tokens", 3, (3, 5), "proportions")
    reference = grad_cam_reference(model, model.blocks[0], x, [1, 2], tokens_to_map(3, 3, 5))
    assert_maps_equal(named.attributions, reference)
    # Rollout reads the class token (first) and leaves the registers out of the map.
    assert saliency.explain(model, x, "attention_rollout").attributions.shape == (2, 1, 24, 40)


def test_probe_reads_each_corner() -> None:
    point = torch.zeros(1, 3, 24, 40)
    batch = probe_points(point)
    changed = (batch[1:] != 0).flatten(2).any(1).nonzero()[:, 1].tolist()
    assert changed == [0, 39, 23 * 40, 24 * 40 - 1]
    # Token responses that put the corners at tokens 3, 7, 13, 17: prefix 3, a 3×5 grid.
    responses = torch.zeros(5, 18, 4)
    for copy_index, token in enumerate((3, 7, 13, 17), start=1):
        responses[copy_index, token] = 1.0
    assert probed_layout("tokens", responses, torch.Size((18, 4)), (24, 40)) == Layout(
        "tokens", 3, (3, 5), "probe"
    )
    responses[4, 17], responses[4, 16] = 0.0, 1.0  # the last patch is not where a grid puts it
    assert probed_layout("tokens", responses, torch.Size((18, 4)), (24, 40)) is None


def test_shape_rules() -> None:
    assert patch_grid((4, 6), (32, 48)) and not patch_grid((5, 5), (32, 48))
    assert patch_grid((3, 3), (42, 42)) and not patch_grid((3, 4), (42, 42))
    assert patch_grid((3, 3), (40, 40))  # ⌈40/14⌉ padded patches
    assert proportional_layout(17, (32, 32)) == Layout("tokens", 1, (4, 4), "proportions")
    assert proportional_layout(4 + 1 + 196, (224, 224)) == Layout(
        "tokens", 5, (14, 14), "proportions"
    )
    assert proportional_layout(16, (32, 32)) == Layout("tokens", 0, (4, 4), "proportions")
    tokens = torch.arange(2 * 18 * 4.0).view(2, 18, 4)
    layout = Layout("tokens", 3, (3, 5))
    feature_map = layout.to_map(tokens)
    assert feature_map.shape == (2, 4, 3, 5)
    torch.testing.assert_close(feature_map[:, :, 1, 2], tokens[:, 3 + 5 + 2])
    torch.testing.assert_close(layout.from_map(feature_map, tokens), tokens)
    nhwc = torch.randn(2, 3, 5, 4)
    assert Layout("channels_last").to_map(nhwc).shape == (2, 4, 3, 5)
    back = Layout("channels_last").from_map(nhwc.permute(0, 3, 1, 2), nhwc)
    torch.testing.assert_close(back, nhwc)


def test_a_layer_that_is_not_a_map_is_refused(models: dict[str, nn.Module]) -> None:
    model = models["timm_vit"]
    for layer in ("head", "fc_norm"):  # (N, K) and (N, D): no grid
        with pytest.raises(LayerNotFoundError, match="not a map of the input"):
            saliency.explain(model, inputs_for("timm_vit"), "gradcam", layer=layer)


# ------------------------------------------------------------------------ attention methods


def hand_attention(name: str, model: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """The model's logits and attention probabilities, materialised by the library itself."""
    if name.startswith("timm"):
        maps: list[Tensor] = []
        handles = []
        for block in model.blocks:
            block.attn.fused_attn = False
            drop = block.attn.attn_drop
            handles.append(drop.register_forward_hook(lambda m, i, o: maps.append(o)))
        try:
            out = model(x)
        finally:
            for block, handle in zip(model.blocks, handles, strict=True):
                block.attn.fused_attn = True
                handle.remove()
        return out, maps
    if name == "hf_vit":
        eager = copy.deepcopy(model)
        eager.config._attn_implementation = "eager"
        out = eager(x, output_attentions=True)
        return out.logits, list(out.attentions)
    assert name == "torchvision_vit"
    inputs: list[Tensor] = []
    handles = [
        layer.ln_1.register_forward_hook(lambda m, i, o: inputs.append(o))
        for layer in model.encoder.layers
    ]
    try:
        out = model(x)
    finally:
        for handle in handles:
            handle.remove()
    maps = [
        layer.self_attention(y, y, y, need_weights=True, average_attn_weights=False)[1]
        for layer, y in zip(model.encoder.layers, inputs, strict=True)
    ]
    return out, maps


def class_row(relevance: Tensor, layout: Layout, size: tuple[int, int]) -> Tensor:
    h, w = layout.grid or (0, 0)
    row = relevance[:, 0, layout.prefix :].reshape(-1, 1, h, w)
    return F.interpolate(row, size=size, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("name", ATTENTION)
def test_attention_rollout_equals_a_hand_computation(
    models: dict[str, nn.Module], name: str
) -> None:
    model, x = models[name], inputs_for(name)
    ex = saliency.explain(model, x, "attention_rollout")
    with torch.no_grad():
        _, maps = hand_attention(name, model, x)
    assert len(maps) == 2
    rollout = None
    for attention in maps:
        step = 0.5 * attention.mean(1) + 0.5 * torch.eye(attention.shape[-1])
        step = step / step.sum(-1, keepdim=True)
        rollout = step if rollout is None else step @ rollout
    assert rollout is not None
    expected = class_row(rollout, CASES[name].layout, CASES[name].size)
    assert_maps_equal(ex.attributions, expected)
    assert torch.equal(ex.targets, logits(model, x).argmax(1))


@pytest.mark.parametrize("name", [n for n in ATTENTION if n != "torchvision_vit"])
def test_transformer_attribution_equals_a_hand_computation(
    models: dict[str, nn.Module], name: str
) -> None:
    # torchvision's nn.MultiheadAttention returns a copy of its weights: no gradient to read.
    model, x = models[name], inputs_for(name)
    target = [3, 0, 1]
    ex = saliency.explain(model, x, "transformer_attribution", target=target)
    out, maps = hand_attention(name, model, x.clone())
    grads = torch.autograd.grad(out[torch.arange(3), target].sum(), maps)
    relevance = torch.eye(maps[0].shape[-1]).expand(3, -1, -1)
    for attention, grad in zip(maps, grads, strict=True):
        relevance = relevance + (grad * attention).clamp(min=0).mean(1) @ relevance
    expected = class_row(relevance.detach(), CASES[name].layout, CASES[name].size)
    assert_maps_equal(ex.attributions, expected)
    other = saliency.explain(model, x, "transformer_attribution", target=[4, 4, 4])
    assert not torch.allclose(other.attributions, ex.attributions), "class-specific"


def test_attention_methods_run_in_chunks(models: dict[str, nn.Module]) -> None:
    model, x = models["timm_deit"], inputs_for("timm_deit", n=5)
    for method in ("attention_rollout", "transformer_attribution"):
        whole = saliency.explain(model, x, method, target=1).attributions
        chunked = saliency.explain(model, x, method, target=1, batch_size=2).attributions
        torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-7)


def test_hf_eager_attention_is_recorded_and_switched_back() -> None:
    model = hf_vit("eager").eval()
    x = inputs_for("hf_vit")
    ex = saliency.explain(model, x, "attention_rollout")
    assert model.config._attn_implementation == "eager"
    _, maps = hand_attention("hf_vit", model, x)
    assert len(maps) == 2 and ex.attributions.shape == (3, 1, 32, 32)


@pytest.mark.parametrize("name", ["timm_swin", "torchvision_swin", "timm_convnext"])
def test_attention_methods_refuse_models_without_global_attention(
    models: dict[str, nn.Module], name: str
) -> None:
    assert not saliency.get_method("attention_rollout").applies_to(models[name])
    with pytest.raises(LayerNotFoundError, match="attention"):
        saliency.explain(models[name], inputs_for(name), "attention_rollout")


def test_attention_switches_are_restored_even_when_the_model_raises() -> None:
    model = timm_deit().eval()
    model.blocks[0].attn.fused_attn = False  # one hand-computed, one fused
    hf = hf_vit("eager").eval()
    sdpa = F.scaled_dot_product_attention
    fast_path = torch.backends.mha.get_fastpath_enabled()

    def boom(module: nn.Module, args: Any, output: Tensor) -> None:
        raise RuntimeError("boom in block 1")

    for method in ("attention_rollout", "transformer_attribution"):
        handle = model.blocks[1].register_forward_hook(boom)
        with pytest.raises(RuntimeError, match="boom"):
            saliency.explain(model, inputs_for("timm_deit"), method)
        handle.remove()
        with pytest.raises(RuntimeError, match="boom"), record_attention(hf):
            assert hf.config._attn_implementation == "sdpa"
            raise RuntimeError("boom inside the recording")
        assert [b.attn.fused_attn for b in model.blocks] == [False, True]
        assert hf.config._attn_implementation == "eager"
        assert F.scaled_dot_product_attention is sdpa
        assert torch.backends.mha.get_fastpath_enabled() == fast_path
        assert all(not m._forward_hooks for m in model.modules())


def _state(model: nn.Module) -> dict[str, Any]:
    return {
        "hooks": [
            (name, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for name, m in model.named_modules()
        ],
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad is None for p in model.parameters()],
        "fused": [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")],
        "sdpa": F.scaled_dot_product_attention,
        "fast_path": torch.backends.mha.get_fastpath_enabled(),
    }


@pytest.mark.parametrize("name", list(CASES))
def test_lifecycle_on_token_models(name: str) -> None:
    model = CASES[name].make().train()  # in train mode: explain must run it in eval mode
    next(iter(model.parameters())).requires_grad_(False)
    before = _state(model)
    methods = ["gradcam", *(["attention_rollout", "transformer_attribution"] * (name in ATTENTION))]
    x = inputs_for(name, n=2)
    for method in methods:
        for create_graph in (False, True):
            ex = saliency.explain(model, x, method, target=1, create_graph=create_graph)
            assert torch.isfinite(ex.attributions).all()
            assert _state(model) == before, (method, create_graph)
    calls = 0

    def fail_on_the_second_forward(module: nn.Module, args: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("the model failed")

    for method in methods:
        fresh = CASES[name].make().train()  # no layer remembered: the search is the first call
        before = _state(fresh)
        handle = fresh.register_forward_pre_hook(fail_on_the_second_forward)
        calls = 0
        try:
            with pytest.raises(RuntimeError, match="the model failed"):
                saliency.explain(fresh, x, method, target=1, batch_size=1)
        finally:
            handle.remove()
        assert _state(fresh) == before, method


# -------------------------------------------------------------------------------- second order


@pytest.mark.parametrize("name", list(CASES))
def test_hvp_equals_central_differences(models: dict[str, nn.Module], name: str) -> None:
    model = copy.deepcopy(models[name]).double()
    x = inputs_for(name, n=2, dtype=torch.float64)
    v = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    target = [1, 3]
    product = saliency.hvp(model, x, v, target=target)

    def gradient(z: Tensor) -> Tensor:
        z = z.clone().requires_grad_(True)
        return torch.autograd.grad(logits(model, z)[[0, 1], target].sum(), z)[0]

    eps = 1e-5
    finite = (gradient(x + eps * v) - gradient(x - eps * v)) / (2 * eps)
    torch.testing.assert_close(product, finite, rtol=1e-5, atol=1e-7 * float(finite.abs().max()))


def test_second_order_through_fused_attention_in_float32(models: dict[str, nn.Module]) -> None:
    """Fused CPU attention has no double backward; with create_graph the math kernel runs."""
    model, x = models["timm_vit"], inputs_for("timm_vit", n=2)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    assert saliency.hvp(model, x, v, target=0).abs().sum() > 0
    ih = saliency.explain(model, x, "integrated_hessians", steps=2)
    assert torch.isfinite(ih.attributions).all()
    from saliency.losses import input_gradient_penalty

    mask = torch.zeros(2, 1, 32, 48)
    mask[..., :8, :8] = 1
    penalty = input_gradient_penalty(model, x, [0, 1], mask, create_graph=True)
    (grad,) = torch.autograd.grad(penalty, model.head.weight)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


# ------------------------------------------------------------------------------ model outputs


class Wrapped(nn.Module):
    """A tiny CNN whose logits come back in another form."""

    def __init__(self, form: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.form = form
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh())
        self.head = nn.Linear(6, CLASSES)

    def forward(self, x: Tensor) -> Any:
        features = self.features(x)
        scores = self.head(features.mean((2, 3)))
        if self.form == "hf":
            return ImageClassifierOutput(logits=scores)
        if self.form == "dict":
            return {"features": features, "logits": scores}
        if self.form == "tuple":
            return scores, features
        if self.form == "list":
            return [scores]
        if self.form == "no logits":
            return {"scores": scores}
        if self.form == "tuple of maps":
            return features, scores
        return scores


@pytest.mark.parametrize("form", ["hf", "dict", "tuple", "list"])
@pytest.mark.parametrize("method", ["gradient", "gradcam", "integrated_gradients"])
def test_outputs_with_logits_take_class_targets(form: str, method: str) -> None:
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    options: dict[str, Any] = {
        "gradient": {},
        "gradcam": {"relu": False},
        "integrated_gradients": {"steps": 3},
    }[method]
    plain = saliency.explain(Wrapped("tensor"), x, method, **options)
    assert plain.attributions.abs().amax() > 0
    for target in (None, 2, [0, 1, 4]):
        ours = saliency.explain(Wrapped(form), x, method, target=target, **options)
        expected = saliency.explain(Wrapped("tensor"), x, method, target=target, **options)
        torch.testing.assert_close(ours.attributions, expected.attributions)
        assert torch.equal(ours.targets, expected.targets)
    torch.testing.assert_close(
        saliency.explain(Wrapped(form), x, method, **options).outputs, plain.outputs
    )


@pytest.mark.parametrize("form", ["no logits", "tuple of maps"])
def test_other_outputs_need_a_callable_target(form: str) -> None:
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ModelOutputError, match="callable target"):
        saliency.explain(Wrapped(form), x, "gradient", target=1)

    def score(outputs: Any) -> Tensor:
        scores = outputs["scores"] if isinstance(outputs, dict) else outputs[1]
        return scores[:, 1]

    ex = saliency.explain(Wrapped(form), x, "gradient", target=score)
    expected = saliency.explain(Wrapped("tensor"), x, "gradient", target=1)
    torch.testing.assert_close(ex.attributions, expected.attributions)


def test_layers_that_return_tuples_are_read_by_their_first_element() -> None:
    class TupleBlock(nn.Module):  # as older Hugging Face layers do
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x: Tensor) -> tuple[Tensor, None]:
            return torch.tanh(self.conv(x)), None

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.block = TupleBlock()
            self.head = nn.Linear(4, CLASSES)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.block(x)[0].mean((2, 3)))

    model = Net().eval()
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    assert find_layer(model, None, lambda: model(x[:1])) is model.block
    ex = saliency.explain(model, x, "gradcam", target=1, layer="block")
    captured: list[Tensor] = []
    handle = model.block.register_forward_hook(lambda m, i, o: captured.append(o[0]))
    try:
        out = model(x)
    finally:
        handle.remove()
    (grads,) = torch.autograd.grad(out[:, 1].sum(), captured[0])
    cam = F.relu((grads.mean((2, 3), keepdim=True) * captured[0]).sum(1, keepdim=True))
    expected = F.interpolate(cam, size=(6, 6), mode="bilinear", align_corners=False)
    assert_maps_equal(ex.attributions, expected.detach())
