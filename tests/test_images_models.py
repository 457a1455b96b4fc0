"""Tests for saliency.images and saliency.models: decoding, preprocessing, model loading offline."""

from __future__ import annotations

import dataclasses
import os
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode

from saliency import images, models
from saliency.errors import ImageLoadError, InvalidOptionError, ModelLoadError
from saliency.images import ImageBatch, Preprocess, load_images, open_image
from saliency.models import (
    LoadedModel,
    list_model_sources,
    load_model,
    register_model_source,
    unregister_model_source,
)


@pytest.fixture(autouse=True)
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty TORCH_HOME where any download attempt fails like an offline machine.

    Autouse: no test here may reach the network or read the user's real torch cache.
    """
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def no_network(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    assert Path(torch.hub.get_dir()) == home / "hub"
    yield home / "hub" / "checkpoints"


def pixels(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 array of an RGB image."""
    assert image.mode == "RGB"
    return np.asarray(image)


def save(image: Image.Image, path: Path, **kwargs: Any) -> Path:
    image.save(path, **kwargs)
    return path


# ---- open_image: modes -----------------------------------------------------------------------


def test_rgb_png_roundtrip(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image = open_image(save(Image.fromarray(rgb), tmp_path / "a.png"))
    assert image.size == (7, 5)
    np.testing.assert_array_equal(pixels(image), rgb)


def test_open_image_accepts_str_and_holds_no_file(tmp_path: Path) -> None:
    path = save(Image.new("RGB", (3, 2), (1, 2, 3)), tmp_path / "a.png")
    image = open_image(str(path))
    os.remove(path)  # nothing left open; data already in memory
    assert pixels(image)[1, 2].tolist() == [1, 2, 3]


def test_one_by_one(tmp_path: Path) -> None:
    image = open_image(save(Image.new("RGB", (1, 1), (9, 8, 7)), tmp_path / "a.png"))
    assert image.size == (1, 1)
    assert pixels(image)[0, 0].tolist() == [9, 8, 7]


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_sixteen_bit_scaled_by_full_range(tmp_path: Path, suffix: str) -> None:
    values = np.array([[65535, 32768, 0, 257, 32767]], dtype=np.uint16)
    source = Image.fromarray(values)
    assert source.mode == "I;16"
    path = save(source, tmp_path / f"g16{suffix}")
    assert Image.open(path).mode in {"I;16", "I;16B", "I"}
    grey = pixels(open_image(path))[0, :, :]
    assert grey[:, 0].tolist() == [255, 128, 0, 1, 127]  # scaled, not clipped at 255
    assert (grey == grey[:, :1]).all()  # grey: R == G == B


@pytest.mark.parametrize("mode", ["I;16B", "I;16L"])
def test_sixteen_bit_byte_orders(tmp_path: Path, mode: str) -> None:
    values = np.array([[65535, 32768, 0]], dtype=np.uint16)
    order = ">u2" if mode == "I;16B" else "<u2"
    source = Image.frombytes(mode, (3, 1), values.astype(order).tobytes())
    image = images._to_rgb(source)
    assert pixels(image)[0, :, 1].tolist() == [255, 128, 0]


def test_mode_I_32_bit_scaled_as_16_bit_and_clipped(tmp_path: Path) -> None:
    values = np.array([[65535, 32768, 0, -5, 70000]], dtype=np.int32)
    source = Image.fromarray(values)
    assert source.mode == "I"
    path = save(source, tmp_path / "i32.tif")
    assert Image.open(path).mode == "I"
    assert pixels(open_image(path))[0, :, 2].tolist() == [255, 128, 0, 0, 255]


def test_float_images(tmp_path: Path) -> None:
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert unit.mode == "F"
    assert pixels(open_image(save(unit, tmp_path / "f.tif")))[0, :, 0].tolist() == [0, 128, 255]
    wide = Image.fromarray(np.array([[0.0, 100.0, 300.0, -2.0]], dtype=np.float32))
    got = pixels(open_image(save(wide, tmp_path / "f2.tif")))[0, :, 0].tolist()
    assert got == [0, 100, 255, 0]


def test_grey_and_bilevel(tmp_path: Path) -> None:
    grey = Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8))
    assert grey.mode == "L"
    assert pixels(open_image(save(grey, tmp_path / "l.png")))[0].tolist() == [
        [0, 0, 0],
        [77, 77, 77],
        [255, 255, 255],
    ]
    bilevel = Image.new("1", (2, 1), 0)
    bilevel.putpixel((1, 0), 1)
    assert pixels(open_image(save(bilevel, tmp_path / "b.png")))[0].tolist() == [
        [0, 0, 0],
        [255, 255, 255],
    ]


def test_la_composited_over_white(tmp_path: Path) -> None:
    image = Image.new("LA", (2, 1), (100, 255))
    image.putpixel((1, 0), (100, 128))
    got = pixels(open_image(save(image, tmp_path / "la.png")))[0]
    assert got[0].tolist() == [100, 100, 100]
    expected = round(100 * 128 / 255 + 255 * (1 - 128 / 255))  # 177
    assert np.abs(got[1].astype(int) - expected).max() <= 1


def test_rgba_composited_over_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (3, 1), (255, 0, 0, 255))
    image.putpixel((1, 0), (255, 0, 0, 0))
    image.putpixel((2, 0), (0, 0, 255, 128))
    got = pixels(open_image(save(image, tmp_path / "rgba.png")))[0].astype(int)
    assert got[0].tolist() == [255, 0, 0]
    assert got[1].tolist() == [255, 255, 255]  # fully transparent: white, not red or black
    assert np.abs(got[2] - [127, 127, 255]).max() <= 1


def test_palette_without_and_with_transparency(tmp_path: Path) -> None:
    palette = [255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6)
    image = Image.new("P", (2, 1), 0)
    image.putpalette(palette)
    image.putpixel((1, 0), 1)
    plain = pixels(open_image(save(image, tmp_path / "p.png")))[0].tolist()
    assert plain == [[255, 0, 0], [0, 255, 0]]
    transparent = pixels(open_image(save(image, tmp_path / "pt.png", transparency=0)))
    assert transparent[0].tolist() == [[255, 255, 255], [0, 255, 0]]
    gif = pixels(open_image(save(image, tmp_path / "pt.gif", transparency=0)))
    assert gif[0].tolist() == [[255, 255, 255], [0, 255, 0]]


def test_grey_with_transparency_key(tmp_path: Path) -> None:
    image = Image.fromarray(np.array([[0, 50]], dtype=np.uint8))
    got = pixels(open_image(save(image, tmp_path / "lt.png", transparency=0)))
    assert got[0].tolist() == [[255, 255, 255], [50, 50, 50]]


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_cmyk_known_colour(tmp_path: Path, suffix: str) -> None:
    image = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red
    image.paste((0, 0, 0, 255), (0, 0, 2, 4))  # left half black
    got = pixels(open_image(save(image, tmp_path / f"c{suffix}", quality=100))).astype(int)
    assert np.abs(got[0, 3] - [255, 0, 0]).max() <= 2
    assert np.abs(got[0, 0] - [0, 0, 0]).max() <= 2


def test_ycbcr(tmp_path: Path) -> None:
    image = Image.new("RGB", (4, 4), (200, 30, 60)).convert("YCbCr")
    assert image.mode == "YCbCr"
    got = pixels(images._to_rgb(image)).astype(int)
    assert np.abs(got[0, 0] - [200, 30, 60]).max() <= 2


def test_exif_orientation_applied(tmp_path: Path) -> None:
    # Stored 40 wide x 20 high, a red block in the stored top-left corner.
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 8, 8))
    exif = stored.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = save(stored, tmp_path / "rot.jpg", exif=exif, quality=95)
    assert Image.open(path).size == (40, 20)
    image = open_image(path)
    assert image.size == (20, 40)  # dimensions swapped
    got = pixels(image).astype(int)
    # Rotated clockwise: the stored top-left corner is now the top-right one.
    assert np.abs(got[2, 17] - [255, 0, 0]).max() < 40
    assert np.abs(got[2, 2] - [0, 0, 255]).max() < 40


def test_animated_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (4, 4), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert getattr(Image.open(path), "n_frames", 1) == 3
    assert pixels(open_image(path))[0, 0].tolist() == [255, 0, 0]


def test_animated_png_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGBA", (4, 4), c) for c in [(0, 0, 255, 255), (0, 255, 0, 255)]]
    path = tmp_path / "anim.png"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    assert pixels(open_image(path))[0, 0].tolist() == [0, 0, 255]


# ---- open_image: failures --------------------------------------------------------------------


def expect_error(path: Path, *fragments: str) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        open_image(path)
    err = info.value
    assert err.path == Path(path)
    assert str(path) in str(err)
    for fragment in fragments:
        assert fragment in err.reason
    return err


def test_missing_file(tmp_path: Path) -> None:
    expect_error(tmp_path / "nope.png", "not found")


def test_directory(tmp_path: Path) -> None:
    expect_error(tmp_path, "directory")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    expect_error(path, "empty", "0 bytes")


def test_text_file_with_png_extension(tmp_path: Path) -> None:
    path = tmp_path / "text.png"
    path.write_text("hello, not an image\n")
    expect_error(path, "not an image")


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated(tmp_path: Path, suffix: str) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = save(Image.fromarray(noise), tmp_path / f"full{suffix}")
    data = full.read_bytes()
    path = tmp_path / f"trunc{suffix}"
    path.write_bytes(data[: len(data) // 2])
    err = expect_error(path, "truncated or corrupt")
    assert isinstance(err.__cause__, OSError)


def test_permission_denied_mapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(Image.new("RGB", (2, 2)), tmp_path / "a.png")

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Image, "open", refuse)
    expect_error(path, "permission denied")


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX permissions")
def test_permission_denied_real(tmp_path: Path) -> None:
    # Root reads anything: as root, the check runs in a child that drops to user "nobody", in a
    # folder that user may enter.
    folder = tmp_path / "open"
    folder.mkdir()
    path = save(Image.new("RGB", (2, 2)), folder / "a.png")
    path.chmod(0)
    try:
        if os.geteuid() != 0:
            expect_error(path, "permission denied")
            return
        for parent in (folder, *folder.parents):
            parent.chmod(parent.stat().st_mode | 0o111)
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                os.setgid(65534)
                os.setuid(65534)
                expect_error(path, "permission denied")
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "no 'permission denied' as user nobody"
    finally:
        path.chmod(0o644)


@pytest.mark.parametrize("limit", [1000, 3000])  # > 2x limit: error; > limit: warning
def test_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    path = save(Image.new("RGB", (64, 64)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    err = expect_error(path, "too large", "4,096 pixels", "MAX_IMAGE_PIXELS", f"{limit:,}")
    assert "raise" in err.reason
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    assert open_image(path).size == (64, 64)


def test_unconvertible_mode_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(Image.new("RGB", (2, 2)), tmp_path / "a.png")

    def unsupported(image: Image.Image) -> Image.Image:
        raise ValueError("conversion not supported")

    monkeypatch.setattr(images, "_to_rgb", unsupported)
    expect_error(path, "cannot convert image mode 'RGB' to RGB")


# ---- Preprocess ------------------------------------------------------------------------------


@pytest.fixture()
def photo() -> Image.Image:
    rng = np.random.default_rng(2)
    return Image.fromarray(rng.integers(0, 256, (300, 410, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    "weights",
    [
        torchvision.models.ResNet18_Weights.IMAGENET1K_V1,  # 256 -> 224 bilinear
        torchvision.models.ResNet50_Weights.IMAGENET1K_V2,  # 232 -> 224
        torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1,  # bicubic
        torchvision.models.Inception_V3_Weights.IMAGENET1K_V1,  # 342 -> 299
    ],
    ids=lambda w: f"{type(w).__name__}.{w.name}",
)
def test_preprocess_matches_torchvision(photo: Image.Image, weights: object) -> None:
    reference_transform = weights.transforms()  # type: ignore[attr-defined]
    pre = Preprocess.from_torchvision(reference_transform)
    assert pre.fit == "squash"  # the default of every Preprocess; the reference is fit="crop"
    pre = dataclasses.replace(pre, fit="crop")
    assert pre.crop_size == reference_transform.crop_size[0]
    assert pre.resize_size == reference_transform.resize_size[0]
    assert pre.interpolation == reference_transform.interpolation
    geometry = pre.geometry(photo)
    assert geometry.dtype == torch.uint8
    assert geometry.shape == (3, pre.crop_size, pre.crop_size)
    reference = reference_transform(photo)
    out = pre(photo)
    assert out.dtype == torch.float32
    # Same PIL resize and the same float ops: bit-identical, not merely close.
    assert torch.equal(out, reference)
    assert torch.equal(pre.normalize(geometry), reference)


def test_preprocess_defaults_are_imagenet() -> None:
    pre = Preprocess()
    assert pre == Preprocess.from_torchvision(
        torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    )


def test_preprocess_skips_and_batches() -> None:
    image = Image.new("RGB", (30, 20), (255, 0, 0))
    pre = Preprocess(resize_size=None, crop_size=None, mean=(0, 0, 0), std=(1, 1, 1))
    geometry = pre.geometry(image)
    assert geometry.shape == (3, 20, 30)
    assert geometry[:, 0, 0].tolist() == [255, 0, 0]
    assert Preprocess(resize_size=10, crop_size=None).geometry(image).shape == (3, 10, 15)
    assert Preprocess(resize_size=None, crop_size=8).geometry(image).shape == (3, 8, 8)
    batch = torch.stack([geometry, geometry])
    normalized = pre.normalize(batch)
    assert normalized.shape == (2, 3, 20, 30)
    assert normalized[:, 0].eq(1).all() and normalized[:, 1:].eq(0).all()
    # float input is taken as already in [0, 1]
    assert torch.equal(pre.normalize(batch.float() / 255), normalized)


def test_preprocess_normalize_values() -> None:
    pre = Preprocess(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    x = torch.tensor([255, 0, 51], dtype=torch.uint8).view(3, 1, 1)
    expected = torch.tensor([(1 - 0.5) / 0.5, (0 - 0.25) / 0.25, (0.2 - 0) / 2.0])
    torch.testing.assert_close(pre.normalize(x).flatten(), expected, rtol=0, atol=1e-6)


def test_preprocess_converts_non_rgb_input() -> None:
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    geometry = Preprocess(resize_size=None, crop_size=None).geometry(image)
    assert geometry.eq(255).all()


def test_preprocess_validation() -> None:
    with pytest.raises(InvalidOptionError, match="crop_size"):
        Preprocess(crop_size=0)
    with pytest.raises(InvalidOptionError, match="mean"):
        Preprocess(mean=(0.5, 0.5))  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match="std"):
        Preprocess(std=(1.0, 0.0, 1.0))
    with pytest.raises(InvalidOptionError, match=r"\(\.\.\., 3, H, W\)"):
        Preprocess().normalize(torch.zeros(1, 4, 2, 2))
    assert Preprocess(interpolation="bicubic").interpolation is InterpolationMode.BICUBIC


def test_from_torchvision_rejects_other_transforms() -> None:
    with pytest.raises(ModelLoadError, match="ImageClassification"):
        Preprocess.from_torchvision(torchvision.transforms.ToTensor())


# ---- load_images -----------------------------------------------------------------------------


@pytest.fixture()
def image_files(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(3)
    paths = []
    for i in range(3):
        arr = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
        paths.append(save(Image.fromarray(arr), tmp_path / f"img{i}.png"))
    return paths


def test_load_images_without_transform(image_files: list[Path]) -> None:
    batch = load_images(image_files)
    assert isinstance(batch, ImageBatch)
    assert len(batch) == 3
    assert batch.tensor.shape == (3, 3, 40, 50) and batch.tensor.dtype == torch.float32
    assert batch.images is not None and batch.images.dtype == torch.uint8
    assert torch.equal(batch.tensor, batch.images.float() / 255)
    expected = torch.from_numpy(np.array(Image.open(image_files[1]))).permute(2, 0, 1)
    assert torch.equal(batch.images[1], expected)
    assert batch.paths == tuple(image_files)


def test_load_images_single_path(image_files: list[Path]) -> None:
    batch = load_images(str(image_files[0]))
    assert batch.tensor.shape == (1, 3, 40, 50)
    assert batch.paths == (image_files[0],)


def test_load_images_with_preprocess(image_files: list[Path]) -> None:
    pre = Preprocess(resize_size=32, crop_size=24)
    batch = load_images(image_files, pre)
    assert batch.tensor.shape == (3, 3, 24, 24) and batch.tensor.dtype == torch.float32
    assert batch.images is not None
    assert batch.images.shape == (3, 3, 24, 24) and batch.images.dtype == torch.uint8
    assert torch.equal(batch.tensor, pre.normalize(batch.images))
    assert torch.equal(batch.tensor[2], pre(open_image(image_files[2])))


def test_load_images_with_custom_transform(image_files: list[Path]) -> None:
    transform = torchvision.transforms.Compose(
        [torchvision.transforms.Resize((8, 8)), torchvision.transforms.ToTensor()]
    )
    batch = load_images(image_files, transform)
    assert batch.tensor.shape == (3, 3, 8, 8)
    assert batch.images is None


def test_load_images_mixed_sizes_need_transform(tmp_path: Path, image_files: list[Path]) -> None:
    odd = save(Image.new("RGB", (10, 10)), tmp_path / "odd.png")
    with pytest.raises(InvalidOptionError) as info:
        load_images([*image_files, odd])
    message = str(info.value)
    assert str(image_files[0]) in message and str(odd) in message and "transform" in message
    assert (
        load_images([*image_files, odd], Preprocess(resize_size=16, crop_size=16)).tensor.shape[0]
        == len(image_files) + 1
    )


def test_load_images_names_failing_file(tmp_path: Path, image_files: list[Path]) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really")
    with pytest.raises(ImageLoadError) as info:
        load_images([image_files[0], bad], Preprocess())
    assert info.value.path == bad


def test_load_images_empty() -> None:
    with pytest.raises(InvalidOptionError, match="no image paths"):
        load_images([])


# ---- models ----------------------------------------------------------------------------------


def probe() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def assert_same_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Every parameter and buffer of ``model`` equals the one in ``state``."""
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_torchvision_weights_from_cache(offline_hub: Path) -> None:
    # torchvision checks the hash prefix in the file name only when it downloads; a file
    # already in the cache is loaded as is, so a locally generated state dict works offline.
    weights = torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1
    torch.manual_seed(1)
    reference = torchvision.models.mobilenet_v3_small().eval()
    offline_hub.mkdir(parents=True)
    torch.save(reference.state_dict(), offline_hub / os.path.basename(weights.url))
    assert models._weights_member("mobilenet_v3_small", "imagenet1k_v1") == weights
    for spec in ("DEFAULT", "MobileNet_V3_Small_Weights.IMAGENET1K_V1"):
        loaded = load_model("mobilenet_v3_small", spec)
        assert isinstance(loaded, LoadedModel)
        assert not loaded.model.training
        assert loaded.class_names == tuple(weights.meta["categories"])
        assert loaded.class_names is not None and len(loaded.class_names) == 1000
        assert loaded.transform == Preprocess.from_torchvision(weights.transforms())
        assert_same_state(loaded.model, reference.state_dict())
    with torch.no_grad():
        assert torch.equal(loaded.model(probe()), reference(probe()))


def test_torchvision_weights_offline_error(offline_hub: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model("mobilenet_v3_small")
    message = str(info.value)
    assert "could not be downloaded" in message
    assert str(offline_hub) in message
    assert "mobilenet_v3_small-047dcff4.pth" in message
    assert "weights=PATH" in message and "weights=None" in message
    assert isinstance(info.value.__cause__, urllib.error.URLError)


def test_bad_weights_name() -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model("resnet18", "IMAGENET1K_V9")
    message = str(info.value)
    assert "'IMAGENET1K_V1'" in message and "'DEFAULT'" in message and "None" in message
    with pytest.raises(ModelLoadError, match="IMAGENET1K_V1"):
        load_model("resnet18", "ResNet50_Weights.IMAGENET1K_V1")


def test_weights_none_random_init() -> None:
    loaded = load_model("mobilenet_v3_small", weights=None)
    assert isinstance(loaded.model, torchvision.models.MobileNetV3)
    assert not loaded.model.training
    assert loaded.class_names is None
    assert loaded.transform == Preprocess()


def test_unknown_model_name_suggests() -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model("resnet19")
    message = str(info.value)
    assert "'resnet18'" in message and "list_models" in message


def random_state(name: str, seed: int = 0, **kwargs: object) -> dict[str, torch.Tensor]:
    """A random state dict whose BN statistics are non-trivial (so eval outputs differ)."""
    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.state_dict()


@pytest.fixture(scope="module")
def mobilenet_state() -> dict[str, torch.Tensor]:
    return random_state("mobilenet_v3_small")


def test_local_state_dict_same_outputs(tmp_path: Path) -> None:
    state = random_state("resnet18")
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    reference = torchvision.models.resnet18()
    reference.load_state_dict(state)
    loaded = load_model("resnet18", weights=str(path))
    assert not loaded.model.training
    assert loaded.transform == Preprocess()
    assert loaded.class_names == tuple(
        torchvision.models.ResNet18_Weights.DEFAULT.meta["categories"]
    )
    with torch.no_grad():
        assert torch.equal(loaded.model(probe()), reference.eval()(probe()))


def test_a_state_dict_model_is_built_without_its_random_initialisation(tmp_path: Path) -> None:
    rng = torch.get_rng_state()
    built = models.built_for_loading(torchvision.models.resnet18)
    assert torch.equal(torch.get_rng_state(), rng)  # no random number was drawn
    torchvision.models.resnet18()
    assert not torch.equal(torch.get_rng_state(), rng)  # as a usual build draws them
    assert {t.device.type for t in built.state_dict().values()} == {"cpu"}
    assert built.conv1.weight.requires_grad and not built.bn1.running_mean.requires_grad
    # fp16 weights still load into the fp32 model as fp32 (copied, not assigned)
    state = random_state("resnet18")
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    path = tmp_path / "half.pth"
    torch.save(half, path)
    loaded = load_model("resnet18", weights=path)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
    assert_same_state(
        loaded.model, {k: v.float() if v.is_floating_point() else v for k, v in half.items()}
    )


class _RampBuffer(nn.Module):
    """A layer with a non-persistent buffer computed at construction (not in a state dict)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3)
        self.register_buffer("ramp", torch.arange(3.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.ramp


class _TensorAttribute(nn.Linear):
    def __init__(self) -> None:
        super().__init__(3, 3)
        self.offsets = [torch.ones(3)]  # a tensor outside parameters and buffers


class _ReadsValues(nn.Linear):
    def __init__(self) -> None:
        super().__init__(3, 3)
        self.scale = float(torch.empty(()).uniform_())  # a random draw kept outside tensors


@pytest.mark.parametrize("module", [_RampBuffer, _TensorAttribute, _ReadsValues])
def test_models_whose_values_the_state_dict_does_not_hold_are_built_for_real(
    module: type[nn.Module],
) -> None:
    torch.manual_seed(0)
    expected = module()
    torch.manual_seed(0)
    built = models.built_for_loading(module)
    tensors = {**dict(built.named_parameters()), **dict(built.named_buffers())}
    for name, value in [*expected.named_parameters(), *expected.named_buffers()]:
        assert tensors[name].device.type == "cpu" and torch.equal(tensors[name], value)
    assert vars(built).get("scale") == vars(expected).get("scale")
    if isinstance(expected, _TensorAttribute):
        assert torch.equal(built.offsets[0], torch.ones(3))


@pytest.mark.parametrize("wrap", ["module", "state_dict", "model", "model_state_dict"])
def test_wrapped_state_dicts(
    tmp_path: Path, mobilenet_state: dict[str, torch.Tensor], wrap: str
) -> None:
    if wrap == "module":
        content: object = {f"module.{k}": v for k, v in mobilenet_state.items()}
    else:
        content = {wrap: mobilenet_state, "epoch": 3}
    path = tmp_path / "wrapped.pt"
    torch.save(content, path)
    loaded = load_model("mobilenet_v3_small", weights=path)
    assert_same_state(loaded.model, mobilenet_state)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_non_imagenet_class_count(tmp_path: Path, name: str) -> None:
    state = random_state(name, num_classes=10)
    path = tmp_path / "ten.pth"
    torch.save(state, path)
    loaded = load_model(name, weights=path)
    assert loaded.class_names is None
    assert loaded.transform == Preprocess()
    assert_same_state(loaded.model, state)
    with torch.no_grad():
        assert loaded.model(probe()).shape == (2, 10)


def test_state_dict_that_does_not_fit(
    tmp_path: Path, mobilenet_state: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "mnv3.pth"
    torch.save(mobilenet_state, path)
    with pytest.raises(ModelLoadError) as info:
        load_model("resnet18", weights=path)
    message = str(info.value)
    assert str(path) in message
    assert "missing keys" in message and "conv1.weight" in message
    assert "unexpected keys" in message and "features.0.0.weight" in message


def test_weights_file_missing_or_not_a_state_dict(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_model("resnet18", weights=tmp_path / "nope.pth")
    with pytest.raises(ModelLoadError, match="not found"):
        load_model("resnet18", weights="missing/weights.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelLoadError, match="not a readable PyTorch file"):
        load_model("resnet18", weights=garbage)
    tensor_file = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor_file)
    with pytest.raises(ModelLoadError, match="does not contain a state dict"):
        load_model("resnet18", weights=tensor_file)


class Pickled(nn.Module):
    """A module class that torch.load(weights_only=True) refuses to rebuild."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def test_pickled_module_needs_trust(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Pickled()
    path = tmp_path / "full.pt"
    torch.save(model, path)
    with pytest.raises(ModelLoadError) as info:
        load_model(path)
    assert "trust_pickle=True" in str(info.value) and "trust" in str(info.value)
    loaded = load_model(path, trust_pickle=True)
    assert isinstance(loaded.model, Pickled) and not loaded.model.training
    assert loaded.transform is None and loaded.class_names is None
    x = torch.randn(2, 4)
    assert torch.equal(loaded.model(x), model(x))


def test_pickled_full_module_as_weights(
    tmp_path: Path, mobilenet_state: dict[str, torch.Tensor]
) -> None:
    model = torchvision.models.mobilenet_v3_small()
    model.load_state_dict(mobilenet_state)
    path = tmp_path / "full_mobilenet.pt"
    torch.save(model, path)
    with pytest.raises(ModelLoadError, match="trust_pickle=True"):
        load_model("mobilenet_v3_small", weights=path)
    loaded = load_model("mobilenet_v3_small", weights=path, trust_pickle=True)
    assert_same_state(loaded.model, mobilenet_state)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
def test_torchscript_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    path = tmp_path / "scripted.pt"
    torch.jit.trace(model, torch.randn(1, 3, 8, 8)).save(str(path))
    loaded = load_model(path)
    assert loaded.transform is None and loaded.class_names is None
    assert not loaded.model.training
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(loaded.model(x), model(x))
    assert load_model(str(path)).model(x).shape == (2, 4)
    with pytest.raises(ModelLoadError, match="TorchScript"):
        load_model("mobilenet_v3_small", weights=path)


def test_state_dict_file_as_model_needs_architecture(tmp_path: Path) -> None:
    path = tmp_path / "sd.pth"
    torch.save(nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(ModelLoadError, match=r"architecture name is needed.*weights="):
        load_model(path)


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "nope.pt")
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(str(tmp_path / "nope.pt"))


def test_device_argument() -> None:
    loaded = load_model("mobilenet_v3_small", weights=None, device="cpu")
    assert next(loaded.model.parameters()).device == torch.device("cpu")
    with pytest.raises(ModelLoadError, match="device"):
        load_model("mobilenet_v3_small", weights=None, device="no-such-device")


# ---- model sources ---------------------------------------------------------------------------


@pytest.fixture()
def fake_source() -> Iterator[list[tuple[str, object]]]:
    calls: list[tuple[str, object]] = []

    def loader(name: str, weights: object) -> LoadedModel:
        calls.append((name, weights))
        if name != "tiny":
            raise ModelLoadError(f"no fake model {name!r}")
        return LoadedModel(nn.Linear(2, 2).train(), None, ("a", "b"))

    register_model_source("fake-test", loader)
    try:
        yield calls
    finally:
        unregister_model_source("fake-test")


def test_model_source_dispatch(fake_source: list[tuple[str, object]]) -> None:
    assert "fake-test" in list_model_sources()
    loaded = load_model("fake-test:tiny", weights=None)
    assert fake_source == [("tiny", None)]
    assert not loaded.model.training  # load_model puts it in eval mode
    assert loaded.class_names == ("a", "b")
    with pytest.raises(ModelLoadError, match="no fake model"):
        load_model("fake-test:huge")


def test_model_source_duplicate_and_cleanup(fake_source: list[tuple[str, object]]) -> None:
    with pytest.raises(ModelLoadError, match="already registered"):
        register_model_source(
            "fake-test", lambda name, weights: LoadedModel(nn.Identity(), None, None)
        )
    with pytest.raises(ModelLoadError, match="prefix"):
        register_model_source("x", lambda name, weights: LoadedModel(nn.Identity(), None, None))


def test_unknown_model_source(fake_source: list[tuple[str, object]]) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model("nosuch:thing")
    assert "'nosuch'" in str(info.value) and "'fake-test:'" in str(info.value)


def test_model_source_unregistered() -> None:
    assert "fake-test" not in list_model_sources()
