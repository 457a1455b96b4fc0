"""Legends, class names and target scores: saliency.legend, saliency.figures,
saliency.class_names and the ``target_scores`` / ``class_names`` of an Explanation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from reference_models import tiny_cnn
from torch import Tensor

import saliency
from saliency.class_names import class_names_of, remember_class_names
from saliency.errors import InvalidOptionError
from saliency.explanation import Explanation
from saliency.figures import strip
from saliency.legend import caption, legend_of
from saliency.rendering import colormap_lut, map_scales, normalize_maps, reduce_channels

matplotlib.use("Agg")

NAMES = ("cat", "dog", "fox")
SIZE = 160  # a panel's size is kept as it is between 160 and 320 pixels


def inputs(n: int = 3, size: int = 8) -> Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


# --- scales and legends ------------------------------------------------------------------------


@pytest.mark.parametrize("sign", ["absolute", "positive", "negative", "all"])
@pytest.mark.parametrize("normalization", ["percentile", "cumulative_mass"])
def test_map_scales_are_the_scales_normalize_maps_divides_by(sign: Any, normalization: Any) -> None:
    maps = torch.randn(4, 9, 7, generator=torch.Generator().manual_seed(2))
    maps[3] = 0.0  # an all-zero sample: scale 1
    scales = map_scales(maps, sign, normalization)
    selected = {
        "absolute": maps.abs(),
        "positive": maps.clamp(min=0),
        "negative": (-maps).clamp(min=0),
        "all": maps,
    }[sign]
    low = -1.0 if sign == "all" else 0.0
    expected = (selected / scales[:, None, None]).clamp(low, 1.0)
    torch.testing.assert_close(normalize_maps(maps, sign, normalization), expected)
    assert float(scales[3]) == 1.0


def test_legend_scale_is_numpys_99th_percentile_of_the_summed_map() -> None:
    attributions = torch.randn(2, 3, 6, 5, generator=torch.Generator().manual_seed(3))
    legend = legend_of(attributions)
    summed = attributions.sum(1).abs().flatten(1).numpy()
    np.testing.assert_allclose(legend.scales, np.percentile(summed, 99, axis=1), rtol=1e-6)
    assert legend.cmap == "inferno" and not legend.signed
    assert legend.ticks(0) == ("0", f"≥ {legend.scales[0]:.3g}")
    assert "low → high" in legend.meaning


def test_signed_legend_diverges_around_zero() -> None:
    attributions = torch.randn(1, 1, 6, 6, generator=torch.Generator().manual_seed(4))
    legend = legend_of(attributions, sign="all")
    scale = f"{legend.scales[0]:.3g}"
    assert legend.cmap == "RdBu_r" and legend.signed
    assert legend.ticks(0) == (f"−{scale}", "0", f"+{scale}")
    assert legend.limits(0) == (-legend.scales[0], legend.scales[0])
    assert legend_of(attributions, sign="all", cmap="bwr").cmap == "bwr"


def test_legend_rejects_unknown_options() -> None:
    with pytest.raises(InvalidOptionError, match="unknown render option 'colour'"):
        legend_of(torch.ones(1, 1, 2, 2), colour="red")
    with pytest.raises(InvalidOptionError, match="sign"):
        legend_of(torch.ones(1, 1, 2, 2), sign="both")


# --- class names --------------------------------------------------------------------------------


def test_names_remembered_by_load_model_reach_the_titles() -> None:
    loaded = saliency.load_model("demo:shapes")
    assert loaded.class_names is not None
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(5))
    ex = saliency.explain(loaded.model, loaded.transform.normalize(x), "gradcam", target=[1, 4])
    assert ex.class_names == loaded.class_names
    probabilities = torch.softmax(loaded.model(loaded.transform.normalize(x)).detach(), 1)
    assert caption(ex, 1) == f"{loaded.class_names[4]} · p={float(probabilities[1, 4]):.2f}"
    assert ex.target_names() == [loaded.class_names[1], loaded.class_names[4]]
    assert ex.metadata()["target_names"] == ex.target_names()


def test_given_class_names_win_and_are_checked() -> None:
    model = tiny_cnn()
    ex = saliency.explain(model, inputs(), "gradient", target=2, class_names=list(NAMES))
    assert ex.class_names == NAMES and caption(ex, 0).startswith("fox · p=")
    with pytest.raises(InvalidOptionError, match="2 names but the model has 3 outputs"):
        saliency.explain(model, inputs(), "gradient", class_names=["a", "b"])
    with pytest.raises(InvalidOptionError, match="strings only"):
        saliency.explain(model, inputs(), "gradient", class_names=["a", 1, "c"])
    with pytest.raises(InvalidOptionError, match="sequence of strings"):
        saliency.explain(model, inputs(), "gradient", class_names="abc")
    many = saliency.explain_many(model, inputs(), ["gradient", "gradcam"], class_names=NAMES)
    assert all(e.class_names == NAMES for e in many.values())


def test_without_names_captions_show_the_class_index() -> None:
    ex = saliency.explain(tiny_cnn(), inputs(), "gradient", target=1)
    assert ex.class_names is None and caption(ex, 0).startswith("class 1 · p=")


def test_remembered_names_of_another_length_are_dropped() -> None:
    model = tiny_cnn()
    remember_class_names(model, ("only", "two"))
    assert class_names_of(model) == ("only", "two")
    assert saliency.explain(model, inputs(), "gradient").class_names is None


def test_hugging_face_id2label_names() -> None:
    model = tiny_cnn()
    model.config = SimpleNamespace(id2label={0: "cat", 2: "fox", 1: "dog"})  # type: ignore[assignment]
    assert class_names_of(model) == NAMES
    assert saliency.explain(model, inputs(), "gradient").class_names == NAMES
    model.config = SimpleNamespace(id2label={i: f"LABEL_{i}" for i in range(3)})  # type: ignore[assignment]
    assert class_names_of(model) is None  # placeholders say nothing


def test_timm_imagenet_names() -> None:
    timm = pytest.importorskip("timm")
    imagenet = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    names = class_names_of(imagenet)
    assert names is not None and len(names) == 1000 and names[0] == "tench"
    assert class_names_of(timm.create_model("resnet18", pretrained=False, num_classes=7)) is None


def test_torch_compile_wrapper_keeps_the_names() -> None:
    model = tiny_cnn()
    remember_class_names(model, NAMES)
    wrapper = SimpleNamespace(_orig_mod=model)
    assert class_names_of(wrapper) == NAMES


# --- target scores ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gradient", "integrated_gradients", "gradcam"])
def test_target_scores_of_class_targets_are_the_outputs_of_the_class(method: str) -> None:
    model, x = tiny_cnn(), inputs()
    options = {"steps": 3} if method == "integrated_gradients" else {}
    ex = saliency.explain(model, x, method, target=[2, 0, 1], **options)
    expected = model(x).detach()[torch.arange(3), torch.tensor([2, 0, 1])]
    assert ex.target_scores is not None and ex.target_scores.dtype == torch.float32
    torch.testing.assert_close(ex.target_scores, expected)
    predicted = saliency.explain(model, x, method, **options)
    assert predicted.targets is not None and predicted.target_scores is not None
    torch.testing.assert_close(predicted.target_scores, model(x).detach().amax(1))


@pytest.mark.parametrize("method", ["gradient", "integrated_gradients", "gradcam"])
def test_target_scores_of_a_callable_are_its_values_at_the_inputs(method: str) -> None:
    model, x = tiny_cnn(), inputs()
    options = {"steps": 3} if method == "integrated_gradients" else {}

    def score(outputs: Tensor) -> Tensor:
        return outputs.softmax(1)[:, 1] * 2.0

    ex = saliency.explain(model, x, method, target=score, **options)
    assert ex.targets is None  # no class index: the scores are the record
    assert ex.target_scores is not None and ex.target_scores.shape == (3,)
    torch.testing.assert_close(ex.target_scores, score(model(x)).detach())
    assert caption(ex, 0) == f"score {float(ex.target_scores[0]):.3g}"
    assert ex.metadata()["target_scores"] == pytest.approx(ex.target_scores.tolist())


def test_explain_many_records_the_same_scores_for_every_method() -> None:
    model, x = tiny_cnn(), inputs()
    many = saliency.explain_many(
        model, x, ["gradient", "gradcam", "integrated_gradients"], target=lambda o: o[:, 0], steps=3
    )
    for ex in many.values():
        assert ex.target_scores is not None
        torch.testing.assert_close(ex.target_scores, model(x).detach()[:, 0])


def test_target_scores_leave_the_model_as_it_was() -> None:
    model = tiny_cnn().train()
    before = [p.requires_grad for p in model.parameters()]
    saliency.explain(model, inputs(), "gradient", target=lambda o: o[:, 0])
    assert model.training and [p.requires_grad for p in model.parameters()] == before
    assert all(p.grad is None for p in model.parameters())


# --- the strip and the figure -------------------------------------------------------------------


def big_explanation(sign_map: bool = False) -> Explanation:
    attributions = torch.randn(2, 1, 20, 20, generator=torch.Generator().manual_seed(6))
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    outputs = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    return Explanation(
        attributions,
        torch.tensor([0, 2]),
        "gradcam",
        {},
        images=images,
        outputs=outputs,
        target_scores=torch.tensor([2.0, 1.0]),
        class_names=NAMES,
    )


def test_strip_shows_the_exact_overlay_pixels_and_the_colour_bar() -> None:
    ex = big_explanation()
    picture = strip(ex)
    overlays = ex.pictures()
    # the first overlay sits under its two caption lines, pixel for pixel
    left, top = 6, 6 + 2 * 16
    panel = picture.crop((left, top, left + SIZE, top + SIZE))
    assert np.array_equal(np.asarray(panel), np.asarray(overlays[0]))
    second = picture.crop((left + SIZE + 6, top, left + 2 * SIZE + 6, top + SIZE))
    assert np.array_equal(np.asarray(second), np.asarray(overlays[1]))
    # below it the bar runs from the colormap's first colour to its last
    bar_row = np.asarray(picture)[top + SIZE + 3 + 5]
    lut = (colormap_lut("inferno") * 255).round().numpy()
    assert np.abs(bar_row[left].astype(float) - lut[0]).max() <= 2
    assert np.abs(bar_row[left + SIZE - 1].astype(float) - lut[-1]).max() <= 2


def test_strip_of_explain_many_has_one_row_per_method() -> None:
    model, x = tiny_cnn(), inputs(2, 16)
    many = saliency.explain_many(model, x, ["gradient", "gradcam"], class_names=NAMES)
    one = strip(many["gradient"])
    both = strip(many)
    assert both.width == one.width and both.height == 2 * one.height
    assert strip(list(many.values()), max_samples=1).width < one.width
    with pytest.raises(InvalidOptionError, match="explain_many"):
        strip("gradient")
    with pytest.raises(InvalidOptionError, match="max_samples"):
        strip(many, max_samples=0)


def test_strip_shrinks_large_images_and_enlarges_small_maps() -> None:
    attributions = torch.randn(1, 1, 4, 4)
    large = Explanation(attributions, None, "gradient", {}, images=[Image.new("RGB", (2000, 1000))])
    assert strip(large).width == 320 + 2 * 6
    small = Explanation(attributions, None, "gradient", {}, images=torch.rand(1, 3, 10, 5))
    assert strip(small).width == 5 * 16 + 2 * 6  # enlarged 16× (nearest) to 160 px high


def test_show_titles_name_the_class_and_bars_carry_the_range() -> None:
    ex = big_explanation()
    figure = saliency.show(ex, sign="all")
    titles = [axis.get_title() for axis in figure.axes]
    assert "gradcam\ncat · p=0.79" in titles and "gradcam\nfox · p=0.58" in titles
    bars = [axis for axis in figure.axes if axis.get_label() == "<colorbar>"]
    assert len(bars) == 2
    legend = legend_of(ex.attributions, sign="all")
    labels = [t.get_text() for t in bars[0].get_yticklabels()]
    assert labels == list(legend.ticks(0)) and labels[1] == "0"
    assert "against" in figure.get_suptitle()


def test_save_writes_pixel_aligned_overlays_without_legend(tmp_path: Any) -> None:
    ex = big_explanation()
    [first, *_] = ex.save(tmp_path)
    with Image.open(first) as saved:
        assert saved.size == (SIZE, SIZE)
        assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(ex.pictures()[0]))


def test_reduce_channels_matches_the_legend_input() -> None:
    attributions = torch.randn(1, 3, 5, 5, generator=torch.Generator().manual_seed(8))
    legend = legend_of(attributions, reduction="max_abs")
    scale = map_scales(reduce_channels(attributions, "max_abs"))
    assert legend.scales == (float(scale[0]),)


def test_gallery_from_explanations_names_the_classes(tmp_path: Any) -> None:
    from saliency.gallery.from_explanations import write_run_folder

    ex = saliency.explain(tiny_cnn(), inputs(2, 16), "gradient", target=[2, 1], class_names=NAMES)
    folder = write_run_folder(ex, tmp_path / "run")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [entry["target"]["label"] for entry in manifest["inputs"]] == ["fox", "dog"]
    assert manifest["run"]["class_names"] is True
