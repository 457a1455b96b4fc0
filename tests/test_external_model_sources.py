"""The ``timm:`` and ``hf:`` model sources and transformers on the command line, offline.

timm models are built with random weights (``test_vit``: 160 px, 371 k parameters) and saved
as ``.pth`` and ``.safetensors`` state dicts; the Hugging Face model is a tiny ``ViTConfig``
written with ``save_pretrained``. Any attempt to reach the hub fails (``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision.transforms import InterpolationMode
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

import saliency
from saliency.cli.main import main
from saliency.errors import ModelLoadError
from saliency.images import Preprocess
from saliency.models import list_model_sources

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No hub access, and empty caches (huggingface_hub read its environment at import)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    yield


@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``test_vit`` with 7 classes, random weights, in both file formats."""
    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, num_classes=7)
    folder = tmp_path_factory.mktemp("timm")
    paths = {"pth": folder / "test_vit.pth", "safetensors": folder / "test_vit.safetensors"}
    torch.save(model.state_dict(), paths["pth"])
    save_file(model.state_dict(), str(paths["safetensors"]))
    return paths


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ViT image classifier with class names and an image processor config."""
    torch.manual_seed(0)
    labels = {0: "cat", 1: "dog", 2: "fox"}
    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=3, id2label=labels,
        label2id={v: k for k, v in labels.items()}, initializer_range=0.2,
    )
    folder = tmp_path_factory.mktemp("hf") / "tiny-vit"
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.4],
        resample=3,
    ).save_pretrained(folder)
    return folder


def test_sources_are_listed_and_not_imported_by_import_saliency() -> None:
    assert {"timm", "hf"} <= set(list_model_sources())
    code = (
        "import sys, saliency; "
        "print(sorted(m for m in ('timm', 'transformers', 'saliency.timm_models', "
        "'saliency.hf_models') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_timm_random_weights_with_timm_preprocessing_and_labels() -> None:
    loaded = saliency.load_model("timm:test_vit", weights=None)
    assert type(loaded.model).__name__ == "VisionTransformer"
    assert not loaded.model.training
    # timm's data config: 160 px, crop_pct 0.95 → resize 168, bicubic, mean = std = 0.5.
    assert loaded.transform == Preprocess(
        resize_size=168, crop_size=160, mean=(0.5,) * 3, std=(0.5,) * 3,
        interpolation=InterpolationMode.BICUBIC,
    )
    assert loaded.class_names is not None and len(loaded.class_names) == 1000
    assert loaded.class_names[0] == "tench"


@pytest.mark.parametrize("kind", ["pth", "safetensors"])
def test_timm_state_dict_files(timm_weights: dict[str, Path], kind: str) -> None:
    path = timm_weights[kind]
    loaded = saliency.load_model("timm:test_vit", weights=str(path))
    assert loaded.model.num_classes == 7  # read from the file
    assert loaded.class_names is None  # 7 classes are not ImageNet's
    expected = torch.load(timm_weights["pth"], weights_only=True)
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    ex = saliency.explain(loaded.model, x, "gradcam", target=[0, 6])
    assert ex.options["layer"] == "blocks.5.norm1"


def test_timm_errors_say_what_is_accepted(timm_weights: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="close names: vit_tiny_patch16_224"):
        saliency.load_model("timm:vit_tiny_patch16_2244", weights=None)
    with pytest.raises(ModelLoadError, match="does not fit"):
        saliency.load_model("timm:test_vit2", weights=str(timm_weights["pth"]))
    with pytest.raises(ModelLoadError, match="not found"):
        saliency.load_model("timm:test_vit", weights=str(tmp_path / "missing.safetensors"))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        saliency.load_model("timm:test_vit", weights=str(broken))
    with pytest.raises(ModelLoadError, match="Offline, pass a local state-dict file"):
        saliency.load_model("timm:test_vit")  # pretrained weights: not in the (empty) cache


def test_hf_folder_with_processor_labels_and_logits(hf_folder: Path) -> None:
    loaded = saliency.load_model(f"hf:{hf_folder}")
    assert type(loaded.model).__name__ == "ViTForImageClassification"
    assert loaded.class_names == ("cat", "dog", "fox")
    assert loaded.transform == Preprocess(
        resize_size=32, crop_size=32, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4),
        interpolation=InterpolationMode.BICUBIC,
    )
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ex = saliency.explain(loaded.model, x, "gradcam", target=None)  # ImageClassifierOutput
    assert ex.options["layer"] == "vit.layers.1.layernorm_before"
    assert torch.equal(ex.targets, loaded.model(x).logits.argmax(1))
    random = saliency.load_model(f"hf:{hf_folder}", weights=None)
    first = next(iter(loaded.model.state_dict()))
    assert random.class_names == loaded.class_names
    assert random.model.state_dict().keys() == loaded.model.state_dict().keys()
    assert not all(
        torch.equal(a, b)
        for a, b in zip(
            random.model.state_dict().values(), loaded.model.state_dict().values(), strict=True
        )
    ), first


def test_hf_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such folder, and not a hub id"):
        saliency.load_model(f"hf:{tmp_path / 'missing' / 'deeper'}")
    with pytest.raises(ModelLoadError, match="cannot load hf:"):
        saliency.load_model(f"hf:{tmp_path}")  # an empty folder


# --------------------------------------------------------------------------- command line


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "cat.png")
    return folder


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str]:
    code = main(["explain", *map(str, argv), "--workers", "1"])
    return code, capsys.readouterr().err


def test_cli_hf_model_records_the_resolved_layer(
    capsys: pytest.CaptureFixture[str], photo: Path, hf_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code, err = run(
        capsys, photo, "--model", f"hf:{hf_folder}", "--out", out,
        "--method", "gradcam,attention_rollout,transformer_attribution",
    )
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    # The automatic layer is recorded by the dotted name it resolved to.
    assert manifest["run"]["method_options"]["gradcam"]["layer"] == "vit.layers.1.layernorm_before"
    entry = manifest["inputs"][0]
    assert entry["status"] == "ok" and entry["prediction"]["label"] in ("cat", "dog", "fox")
    assert set(entry["methods"]) == {"gradcam", "attention_rollout", "transformer_attribution"}


def test_cli_timm_weights_file_and_all_methods_on_a_transformer(
    capsys: pytest.CaptureFixture[str], photo: Path, timm_weights: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code, err = run(
        capsys, photo, "--model", "timm:test_vit", "--weights", timm_weights["safetensors"],
        "--out", out, "--method", "all", "--steps", "2", "--samples", "2",
    )
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    # every method registered one by one applies (method families are not part of "all")
    assert manifest["run"]["methods"] == saliency.list_methods(families=False)
    assert manifest["run"]["method_options"]["gradcam"]["layer"] == "blocks.5.norm1"


def test_cli_all_methods_skip_attention_methods_on_a_cnn(
    capsys: pytest.CaptureFixture[str], photo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code, err = run(
        capsys, photo, "--model", "timm:test_resnet", "--weights", "none", "--out", out,
        "--method", "all", "--steps", "2", "--samples", "2",
    )
    assert code == 0, err
    assert "skips attention_rollout, transformer_attribution" in err
    methods = json.loads((out / "manifest.json").read_text())["run"]["methods"]
    assert "attention_rollout" not in methods and "gradcam" in methods
