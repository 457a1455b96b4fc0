"""Tests for saliency.explanation (save, render, notebook display) and saliency.output_files."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor, nn

import saliency
from saliency.explanation import Explanation
from saliency.output_files import (
    atomic_path,
    write_atomic,
    write_bytes_atomic,
    write_text_atomic,
)

# No display here; Explanation.show() imports pyplot lazily, after this.
matplotlib.use("Agg")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
H, W = 12, 10


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def make_inputs(n: int = 3) -> Tensor:
    return torch.rand(n, 3, H, W, generator=torch.Generator().manual_seed(1))


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def decode(path_or_bytes: Path | bytes) -> Image.Image:
    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    image = Image.open(source)
    image.load()
    return image


def leftovers(folder: Path) -> list[str]:
    """Temporary or hidden files left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or ".tmp" in p.name)


# --- Explanation.save -----------------------------------------------------------------------------


def test_save_writes_pngs_npy_and_json(tmp_path: Path) -> None:
    inputs = make_inputs(3)
    ex = saliency.explain(tiny_model(), inputs, "integrated_gradients", target=[0, 1, 2], steps=4)
    paths = ex.save(tmp_path)

    assert all(p.parent == tmp_path and p.exists() for p in paths)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{i:04d}_integrated_gradients.png" for i in range(3)]
        + ["integrated_gradients.npy", "integrated_gradients.json"]
    )
    assert leftovers(tmp_path) == []
    for i in range(3):
        image = decode(tmp_path / f"{i:04d}_integrated_gradients.png")
        assert image.format == "PNG"
        assert image.size == (W, H)
        assert image.mode == "RGB"
    raw = np.load(tmp_path / "integrated_gradients.npy")
    assert raw.shape == tuple(ex.attributions.shape)
    np.testing.assert_array_equal(raw, ex.attributions.numpy())

    meta = json.loads((tmp_path / "integrated_gradients.json").read_text())
    assert meta["method"] == "integrated_gradients"
    assert meta["options"]["steps"] == 4
    assert meta["targets"] == [0, 1, 2]
    assert meta["shape"] == [3, 3, H, W]
    assert meta["versions"]["saliency-kit"] == saliency.__version__
    assert {"python", "torch"} <= set(meta["versions"])


def test_save_options_are_json_safe(tmp_path: Path) -> None:
    model = tiny_model()
    inputs = make_inputs(2)
    baseline = torch.full((1, 3, 1, 1), 0.5)
    ig = saliency.explain(model, inputs, "integrated_gradients", steps=3, baseline=baseline)
    ig.save(tmp_path)
    meta = json.loads((tmp_path / "integrated_gradients.json").read_text())
    assert meta["options"]["baseline"] == {"tensor": [1, 3, 1, 1], "dtype": "float32"}

    cam = saliency.explain(model, inputs, "gradcam", layer=model[2])
    cam.save(tmp_path)
    meta = json.loads((tmp_path / "gradcam.json").read_text())
    assert meta["options"]["layer"] == "2"  # a layer given as a module, by its dotted name
    assert meta["shape"] == [2, 1, H, W]
    assert decode(tmp_path / "0001_gradcam.png").size == (W, H)
    assert leftovers(tmp_path) == []


def test_save_again_overwrites_cleanly(tmp_path: Path) -> None:
    model = tiny_model()
    first = saliency.explain(model, make_inputs(2), "gradient", target=0)
    first.save(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())

    second_inputs = make_inputs(2) * 2 - 1
    second = saliency.explain(model, second_inputs, "gradient", target=1)
    second.save(tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == names
    assert leftovers(tmp_path) == []
    np.testing.assert_array_equal(np.load(tmp_path / "gradient.npy"), second.attributions.numpy())
    assert json.loads((tmp_path / "gradient.json").read_text())["targets"] == [1, 1]
    expected = second.render(as_pil=True)
    assert isinstance(expected, list)
    for i, picture in enumerate(expected):
        saved = decode(tmp_path / f"{i:04d}_gradient.png")
        np.testing.assert_array_equal(np.asarray(saved), np.asarray(picture))


def test_save_creates_missing_folders(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    ex = saliency.explain(tiny_model(), make_inputs(1), "gradient")
    paths = ex.save(str(folder))
    assert [p.name for p in paths][-2:] == ["gradient.npy", "gradient.json"]
    assert (folder / "0000_gradient.png").exists()


# --- display ------------------------------------------------------------------------------------


def test_repr_png_decodes() -> None:
    ex = saliency.explain(tiny_model(), make_inputs(3), "gradient")
    data = ex._repr_png_()
    assert isinstance(data, bytes)
    assert data.startswith(PNG_SIGNATURE)
    image = decode(data)
    # three labelled panels, each overlay enlarged by a whole factor to at least 160 px
    factor = -(-160 // max(H, W))
    assert image.width > 3 * W * factor and image.height > H * factor


def test_show_returns_a_figure() -> None:
    ex = saliency.explain(tiny_model(), make_inputs(2), "gradient", target=1)
    figure = ex.show()
    assert isinstance(figure, Figure)
    # per sample: the image, the overlay and the overlay's colour bar
    assert len(figure.axes) == 6


def test_render_returns_uint8_nhw3() -> None:
    inputs = make_inputs(3)
    ex = saliency.explain(tiny_model(), inputs, "smoothgrad", samples=2, seed=0)
    rendered = ex.render()
    assert isinstance(rendered, Tensor)
    assert rendered.dtype == torch.uint8
    assert rendered.shape == (3, H, W, 3)
    heat = ex.render(style="heatmap")
    assert isinstance(heat, Tensor)
    assert heat.shape == (3, H, W, 3)


def test_images_of_another_size_set_the_render_size(tmp_path: Path) -> None:
    inputs = make_inputs(2)
    images = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(5))
    ex = saliency.explain(tiny_model(), inputs, "gradcam", images=images)
    rendered = ex.render()
    assert isinstance(rendered, Tensor)
    assert rendered.shape == (2, 20, 24, 3)
    assert rendered.dtype == torch.uint8
    ex.save(tmp_path)
    assert decode(tmp_path / "0000_gradcam.png").size == (24, 20)
    assert decode(ex._repr_png_()).width > 2 * 24
    assert isinstance(ex.show(), Figure)


def test_explanation_built_directly_with_pil_images() -> None:
    attributions = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    images = [Image.new("RGB", (16, 8), "red"), Image.new("L", (16, 8), 128)]
    ex = Explanation(attributions, torch.tensor([0, 1]), "gradcam", {}, images=images)
    rendered = ex.render()
    assert isinstance(rendered, Tensor)
    assert rendered.shape == (2, 8, 16, 3)


# --- output_files -------------------------------------------------------------------------------


class Boom(Exception):
    pass


def _half_write(handle: IO[bytes]) -> None:
    handle.write(b"partial data")
    raise Boom("disk full (simulated)")


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(Boom):
        write_atomic(target, _half_write)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    write_bytes_atomic(target, b"original")
    with pytest.raises(Boom):
        write_atomic(target, _half_write)
    assert target.read_bytes() == b"original"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_keyboard_interrupt_midway_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    write_text_atomic(target, "kept")

    def interrupted(handle: IO[bytes]) -> None:
        handle.write(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, interrupted)
    assert target.read_text() == "kept"
    assert leftovers(tmp_path) == []


def test_atomic_path_failure_in_block(tmp_path: Path) -> None:
    target = tmp_path / "data.npy"
    with pytest.raises(Boom), atomic_path(target) as temporary:
        assert temporary.parent == tmp_path
        assert temporary != target
        temporary.write_bytes(b"half")
        raise Boom
    assert list(tmp_path.iterdir()) == []


def test_successful_writes_replace(tmp_path: Path) -> None:
    target = tmp_path / "t.txt"
    assert write_text_atomic(target, "é one") == target
    write_text_atomic(target, "two")
    assert target.read_text(encoding="utf-8") == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_atomic_files_get_the_usual_permissions(tmp_path: Path) -> None:
    from saliency.output_files import _UMASK, write_text_atomic

    path = write_text_atomic(tmp_path / "x.txt", "hello")
    assert path.stat().st_mode & 0o777 == 0o666 & ~_UMASK


def test_repr_is_one_short_line_without_tensor_values() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    ex = saliency.explain(model, torch.randn(10, 3, 2, 2), "gradient", target=2)
    text = repr(ex)
    assert "\n" not in text and len(text) < 120
    assert text.startswith("<Explanation gradient: 10×3×2×2 float32 on cpu")
    assert "targets [2, 2, 2, 2, 2, 2, 2, 2, …]" in text
    assert "tensor(" not in text
    callable_target = saliency.explain(model, torch.randn(2, 3, 2, 2), target=lambda o: o[:, 0])
    assert "callable target" in repr(callable_target)
