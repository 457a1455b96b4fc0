"""Tests for the demo models (saliency.demo.models) and their training (saliency.demo.training)."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch

import saliency
from saliency.demo import models as demo_models
from saliency.demo.models import (
    DEMO_MODELS,
    WEIGHTS_DIR,
    ShapesNet,
    demo_preprocess,
    demo_scenes,
    read_manifest,
    sha256_file,
)
from saliency.demo.rrr import train_rrr
from saliency.demo.scenes import (
    CLASS_NAMES,
    COUNTERFACTUAL,
    GENERATOR_VERSION,
    TEST_SEED,
    generate_scenes,
    save_scenes,
)
from saliency.demo.training import (
    CrossEntropy,
    TrainConfig,
    accuracy,
    add_noise,
    augment,
    noise_level,
    one_cycle,
    save_weights,
    smoke_config,
    train,
    training_batches,
)
from saliency.demo.training.__main__ import main
from saliency.demo.vit import ShapesViT
from saliency.errors import InvalidOptionError, ModelLoadError
from saliency.layers import find_layer, layer_layout
from saliency.tokens import Layout

# Accuracy on a fresh 200-scene split may differ from the manifest's 2000-scene value by
# sampling noise (σ ≈ 1.2 points at 97%, ≈ 2.4 points at 12%).
MARGIN = 0.04
RRR_GAIN = 0.5
"""How much higher the RRR model's counterfactual accuracy must be than the shortcut model's."""


@pytest.fixture(scope="module")
def manifest() -> dict:
    return read_manifest()


def test_demo_source_is_registered_on_import() -> None:
    assert "demo" in saliency.models.list_model_sources()
    loaded = saliency.load_model("demo:shapes")
    assert isinstance(loaded.model, ShapesNet) and not loaded.model.training
    assert loaded.class_names == CLASS_NAMES
    assert loaded.transform == demo_preprocess()


def test_manifest_matches_the_shipped_files(manifest: dict) -> None:
    assert set(manifest["models"]) == set(DEMO_MODELS)
    for name, entry in manifest["models"].items():
        path = WEIGHTS_DIR / entry["file"]
        assert path.stat().st_size == entry["bytes"] <= 2 * 1024 * 1024, name
        assert sha256_file(path) == entry["sha256"], name
        assert entry["generator_version"] == GENERATOR_VERSION
        assert entry["test_seed"] == TEST_SEED
        assert entry["class_names"] == list(CLASS_NAMES)
        assert entry["training_seconds"] > 0 and "seed" in entry


def test_shipped_models_reach_their_recorded_accuracy(manifest: dict) -> None:
    clean = manifest["models"]["shapes"]["accuracy"]
    shortcut = manifest["models"]["shapes-shortcut"]["accuracy"]
    assert clean["test"] >= 0.97
    assert shortcut["test"] >= 0.9 and shortcut["counterfactual"] <= 0.4
    # trained away from the marker: markers of random classes no longer decide the class
    rrr = manifest["models"]["shapes-rrr"]["accuracy"]
    assert rrr["counterfactual"] >= shortcut["counterfactual"] + RRR_GAIN
    for name in manifest["models"]:
        model = saliency.load_model(f"demo:{name}").model
        spec = DEMO_MODELS[name]
        recorded = manifest["models"][name]["accuracy"]
        test = generate_scenes(200, seed=TEST_SEED + 1, config=spec.config)
        assert accuracy(model, test) >= recorded["test"] - MARGIN, name
        if spec.counterfactual is not None:
            counterfactual = generate_scenes(200, seed=TEST_SEED + 1, config=spec.counterfactual)
            measured, expected = accuracy(model, counterfactual), recorded["counterfactual"]
            # three binomial standard deviations of an accuracy over 200 scenes
            assert abs(measured - expected) <= 3 * (expected * (1 - expected) / 200) ** 0.5, name


@pytest.mark.parametrize(("name", "side"), [("shapes", 24), ("shapes-shortcut", 12)])
def test_gradcam_layer_is_a_spatial_map(name: str, side: int) -> None:
    model = saliency.load_model(f"demo:{name}").model
    inputs = demo_preprocess().normalize(generate_scenes(2, seed=TEST_SEED).images)
    layer = find_layer(model, None, lambda: model(inputs[:1]))
    assert layer is model.stage4 or layer is model.stage4[2]  # the same map
    # the clean model pools once fewer: a 24×24 last map, so Grad-CAM resolves the ring's hole
    stages = model.stage4(model.stage3(model.stage2(model.stage1(inputs))))
    assert stages.shape[-2:] == (side, side)
    cam = saliency.explain(model, inputs, "gradcam").attributions
    assert cam.shape == (2, 1, 96, 96) and float(cam.std()) > 0


def test_shapes_net_pools_option() -> None:
    inputs = torch.zeros(1, 3, 32, 32)
    for pools, side in ((None, 4), (3, 4), (2, 8), (0, 32)):
        net = ShapesNet(widths=(4, 4, 4, 4), pools=pools)
        assert net.stage4(net.stage3(net.stage2(net.stage1(inputs)))).shape[-2:] == (side, side)
        assert net(inputs).shape == (1, 8)
    with pytest.raises(ValueError, match="pools"):
        ShapesNet(widths=(4, 4, 4), pools=3)


def test_png_scenes_load_exactly_like_generated_ones(tmp_path: Path) -> None:
    scenes = generate_scenes(3, seed=TEST_SEED)
    files = save_scenes(scenes, tmp_path)
    preprocess = saliency.load_model("demo:shapes").transform
    assert isinstance(preprocess, saliency.Preprocess)
    batch = saliency.load_images(files, preprocess)
    assert torch.equal(batch.tensor, preprocess.normalize(scenes.images))


def test_load_errors_and_weight_choices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelLoadError, match="demo:shapes"):
        saliency.load_model("demo:nope")
    untrained = saliency.load_model("demo:shapes", weights=None).model
    shipped = saliency.load_model("demo:shapes").model
    assert not torch.equal(untrained.classifier.weight, shipped.classifier.weight)
    own = tmp_path / "own.pt"
    torch.save(shipped.state_dict(), own)
    reloaded = saliency.load_model("demo:shapes-shortcut", weights=own).model
    assert torch.equal(reloaded.classifier.weight, shipped.classifier.weight)

    fake = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, fake)
    data = bytearray((fake / "shapes.pt").read_bytes())
    data[-100] ^= 0xFF
    (fake / "shapes.pt").write_bytes(bytes(data))
    monkeypatch.setattr(demo_models, "WEIGHTS_DIR", fake)
    with pytest.raises(ModelLoadError, match="SHA-256"):
        saliency.load_model("demo:shapes")
    (fake / "shapes.pt").unlink()
    with pytest.raises(ModelLoadError, match=r"python -m saliency\.demo\.training"):
        saliency.load_model("demo:shapes")


# ---- training --------------------------------------------------------------------------------


def test_augment_is_a_dihedral_permutation_of_pixels() -> None:
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    out = augment(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    for i in range(2):
        assert torch.equal(out[i].flatten().sort().values, images[i].flatten().sort().values)


def test_add_noise_levels() -> None:
    images = torch.full((4, 3, 8, 8), 51, dtype=torch.uint8)
    assert torch.equal(add_noise(images, 0.0, torch.Generator()), torch.full((4, 3, 8, 8), 0.2))
    noisy = add_noise(images, 0.3, torch.Generator().manual_seed(0))
    again = add_noise(images, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)
    spread = (noisy - 0.2).flatten(1).std(dim=1)
    assert float(spread.max()) < 0.3 * 1.3 and float(spread.min()) > 0


def test_noise_ramps_up_over_the_first_half() -> None:
    config = TrainConfig("shapes", images=640, epochs=2, batch_size=64, noise=0.2, noise_ramp=0.5)
    assert noise_level(config, 0, 0) == 0.0
    assert noise_level(config, 0, 5) == pytest.approx(0.1)
    assert noise_level(config, 1, 0) == pytest.approx(0.2) == noise_level(config, 1, 9)


def test_one_cycle_schedule() -> None:
    factors = [one_cycle(step, 10) for step in range(10)]
    assert factors[0] == 0.5 and factors[1] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(factors[1:]))
    assert one_cycle(0, 1) == 1.0


def test_same_seed_same_first_batch_and_same_weights() -> None:
    config = smoke_config("shapes", seed=5)
    scenes = generate_scenes(config.images, seed=config.seed)
    normalize = demo_preprocess().normalize
    first = next(training_batches(scenes, config, 0, normalize))
    again = next(training_batches(scenes, config, 0, normalize))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert first[0].shape == (config.batch_size, 3, 96, 96)
    small = TrainConfig("shapes", seed=5, images=64, epochs=1, batch_size=32, eval_images=16)
    one, two = train(small), train(small)
    for key, value in one.model.state_dict().items():
        assert torch.equal(value, two.model.state_dict()[key]), key
    other = train(TrainConfig("shapes", seed=6, images=64, epochs=1, batch_size=32, eval_images=16))
    assert not torch.equal(other.model.classifier.weight, one.model.classifier.weight)


class HalfCrossEntropy(CrossEntropy):
    """Half the plain loss, with a logged term."""

    def __call__(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict[str, float]]:
        loss, _ = super().__call__(batch)
        return loss / 2, {"half": float(loss.detach()) / 2}


def test_train_minimises_the_loss_it_is_given() -> None:
    config = TrainConfig("shapes", images=64, epochs=1, batch_size=32, eval_images=8)
    lines: list[str] = []
    half = train(config, HalfCrossEntropy, log=lines.append)
    plain = train(config)
    assert half.losses[0] == pytest.approx(plain.losses[0] / 2, rel=0.2)
    (epoch,) = [line for line in lines if "epoch" in line]
    assert f"loss {half.losses[0]:.4f}, half {half.losses[0]:.3g}" in epoch


def test_smoke_training_command_writes_loadable_weights(tmp_path: Path) -> None:
    assert main(["--model", "shapes-shortcut", "--smoke", "--out", str(tmp_path)]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    entry = manifest["models"]["shapes-shortcut"]
    assert entry["sha256"] == sha256_file(tmp_path / "shapes-shortcut.pt")
    assert set(entry["accuracy"]) == {"test", "counterfactual"}
    assert entry["training"]["images"] == smoke_config("shapes-shortcut").images
    model = saliency.load_model("demo:shapes-shortcut", weights=tmp_path / "shapes-shortcut.pt")
    assert isinstance(model.model, ShapesNet)
    # a second model merges into the same manifest
    result = train(TrainConfig("shapes", images=32, epochs=1, batch_size=32, eval_images=8))
    save_weights(result, tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest["models"]) == {"shapes", "shapes-shortcut"}


def test_smoke_vit_training_gives_a_token_model(tmp_path: Path) -> None:
    assert main(["--model", "shapes-vit", "--smoke", "--out", str(tmp_path)]) == 0
    entry = json.loads((tmp_path / "manifest.json").read_text())["models"]["shapes-vit"]
    assert entry["architecture"].startswith("ShapesViT")
    assert entry["training"]["learning_rate"] == DEMO_MODELS["shapes-vit"].learning_rate
    model = saliency.load_model("demo:shapes-vit", weights=tmp_path / "shapes-vit.pt").model
    assert isinstance(model, ShapesViT)
    inputs = demo_preprocess().normalize(generate_scenes(2, seed=TEST_SEED).images)
    ex = saliency.explain(model, inputs, "gradcam", target=[0, 1])
    # The last layer's input side: its output tokens other than the class token reach nothing.
    assert ex.options["layer"] == "encoder.layers.encoder_layer_3.ln_1"
    assert layer_layout(model.get_submodule(ex.options["layer"])) == Layout(
        "tokens", 1, (12, 12), "metadata"
    )
    for method in ("attention_rollout", "transformer_attribution"):
        assert saliency.get_method(method).applies_to(model)
        maps = saliency.explain(model, inputs, method, target=[0, 1]).attributions
        assert maps.shape == (2, 1, 96, 96) and torch.isfinite(maps).all()


def test_smoke_rrr_training_runs_the_penalty_and_records_it(tmp_path: Path) -> None:
    lines: list[str] = []
    result = train_rrr(
        smoke_config("shapes-shortcut"), penalty=1.0, penalty_samples=8, log=lines.append
    )
    assert result.config.model == "shapes-rrr"
    assert set(result.accuracy) == {"test", "counterfactual"}
    penalties = [
        float(line.split("penalty ")[1].split(" ")[0]) for line in lines if "epoch" in line
    ]
    assert penalties and all(value > 0 for value in penalties)  # the penalty was computed
    assert main(["--model", "shapes-rrr", "--smoke", "--out", str(tmp_path)]) == 0
    entry = json.loads((tmp_path / "manifest.json").read_text())["models"]["shapes-rrr"]
    spec = DEMO_MODELS["shapes-rrr"]
    assert entry["penalty"] == spec.penalty > 0
    assert (entry["penalty_form"], entry["penalty_score"], entry["penalty_samples"]) == (
        spec.penalty_form,
        spec.penalty_score,
        spec.penalty_samples,
    )
    assert entry["sha256"] == sha256_file(tmp_path / "shapes-rrr.pt")
    model = saliency.load_model("demo:shapes-rrr", weights=tmp_path / "shapes-rrr.pt")
    assert isinstance(model.model, ShapesNet)


def test_demo_scenes_follow_the_manifest_splits() -> None:
    scenes = demo_scenes("shapes-shortcut", 4, split="counterfactual")
    expected = generate_scenes(4, seed=TEST_SEED, config=COUNTERFACTUAL)
    assert torch.equal(scenes.images, expected.images)
    assert demo_scenes("shapes", 2).config.marker == "none"
    with pytest.raises(InvalidOptionError, match="counterfactual"):
        demo_scenes("shapes", 2, split="counterfactual")
    with pytest.raises(ModelLoadError):
        demo_scenes("nope")


def test_a_demo_model_without_shipped_weights_says_how_to_train_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing = [name for name in DEMO_MODELS if name not in read_manifest()["models"]]
    for name in missing:
        command = f"python -m saliency.demo.training --model {name}"
        with pytest.raises(ModelLoadError, match=command):
            saliency.load_model(f"demo:{name}")
        assert name not in demo_models.installed_demo_models()
    monkeypatch.setattr(demo_models, "WEIGHTS_DIR", Path("/nonexistent"))
    assert demo_models.installed_demo_models() == ()
