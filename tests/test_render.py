"""Tests for saliency.rendering: known maps give known pixels, on every available device."""

from __future__ import annotations

import importlib
from typing import Any

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr._utils.visualization import _cumulative_sum_threshold, _normalize_attr
from PIL import Image

from saliency.errors import InvalidOptionError
from saliency.rendering import colormap_lut, normalize_maps, reduce_channels, render

# The module object, for monkeypatching and cache inspection.
render_module = importlib.import_module("saliency.rendering")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
CAPTUM_SIGNS = {
    "absolute": "absolute_value",
    "positive": "positive",
    "negative": "negative",
    "all": "all",
}


def to255(colour: torch.Tensor) -> torch.Tensor:
    return (colour * 255).round().to(torch.uint8)


def one_hot_map(device: str, height: int = 4, width: int = 4) -> torch.Tensor:
    """A (1, 1, H, W) map: 1 at (0, 0), 0 elsewhere; normalises to 1 and 0 exactly."""
    attributions = torch.zeros(1, 1, height, width, device=device)
    attributions[0, 0, 0, 0] = 3.0
    return attributions


# --- reduce_channels ----------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_reduce_sum_is_signed_channel_sum(device: str) -> None:
    attributions = torch.randn(2, 3, 5, 6, device=device)
    torch.testing.assert_close(reduce_channels(attributions, "sum"), attributions.sum(dim=1))


@pytest.mark.parametrize("device", DEVICES)
def test_reduce_max_abs_keeps_sign(device: str) -> None:
    attributions = torch.tensor([[[[1.0, -2.0]], [[-3.0, 0.5]], [[2.0, 1.5]]]], device=device)
    expected = torch.tensor([[[-3.0, -2.0]]], device=device)
    assert torch.equal(reduce_channels(attributions, "max_abs"), expected)


@pytest.mark.parametrize("reduction", ["sum", "max_abs"])
def test_reduce_single_channel_drops_channel(reduction: Any) -> None:
    cam = torch.randn(2, 1, 3, 4)
    assert torch.equal(reduce_channels(cam, reduction), cam[:, 0])


# --- normalize_maps ----------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_percentile_against_hand_value(device: str) -> None:
    # |values| 1..100: the 99th percentile sits at position 0.99 * 99 = 98.01 of the sorted
    # values, 99 + 0.01 * (100 - 99) = 99.01.
    maps = torch.arange(1.0, 101.0, device=device).view(1, 10, 10)
    out = normalize_maps(maps, "absolute", "percentile", percentile=99.0)
    assert out[0, 4, 9].item() == pytest.approx(50.0 / 99.01, rel=1e-6)
    assert out[0, 9, 9].item() == 1.0  # 100 / 99.01 clamps to 1
    assert out[0, 0, 0].item() == pytest.approx(1.0 / 99.01, rel=1e-6)


@pytest.mark.parametrize("percentile", [50.0, 90.0, 99.5, 100.0])
def test_percentile_matches_numpy(percentile: float) -> None:
    generator = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 17, 13, generator=generator, dtype=torch.float64)
    out = normalize_maps(maps, "absolute", "percentile", percentile=percentile)
    for sample, result in zip(maps.numpy(), out, strict=True):
        scale = np.percentile(np.abs(sample), percentile)
        expected = np.clip(np.abs(sample) / scale, 0, 1)
        np.testing.assert_allclose(result.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_percentile_does_not_use_torch_quantile(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.quantile has a 2**24-element limit")

    monkeypatch.setattr(torch, "quantile", refuse)
    monkeypatch.setattr(torch.Tensor, "quantile", refuse)
    out = normalize_maps(torch.randn(2, 8, 8), normalization="percentile")
    assert out.shape == (2, 8, 8)


@pytest.mark.parametrize("sign", ["absolute", "positive", "negative", "all"])
@pytest.mark.parametrize("outlier_perc", [0.0, 2.0, 10.0])
@pytest.mark.parametrize("device", DEVICES)
def test_cumulative_mass_matches_captum(sign: Any, outlier_perc: float, device: str) -> None:
    generator = torch.Generator().manual_seed(1)
    maps = torch.randn(3, 24, 20, generator=generator) * torch.rand(3, 1, 1, generator=generator)
    out = normalize_maps(
        maps.to(device),
        sign,
        "cumulative_mass",
        outlier_perc=outlier_perc,
    )
    for sample, result in zip(maps.double().numpy(), out.cpu(), strict=True):
        expected = _normalize_attr(sample, CAPTUM_SIGNS[sign], outlier_perc)
        np.testing.assert_allclose(result.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_cumulative_mass_scale_is_captums_threshold() -> None:
    values = torch.tensor([[[0.5, 4.0, 1.0, 2.0, 8.0, 0.25]]])
    threshold = _cumulative_sum_threshold(values.abs().numpy(), 100.0 - 30.0)
    out = normalize_maps(values, "absolute", "cumulative_mass", outlier_perc=30.0)
    # Sorted 0.25 0.5 1 2 4 8: sums 0.25 .75 1.75 3.75 7.75 15.75; 70% of 15.75 is 11.025 → 8.
    assert threshold == 8.0
    torch.testing.assert_close(out, values / 8.0)


@pytest.mark.parametrize("device", DEVICES)
def test_sign_variants(device: str) -> None:
    maps = torch.tensor([[[-2.0, 1.0, 0.0, -1.0]]], device=device)
    expected: dict[Any, list[float]] = {
        "absolute": [1.0, 0.5, 0.0, 0.5],
        "positive": [0.0, 1.0, 0.0, 0.0],
        "negative": [1.0, 0.0, 0.0, 0.5],
        "all": [-1.0, 0.5, 0.0, -0.5],
    }
    for sign, values in expected.items():
        out = normalize_maps(maps, sign, "percentile", percentile=100.0)
        assert out.flatten().tolist() == values, sign


@pytest.mark.parametrize("normalization", ["percentile", "cumulative_mass"])
@pytest.mark.parametrize("sign", ["absolute", "positive", "negative", "all"])
def test_constant_and_zero_maps_are_finite(normalization: Any, sign: Any) -> None:
    maps = torch.stack([torch.zeros(5, 5), torch.full((5, 5), 2.5), torch.full((5, 5), -2.5)])
    out = normalize_maps(maps, sign, normalization)
    assert torch.isfinite(out).all()
    assert torch.equal(out[0], torch.zeros(5, 5))
    kept = {"absolute": (1, 1), "positive": (1, 0), "negative": (0, 1), "all": (1, -1)}[sign]
    assert torch.equal(out[1], torch.full((5, 5), float(kept[0])))
    assert torch.equal(out[2], torch.full((5, 5), float(kept[1])))


def test_sparse_map_falls_back_to_maximum() -> None:
    maps = torch.zeros(1, 10, 10)
    maps[0, 3, 3] = 4.0  # the 99th percentile of |a| is 0.04; of max(a, 0) on 1 pixel: 0
    maps[0, 5, 5] = -2.0
    out = normalize_maps(maps, "positive", "percentile", percentile=50.0)
    assert out[0, 3, 3].item() == 1.0
    assert out.sum().item() == 1.0


def test_nan_maps_give_zero_not_nan() -> None:
    maps = torch.ones(1, 3, 3)
    maps[0, 1, 1] = float("nan")
    out = normalize_maps(maps)
    assert not torch.isnan(out).any()


# --- colormap_lut ------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_lut_matches_matplotlib(device: str) -> None:
    lut = colormap_lut("inferno", device)
    assert lut.shape == (256, 3) and lut.dtype == torch.float32
    assert lut.device.type == device
    colormap = matplotlib.colormaps["inferno"]
    for index in (0, 100, 255):
        expected = torch.tensor(colormap(index)[:3], dtype=torch.float32)
        torch.testing.assert_close(lut[index].cpu(), expected)


def test_lut_is_built_once() -> None:
    render_module._cached_lut.cache_clear()
    first = colormap_lut("viridis")
    second = colormap_lut("viridis", torch.device("cpu"))
    info = render_module._cached_lut.cache_info()
    assert first is second
    assert (info.misses, info.hits) == (1, 1)


def test_lut_unknown_name_lists_valid_names() -> None:
    with pytest.raises(InvalidOptionError, match=r"not_a_cmap.*inferno"):
        colormap_lut("not_a_cmap")


# --- render: known pixels ----------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_heatmap_extremes_are_lut_ends(device: str) -> None:
    out = render(one_hot_map(device), style="heatmap")
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, 4, 4, 3) and out.dtype == torch.uint8 and out.device.type == device
    lut = colormap_lut("inferno", device)
    assert torch.equal(out[0, 0, 0], to255(lut[255]))
    assert torch.equal(out[0, 2, 3], to255(lut[0]))


@pytest.mark.parametrize("device", DEVICES)
def test_all_sign_puts_zero_at_lut_centre(device: str) -> None:
    attributions = torch.tensor([[[[-2.0, 0.0, 2.0]]]], device=device)
    out = render(attributions, style="heatmap", sign="all", percentile=100.0)
    assert isinstance(out, torch.Tensor)
    lut = colormap_lut("RdBu_r", device)
    assert torch.equal(out[0, 0], to255(lut[[0, 128, 255]]))
    assert min(out[0, 0, 1].tolist()) >= 240  # RdBu_r's centre is near white


@pytest.mark.parametrize("device", DEVICES)
def test_overlay_alpha_zero_is_image_and_one_is_heatmap(device: str) -> None:
    generator = torch.Generator().manual_seed(2)
    image = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8, generator=generator)
    attributions = torch.randn(1, 3, 4, 4, generator=generator).to(device)
    out0 = render(attributions, image, style="overlay", alpha=0.0)
    assert isinstance(out0, torch.Tensor) and out0.device.type == device
    assert torch.equal(out0.cpu(), image.permute(0, 2, 3, 1))
    out1 = render(attributions, image, style="overlay", alpha=1.0, cmap="viridis")
    heat = render(attributions, image, style="heatmap", cmap="viridis")
    assert isinstance(out1, torch.Tensor) and isinstance(heat, torch.Tensor)
    assert torch.equal(out1, heat)


@pytest.mark.parametrize("device", DEVICES)
def test_overlay_blends_by_hand(device: str) -> None:
    image = torch.full((1, 3, 4, 4), 0.2, device=device)
    out = render(one_hot_map(device), image, alpha=0.25, cmap="gray")
    assert isinstance(out, torch.Tensor)
    assert out[0, 0, 0].tolist() == [round(255 * (0.75 * 0.2 + 0.25))] * 3  # 102
    assert out[0, 3, 3].tolist() == [round(255 * 0.75 * 0.2)] * 3  # 38


@pytest.mark.parametrize("device", DEVICES)
def test_masked_scales_image_by_intensity(device: str) -> None:
    attributions = torch.tensor([[[[4.0, -2.0, 0.0, 1.0]]]], device=device)
    image = torch.full((1, 3, 1, 4), 200, dtype=torch.uint8, device=device)
    cases: list[tuple[Any, list[int]]] = [
        ("absolute", [200, 100, 0, 50]),
        ("all", [200, 100, 0, 50]),
    ]
    for sign, expected in cases:
        out = render(attributions, image, style="masked", sign=sign, percentile=100.0)
        assert isinstance(out, torch.Tensor)
        assert out[0, 0, :, 0].tolist() == expected
    out = render(attributions, image, style="masked", sign="negative", percentile=100.0)
    assert isinstance(out, torch.Tensor)
    assert out[0, 0, :, 1].tolist() == [0, 200, 0, 0]


@pytest.mark.parametrize("device", DEVICES)
def test_upsampling_is_bilinear(device: str) -> None:
    generator = torch.Generator().manual_seed(3)
    attributions = torch.rand(2, 1, 5, 7, generator=generator).to(device)
    white = torch.ones(2, 3, 15, 11, device=device)
    out = render(attributions, white, style="masked", percentile=100.0)
    assert isinstance(out, torch.Tensor)
    maps = attributions / attributions.flatten(1).amax(1).view(2, 1, 1, 1)
    expected = F.interpolate(maps, size=(15, 11), mode="bilinear", align_corners=False)
    expected = (expected[:, 0] * 255).round()
    assert (out[..., 0].float() - expected).abs().max().item() <= 1.0
    assert (out[..., 0].float() == expected).float().mean().item() > 0.99


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_any_float_dtype(dtype: torch.dtype) -> None:
    attributions = torch.tensor([[[[0.0, 0.5], [1.0, -1.0]]]], dtype=dtype)
    out = render(attributions, style="heatmap")
    reference = render(attributions.float(), style="heatmap")
    assert isinstance(out, torch.Tensor) and isinstance(reference, torch.Tensor)
    assert torch.equal(out, reference)


def test_attributions_with_grad_are_detached() -> None:
    attributions = torch.randn(1, 3, 4, 4, requires_grad=True)
    out = render(attributions, style="heatmap")
    assert isinstance(out, torch.Tensor) and not out.requires_grad


# --- render: backgrounds and outputs -----------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_sizes_return_a_list(device: str) -> None:
    attributions = torch.randn(3, 3, 6, 6, device=device)
    images: list[torch.Tensor | Image.Image] = [
        torch.rand(3, 12, 8),
        torch.randint(0, 256, (3, 6, 6), dtype=torch.uint8),
        Image.new("L", (5, 9), color=128),
    ]
    styles: list[Any] = ["overlay", "masked", "heatmap"]
    for style in styles:
        out = render(attributions, images, style=style)
        assert isinstance(out, list)
        assert [tuple(t.shape) for t in out] == [(12, 8, 3), (6, 6, 3), (9, 5, 3)]
        assert all(t.dtype == torch.uint8 and t.device.type == device for t in out)


def test_same_size_sequence_returns_a_tensor() -> None:
    images: list[torch.Tensor | Image.Image] = [
        Image.new("RGBA", (10, 7), color=(10, 20, 30, 40)),
        torch.rand(3, 7, 10),
    ]
    out = render(torch.randn(2, 3, 4, 4), images, style="heatmap")
    assert isinstance(out, torch.Tensor) and out.shape == (2, 7, 10, 3)


def test_pil_background_is_used_as_rgb() -> None:
    image = Image.new("RGB", (3, 2), color=(10, 20, 30))
    out = render(torch.randn(1, 3, 2, 3), [image], alpha=0.0)
    assert isinstance(out, torch.Tensor)
    assert out[0].reshape(-1, 3).tolist() == [[10, 20, 30]] * 6


def test_pil_output() -> None:
    attributions = torch.randn(2, 3, 5, 4)
    images = [torch.rand(3, 5, 4), torch.rand(3, 10, 6)]
    pictures = render(attributions, images, as_pil=True)
    tensors = render(attributions, images)
    assert isinstance(pictures, list) and isinstance(tensors, list)
    for picture, tensor in zip(pictures, tensors, strict=True):
        assert isinstance(picture, Image.Image) and picture.mode == "RGB"
        assert picture.size == (tensor.shape[1], tensor.shape[0])
        assert torch.equal(torch.from_numpy(np.array(picture)), tensor)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("normalization", ["percentile", "cumulative_mass"])
@pytest.mark.parametrize("sign", ["absolute", "all"])
def test_cuda_and_cpu_give_the_same_pixels(normalization: str, sign: str) -> None:
    generator = torch.Generator().manual_seed(4)
    attributions = torch.randn(4, 3, 56, 56, generator=generator)
    images = torch.rand(4, 3, 224, 200, generator=generator)
    options: dict[str, Any] = {"sign": sign, "normalization": normalization, "style": "overlay"}
    cpu = render(attributions, images, **options)
    cuda = render(attributions.cuda(), images, **options)
    assert isinstance(cpu, torch.Tensor) and isinstance(cuda, torch.Tensor)
    assert torch.equal(cpu, cuda.cpu())


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"style": "blend"}, "blend"),
        ({"sign": "abs"}, "abs"),
        ({"reduction": "mean"}, "mean"),
        ({"normalization": "minmax"}, "minmax"),
        ({"cmap": "no_such_map"}, "no_such_map"),
        ({"alpha": 1.5}, "1.5"),
        ({"alpha": float("nan")}, "nan"),
        ({"percentile": 0.0}, "0.0"),
        ({"percentile": 101}, "101"),
        ({"outlier_perc": 100.0}, "100.0"),
        ({"outlier_perc": -1}, "-1"),
    ],
)
def test_bad_options_name_the_value(options: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidOptionError, match=named):
        render(torch.randn(1, 3, 4, 4), torch.rand(1, 3, 4, 4), **options)


def test_bad_choice_lists_accepted_values() -> None:
    with pytest.raises(InvalidOptionError, match="'heatmap', 'overlay', 'masked'"):
        style: Any = "blend"
        render(torch.randn(1, 3, 4, 4), style=style)


@pytest.mark.parametrize(
    ("attributions", "images", "message"),
    [
        (torch.randn(3, 4, 4), None, r"4-D.*\(3, 4, 4\)"),
        ([[1.0]], None, "list"),
        (torch.randn(2, 3, 4, 4), torch.rand(3, 3, 4, 4), "3 images for 2"),
        (torch.randn(2, 3, 4, 4), [torch.rand(3, 4, 4)], "1 images for 2"),
        (torch.randn(1, 3, 4, 4), torch.rand(1, 4, 4, 4), r"\(N, 3, h, w\).*\(1, 4, 4, 4\)"),
        (torch.randn(1, 3, 4, 4), [torch.rand(4, 4)], r"\(3, h, w\).*\(4, 4\)"),
        (torch.randn(1, 3, 4, 4), torch.ones(1, 3, 4, 4, dtype=torch.int64), "int64"),
        (torch.randn(1, 3, 4, 4), "image.png", "str"),
    ],
)
def test_bad_shapes_and_images(attributions: Any, images: Any, message: str) -> None:
    with pytest.raises(InvalidOptionError, match=message):
        render(attributions, images, style="heatmap")


@pytest.mark.parametrize("style", ["overlay", "masked"])
def test_missing_images_is_a_clear_error(style: Any) -> None:
    with pytest.raises(InvalidOptionError, match=f"style='{style}' needs images"):
        render(torch.randn(1, 3, 4, 4), style=style)


def test_normalize_rejects_non_3d_maps() -> None:
    with pytest.raises(InvalidOptionError, match=r"\(N, H, W\).*\(1, 1, 4, 4\)"):
        normalize_maps(torch.randn(1, 1, 4, 4))


@pytest.mark.parametrize("style", ["overlay", "heatmap", "masked"])
def test_large_images_render_band_by_band_with_the_same_pixels(
    monkeypatch: pytest.MonkeyPatch, style: Any
) -> None:
    # Issue #13, item 10: rendering composes a few rows at a time (bounded float32 temporaries);
    # bands of one or two rows must give exactly the pixels of one band.
    from saliency import rendering

    generator = torch.Generator().manual_seed(3)
    attributions = torch.randn(3, 3, 5, 7, generator=generator)
    pil = Image.fromarray(
        torch.randint(0, 256, (23, 31, 3), generator=generator, dtype=torch.uint8).numpy()
    )
    grey = pil.convert("L")  # converted to RGB band by band
    tensor = torch.rand(3, 23, 31, generator=generator)
    small = torch.randint(0, 256, (3, 9, 4), generator=generator, dtype=torch.uint8)
    cases: list[Any] = [[pil, grey, tensor], [pil, small, tensor], torch.stack([tensor] * 3)]
    for images in cases:
        whole = rendering.render(attributions, images, style=style)
        with monkeypatch.context() as patch:
            patch.setattr(rendering, "_BAND_PIXELS", 40)
            banded = rendering.render(attributions, images, style=style)
        pairs = zip(whole, banded, strict=True) if isinstance(whole, list) else [(whole, banded)]
        for one, other in pairs:
            assert isinstance(other, torch.Tensor)
            assert torch.equal(one, other)


# --- the overlay blend table (uint8 backgrounds) --------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("cmap", "alpha"), [("inferno", 0.5), ("RdBu_r", 0.3), ("gray", 0.77)])
def test_blend_table_is_the_direct_blend_of_every_colour_and_level(
    device: str, cmap: str, alpha: float
) -> None:
    blend = render_module._blend_table(cmap, torch.device(device), alpha)
    colours = render_module._uint8_colours(cmap, torch.device(device))
    lut = colormap_lut(cmap, device)
    levels = torch.arange(256, dtype=torch.uint8, device=device).float() / 255.0
    for k in range(256):
        direct = levels[:, None] * (1.0 - alpha) + lut[k][None, :] * alpha  # (v, c)
        expected = (direct * 255.0).round().clamp(0, 255).to(torch.uint8)
        assert torch.equal(blend.view(256, 3, 256)[k].T, expected), k
    assert torch.equal(colours, (lut * 255.0).round().clamp(0, 255).to(torch.uint8))


@pytest.mark.parametrize("sign", ["absolute", "all"])
@pytest.mark.parametrize("alpha", [0.0, 0.35, 0.5, 1.0])
def test_uint8_backgrounds_give_the_pixels_of_the_direct_float_blend(
    sign: Any, alpha: float
) -> None:
    # uint8 backgrounds (PIL, uint8 tensors) go through the blend table; the same pixels as
    # float backgrounds of value v / 255, which are blended element by element.
    generator = torch.Generator().manual_seed(5)
    attributions = torch.randn(2, 3, 9, 11, generator=generator)
    pixels = torch.randint(0, 256, (2, 3, 40, 33), generator=generator, dtype=torch.uint8)
    as_float = pixels.float() / 255.0
    direct = render(attributions, as_float, sign=sign, alpha=alpha)
    table = render(attributions, pixels, sign=sign, alpha=alpha)
    pil = render(
        attributions,
        [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in pixels],
        sign=sign,
        alpha=alpha,
    )
    assert isinstance(direct, torch.Tensor) and isinstance(table, torch.Tensor)
    assert isinstance(pil, torch.Tensor)
    assert torch.equal(table, direct) and torch.equal(pil, direct)


def test_blend_tables_are_cached_per_colormap_device_and_alpha() -> None:
    render_module._blend_table.cache_clear()
    attributions = torch.randn(1, 1, 4, 4)
    image = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    for alpha in (0.5, 0.5, 0.25):
        render(attributions, image, alpha=alpha)
    info = render_module._blend_table.cache_info()
    assert (info.misses, info.hits) == (2, 1)
