"""One geometry for the notebook and the command line (``fit=`` / ``--fit``), and overlays drawn
back on the original image exactly where the model's pixels came from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

import saliency
from saliency.cli.model import ModelInput
from saliency.errors import InvalidOptionError
from saliency.framing import FITS, Framing, render_framed
from saliency.images import Preprocess, load_images, open_image

SIZES = [(320, 240), (240, 320), (257, 256), (100, 60), (20, 20), (601, 401)]


def _photo(path: Path, size: tuple[int, int], seed: int = 0) -> Path:
    width, height = size
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.parametrize("fit", FITS)
def test_the_notebook_and_the_command_line_give_the_model_the_same_input(
    tmp_path: Path, fit: str
) -> None:
    transform = Preprocess()
    for index, size in enumerate(SIZES):
        path = _photo(tmp_path / f"{index}.png", size, seed=index)
        notebook = load_images(path, transform, fit=fit)  # type: ignore[arg-type]
        cli = ModelInput.for_model(transform, None, fit)  # type: ignore[arg-type]
        command_line = cli.batch([cli.pixels(open_image(path))], torch.device("cpu"))
        assert notebook.tensor.shape == (1, 3, 224, 224)
        assert torch.equal(notebook.tensor, command_line), (fit, size)
        assert notebook.framings is not None
        assert notebook.framings[0] == cli.framing(size)


def test_one_default_for_both() -> None:
    assert Preprocess().fit == "squash"
    assert ModelInput.for_model(Preprocess(), None).preprocess.fit == "squash"


def test_crop_is_torchvisions_evaluation_transform() -> None:
    rng = np.random.default_rng(1)
    for width, height in SIZES:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        resized = v2.functional.resize(image, [256], antialias=True)
        expected = v2.functional.pil_to_tensor(v2.functional.center_crop(resized, [224]))
        assert torch.equal(Preprocess(fit="crop").geometry(image), expected), (width, height)


def test_squash_and_pad_shapes_and_padding_colour() -> None:
    image = Image.new("RGB", (400, 100), (10, 20, 30))
    squashed = Preprocess().geometry(image)
    assert squashed.shape == (3, 224, 224) and bool(
        (squashed == torch.tensor([10, 20, 30])[:, None, None]).all()
    )
    padded = Preprocess(fit="pad").geometry(image)
    framing = Preprocess(fit="pad").framing((400, 100))
    assert framing.resized == (224, 56) and framing.offset == (0, 84)
    assert padded[:, 0, 0].tolist() == [124, 116, 104]  # the ImageNet mean: zero once normalised
    assert padded[:, 100, 100].tolist() == [10, 20, 30]
    with pytest.raises(InvalidOptionError, match="accepted: 'squash', 'crop', 'pad'"):
        Preprocess(fit="stretch")  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match=r"needs a saliency\.Preprocess"):
        load_images("x.png", None, fit="crop")


def _disc(size: tuple[int, int], centre: tuple[float, float], radius: float) -> Image.Image:
    width, height = size
    y, x = np.mgrid[0:height, 0:width] + 0.5
    inside = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 <= radius**2
    return Image.fromarray(np.where(inside, 255, 0).astype(np.uint8)).convert("RGB")


def _centroid(values: np.ndarray) -> tuple[float, float]:
    y, x = np.mgrid[0 : values.shape[0], 0 : values.shape[1]] + 0.5
    total = values.sum()
    return float((x * values).sum() / total), float((y * values).sum() / total)


@pytest.mark.parametrize("fit", FITS)
@pytest.mark.parametrize("size", [(300, 200), (200, 300), (601, 401)])
def test_overlays_are_aligned_with_the_original_image(fit: str, size: tuple[int, int]) -> None:
    """The model's own pixels used as the map come back onto the disc they show."""
    centre = (size[0] * 0.57, size[1] * 0.44)  # off-centre, inside the crop
    image = _disc(size, centre, radius=min(size) * 0.1)
    preprocess = Preprocess(fit=fit)  # type: ignore[arg-type]
    framing = preprocess.framing(size)
    pixels = preprocess.geometry(image).float()[None]
    heat = render_framed(
        pixels, image, framing, style="heatmap", cmap="gray", sign="positive", percentile=100.0
    )
    assert heat.size == size
    drawn = np.asarray(heat)[..., 0].astype(np.float64)
    original = np.asarray(image)[..., 0].astype(np.float64)
    found, expected = _centroid(drawn), _centroid(original)
    assert abs(found[0] - expected[0]) < 0.25 and abs(found[1] - expected[1]) < 0.25, (
        found,
        expected,
    )


@pytest.mark.parametrize("fit", FITS)
def test_every_image_pixel_gets_the_maps_value_where_it_went(fit: str) -> None:
    """Against an independent bilinear sampling at u ↦ (u + ½)·resized/image + offset − ½."""
    size = (330, 190)
    image = Image.new("RGB", size, (90, 140, 200))
    framing = Preprocess(fit=fit).framing(size)  # type: ignore[arg-type]
    width, height = framing.size
    generator = torch.Generator().manual_seed(0)
    attributions = torch.rand(1, 1, height, width, generator=generator, dtype=torch.float64)
    y0, x0, y1, x1 = framing.content()
    attributions[..., y0:y1, x0:x1] /= attributions[..., y0:y1, x0:x1].max()
    heat = render_framed(
        attributions.float(), image, framing, style="heatmap", cmap="gray", sign="positive",
        percentile=100.0,
    )  # fmt: skip
    drawn = np.asarray(heat).astype(np.int64)
    values = attributions[0, 0].numpy()

    def sample(axis: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        scale = framing.resized[axis] / framing.image[axis]
        position = (np.arange(framing.image[axis]) + 0.5) * scale + framing.offset[axis]
        low, high = (y0, y1) if axis == 1 else (x0, x1)
        seen = (position >= low) & (position < high)
        source = np.clip(position - 0.5, low, high - 1)
        first = np.floor(source).astype(int)
        return first, np.minimum(first + 1, high - 1), source - first, seen

    r0, r1, rw, rows = sample(1, height)
    c0, c1, cw, columns = sample(0, width)
    top = values[r0][:, c0] * (1 - cw) + values[r0][:, c1] * cw
    bottom = values[r1][:, c0] * (1 - cw) + values[r1][:, c1] * cw
    expected = np.rint((top * (1 - rw[:, None]) + bottom * rw[:, None]) * 255)
    inside = rows[:, None] & columns[None, :]
    assert inside.any()
    assert np.abs(drawn[..., 0] - expected)[inside].max() <= 1
    if fit == "crop":  # what the model did not see: grey, the image's luminance
        assert not inside.all()
        grey = round(0.299 * 90 + 0.587 * 140 + 0.114 * 200)
        assert (drawn[~inside] == grey).all()
    else:
        assert inside.all()


def test_image_boxes_become_input_boxes() -> None:
    squash = Framing.of((448, 224), "squash", 256, 224)
    assert squash.input_box((10, 20, 30, 40)) == (10, 10, 30, 20)
    assert squash.input_box((0, 0, 224, 448)) == (0, 0, 224, 224)
    assert squash.input_box((5, 5, 6, 6)) == (5, 2, 6, 3)  # smaller than an input pixel
    crop = Framing.of((320, 240), "crop", 256, 224)  # resized 341×256, offset (-58, -16)
    assert crop.input_box((100, 100, 140, 200)) == (
        round(100 * 256 / 240 - 16),
        round(100 * 341 / 320 - 58),
        round(140 * 256 / 240 - 16),
        round(200 * 341 / 320 - 58),
    )
    with pytest.raises(InvalidOptionError, match="outside the part of the image the model sees"):
        crop.input_box((100, 0, 140, 20))  # the left edge is cropped away
    with pytest.raises(InvalidOptionError, match="does not fit the image of 320×240"):
        crop.input_box((0, 0, 241, 10))
    pad = Framing.of((400, 100), "pad", 256, 224)
    assert pad.input_box((0, 0, 100, 400)) == (84, 0, 140, 224)


def test_the_public_names() -> None:
    assert saliency.Framing is Framing
    assert set(FITS) == {"squash", "crop", "pad"}
