"""The gallery builder without a browser: run folders, escaping, CSP, assets, CLI, Python API.

The browser tests are in ``test_gallery_browser.py``.
"""

from __future__ import annotations

import dataclasses
import html
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch
from torch import Tensor, nn

import saliency
from saliency.cli.main import main
from saliency.gallery import GalleryError, build_gallery, build_gallery_from_explanations
from saliency.gallery.assets import THUMBNAIL_SIZE
from saliency.gallery.builder import read_run
from saliency.gallery.imaging import heatmaps
from saliency.gallery.page import content_security_policy, script_json
from saliency.gallery.synthetic import write_synthetic_run
from saliency.method_info import describe_method, split_docstring
from saliency.methods import Method, register_method, unregister_method
from saliency.methods.registry import get_method, list_methods

MALICIOUS = "<img src=x onerror=alert(1)>.png"
SCRIPT_BREAK = "</script><script>alert(2)</script>"


def hostile_run(folder: Path, count: int = 6, raw: bool = True) -> Path:
    """A synthetic run whose names, labels, messages and options try to inject markup."""
    names = [MALICIOUS] + [f"dir {i}/ok_{i}.png" for i in range(1, count)]
    run = write_synthetic_run(folder, count, names=names, raw=raw, failed=2, seed=3)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["inputs"][1]["prediction"]["label"] = SCRIPT_BREAK
    manifest["inputs"][-1]["error"] = "<b>bold</b> & <script>alert(3)</script>"
    first = manifest["run"]["methods"][0]
    manifest["run"]["method_options"][first] = {"layer": "<svg onload=alert(4)>"}
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def page_data(page: Path) -> dict[str, Any]:
    text = page.read_text(encoding="utf-8")
    match = re.search(
        r'<script type="application/json" id="gallery-data">(.*?)</script>', text, re.S
    )
    assert match is not None
    data: dict[str, Any] = json.loads(match.group(1))
    return data


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    run = hostile_run(tmp_path_factory.mktemp("gallery") / "run")
    return run, build_gallery(run, title="Cats <b>& dogs</b>")


def test_default_layout(built: tuple[Path, Path]) -> None:
    run, page = built
    assert page == run / "index.html"
    assert (run / "gallery" / "gallery.css").is_file()
    assert (run / "gallery" / "gallery.js").is_file()
    assert not list(run.rglob("*.tmp")), "every file is renamed into place"


def test_user_strings_are_escaped(built: tuple[Path, Path]) -> None:
    _, page = built
    text = page.read_text(encoding="utf-8")
    body = text.split('id="gallery-data">')[0]
    assert "<img src=x" not in text
    assert "<b>" not in text and "<svg" not in text
    assert "alert(2)" not in body, "the label only lives in the JSON block"
    assert "&lt;title&gt;" not in text
    assert "<title>Cats &lt;b&gt;&amp; dogs&lt;/b&gt;</title>" in text
    assert html.escape("<b>bold</b> & <script>alert(3)</script>", quote=False) in text
    # exactly two script elements: the JSON data and the script file
    assert text.count("<script") == 2 and text.count("</script>") == 2


def test_embedded_json_round_trips(built: tuple[Path, Path]) -> None:
    run, page = built
    data = page_data(page)
    paths = [item["path"] for item in data["items"]]
    assert paths[0] == MALICIOUS
    assert data["items"][1]["prediction"]["label"] == SCRIPT_BREAK
    assert script_json({"a": "</script>\u2028&"}) == '{"a":"\\u003c/script\\u003e\\u2028\\u0026"}'
    assert [m["name"] for m in data["methods"]] == json.loads((run / "manifest.json").read_text())[
        "run"
    ]["methods"]


def test_csp_allows_only_own_files(built: tuple[Path, Path]) -> None:
    _, page = built
    text = page.read_text(encoding="utf-8")
    match = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', text)
    assert match is not None
    content = html.unescape(match.group(1))
    policy = {part.split()[0]: part.split()[1:] for part in content.split(";") if part.strip()}
    assert policy["default-src"] == ["'none'"]
    for directive in ("script-src", "style-src", "img-src"):
        assert policy[directive] == ["'self'"]
    assert "unsafe" not in content and "http" not in content
    assert not re.search(r"""src=["'](https?:)?//|<link[^>]*href=["']https?:""", text)
    assert not re.search(r"https?://(?!arxiv\.org/abs/)", text), "links only to papers"


def test_images_are_relative_and_inside_the_folder(built: tuple[Path, Path]) -> None:
    run, page = built
    data = page_data(page)
    urls = [data["colourBars"]["heatmap"], data["colourBars"]["signed"]]
    for item in data["items"]:
        for picture in (item["original"], item["strip"]):
            if picture:
                urls.append(picture["url"])
        for method in item["methods"]:
            for key in ("overlay", "layers"):
                if method and method[key]:
                    urls.append(method[key]["url"])
    assert len(urls) > 20
    for url in urls:
        assert not url.startswith(("/", "file:", "http", "data:", "..")), url
        target = (run / Path(*[part for part in url.split("/")])).resolve()
        assert target.is_relative_to(run)
    # the malicious file name is percent-encoded in its overlay URL
    overlay = data["items"][0]["methods"][0]["overlay"]["url"]
    assert overlay.startswith("%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.png/")


def test_thumbnails_are_small_tiles(built: tuple[Path, Path]) -> None:
    run, page = built
    data = page_data(page)
    strips = [item["strip"] for item in data["items"] if item["strip"]]
    assert strips
    for strip in strips:
        assert max(strip["width"], strip["height"]) <= THUMBNAIL_SIZE <= 256
        with PIL.Image.open(run / strip["url"]) as image:
            assert image.height == strip["height"]
            assert image.width == strip["stride"] * (strip["count"] - 1) + strip["width"]


def test_failed_inputs_and_metrics(built: tuple[Path, Path]) -> None:
    run, page = built
    text = page.read_text(encoding="utf-8")
    failed = text.split('id="failed"')[1].split("</section>")[0]
    manifest = json.loads((run / "manifest.json").read_text())
    errors = [item for item in manifest["inputs"] if item["status"] == "error"]
    assert len(errors) == 2
    for item in errors:
        assert html.escape(item["error"], quote=False) in failed
    metrics = text.split('id="metrics"')[1].split("</section>")[0]
    assert "pointing_game" in metrics and "0.900" in metrics


def test_method_descriptions_come_from_the_registry(built: tuple[Path, Path]) -> None:
    run, page = built
    text = page.read_text(encoding="utf-8")
    for name in json.loads((run / "manifest.json").read_text())["run"]["methods"]:
        method = get_method(name)
        assert html.escape(method.summary(), quote=False) in text
        assert html.escape(method.paper, quote=False) in text
    gradient = describe_method("integrated_gradients")
    assert r"\int_0^1" in gradient.formula
    assert gradient.paper_url == "https://arxiv.org/abs/1703.01365"
    assert not describe_method("no_such_method").registered


def test_a_newly_registered_method_is_described(tmp_path: Path) -> None:
    @dataclasses.dataclass(frozen=True)
    class Doubled(Method):
        r"""Twice the gradient, for a gallery test.

        .. math:: a = 2\,\partial f_t / \partial x

        Nobody (2031), arXiv:2101.00001.
        """

        paper = "Nobody 2031, arXiv:2101.00001"

        def attribute(self, engine: Any, inputs: Tensor, target: Any) -> Tensor:
            raise NotImplementedError

    register_method(Doubled, name="doubled_for_gallery")
    try:
        run = write_synthetic_run(tmp_path / "run", 3, methods=["doubled_for_gallery"], failed=0)
        text = build_gallery(run).read_text(encoding="utf-8")
    finally:
        unregister_method("doubled_for_gallery")
    assert "Twice the gradient, for a gallery test." in text
    # The formula is the docstring's, as MathML: a, =, 2, a thin space, ∂ f_t / ∂ x.
    assert (
        '<math display="block"><mrow><mi>a</mi><mo>=</mo><mn>2</mn><mspace width="0.167em" />'
        "<mo>∂</mo><msub><mi>f</mi><mi>t</mi></msub><mo>/</mo><mo>∂</mo><mi>x</mi></mrow></math>"
    ) in text
    assert 'href="https://arxiv.org/abs/2101.00001"' in text


def test_split_docstring() -> None:
    formula, details = split_docstring(
        "Summary.\n\n.. math:: x = 1\n          + y\n\nSee :func:`saliency.render` and ``a``.\n\n"
        "Options:\n    steps: nodes."
    )
    assert formula == "x = 1\n+ y"
    assert details == "See saliency.render and a."


def test_every_registered_method_has_a_description() -> None:
    for name in list_methods():
        info = describe_method(name)
        assert info.registered and info.summary and info.paper, name


def test_rebuild_reuses_assets_and_notices_changes(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", 4, failed=0)
    build_gallery(run)
    strips = sorted((run / "gallery" / "strip").iterdir())
    before = {p: p.stat().st_mtime_ns for p in strips}
    build_gallery(run)
    assert {p: p.stat().st_mtime_ns for p in strips} == before
    manifest = json.loads((run / "manifest.json").read_text())
    overlay = run / manifest["inputs"][0]["methods"][manifest["run"]["methods"][0]]["overlay"]
    PIL.Image.new("RGB", PIL.Image.open(overlay).size, (0, 255, 0)).save(overlay)
    build_gallery(run)
    changed = [p for p in strips if p.stat().st_mtime_ns != before[p]]
    assert len(changed) == 1
    # an input that leaves the run takes its assets with it; nothing else is deleted
    keep = run / "gallery" / "strip" / "mine.txt"
    keep.write_text("not an asset")
    manifest["inputs"] = manifest["inputs"][1:]
    (run / "manifest.json").write_text(json.dumps(manifest))
    build_gallery(run)
    assert len(list((run / "gallery" / "strip").glob("*.jpg"))) == len(strips) - 1
    assert keep.is_file()


def test_single_file_is_self_contained(tmp_path: Path) -> None:
    run = hostile_run(tmp_path / "run", count=4)
    page = build_gallery(run, out=tmp_path / "share" / "report.html", single_file=True)
    assert page == tmp_path / "share" / "report.html"
    assert list(page.parent.iterdir()) == [page], "no assets folder beside a single file"
    text = page.read_text(encoding="utf-8")
    assert "<link" not in text and "<script src" not in text
    data = page_data(page)
    assert data["items"][0]["strip"]["url"].startswith("data:image/jpeg;base64,")
    assert data["items"][0]["methods"][0]["overlay"]["url"].startswith("data:image/png;base64,")
    style = re.search(r"<style>(.*?)</style>", text, re.S)
    script = re.search(r"<script>(.*?)</script>", text, re.S)
    assert style is not None and script is not None
    policy = content_security_policy(style.group(1), script.group(1))
    assert f'content="{policy}"' in text
    assert "img-src data:;" in policy and "'self'" not in policy


def test_out_folder_elsewhere_copies_overlays(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", 3, failed=0)
    page = build_gallery(run, out=tmp_path / "elsewhere")
    assert page == tmp_path / "elsewhere" / "index.html"
    data = page_data(page)
    for item in data["items"]:
        for method in item["methods"]:
            assert method["overlay"]["url"].startswith("gallery/overlay/")
            assert (page.parent / method["overlay"]["url"]).is_file()


def test_missing_sources_and_raw_fall_back(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", 3, raw=False, failed=0)
    manifest = json.loads((run / "manifest.json").read_text())
    Path(manifest["inputs"][0]["source"]).unlink()
    data = page_data(build_gallery(run))
    first = data["items"][0]
    assert first["original"] is None and "no longer" in first["originalProblem"]
    assert first["strip"] is not None and first["originalTile"] is None
    assert all(m["layers"] is None and m["overlay"] for m in first["methods"])


def test_manifest_paths_cannot_leave_the_run_folder(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", 2, failed=0)
    secret = tmp_path / "secret.png"
    PIL.Image.new("RGB", (8, 8)).save(secret)
    manifest = json.loads((run / "manifest.json").read_text())
    methods = manifest["inputs"][0]["methods"]
    methods[next(iter(methods))]["overlay"] = "../secret.png"
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert read_run(run).inputs[0].methods[next(iter(methods))].overlay is None
    data = page_data(build_gallery(run))
    assert data["items"][0]["methods"][0]["problem"] == "no overlay file"


def test_bad_run_folders_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(GalleryError, match=r"manifest\.json: not found"):
        build_gallery(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(GalleryError, match="cannot be read as JSON"):
        build_gallery(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": 9, "inputs": []}')
    with pytest.raises(GalleryError, match="format 9 is not supported"):
        build_gallery(tmp_path)


def test_empty_run(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text('{"format": 1, "run": {}, "inputs": []}')
    data = page_data(build_gallery(tmp_path))
    assert data["items"] == [] and data["methods"] == []


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = write_synthetic_run(tmp_path / "run", 2, failed=0)
    assert main(["gallery", str(run), "--title", "T", "--out", str(tmp_path / "o.html")]) == 0
    assert str(tmp_path / "o.html") in capsys.readouterr().out
    assert (tmp_path / "o_gallery" / "gallery.js").is_file()
    assert main(["gallery", str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@pytest.fixture
def explanations() -> Iterator[list[saliency.Explanation]]:
    model = _Tiny()
    inputs = torch.rand(3, 3, 16, 20, generator=torch.Generator().manual_seed(1))
    yield [
        saliency.explain(model, inputs, method="gradient"),
        saliency.explain(model, inputs, method="integrated_gradients", steps=4),
        saliency.explain(model, inputs, method="gradcam"),
    ]


def test_build_from_explanations(tmp_path: Path, explanations: list[saliency.Explanation]) -> None:
    names = ["a/cat.jpg", MALICIOUS, "a/cat.jpg"]
    page = build_gallery_from_explanations(
        explanations, tmp_path / "out", names=names, title="API", labels=["ant", "bee", "cow"]
    )
    assert page == tmp_path / "out" / "index.html"
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [i["path"] for i in manifest["inputs"]] == ["a/cat.jpg", MALICIOUS, "a/cat.jpg~2"]
    assert manifest["run"]["methods"] == ["gradient", "integrated_gradients", "gradcam"]
    assert manifest["run"]["method_options"]["integrated_gradients"]["steps"] == 4
    first = manifest["inputs"][0]
    assert first["prediction"]["label"] in ("ant", "bee", "cow")
    assert abs(sum(s["probability"] for s in first["top5"]) - 1.0) < 1e-5
    assert (tmp_path / "out" / first["methods"]["gradcam"]["raw"]).is_file()
    data = page_data(page)
    assert all(m["layers"] is not None for item in data["items"] for m in item["methods"])
    sheets = {m["layers"]["url"] for item in data["items"] for m in item["methods"]}
    assert len(sheets) == 3, "one heatmap sheet per input"
    assert data["items"][0]["original"]["width"] == 20


def test_build_from_explanations_rejects_bad_input(
    tmp_path: Path, explanations: list[saliency.Explanation]
) -> None:
    from saliency.errors import InvalidOptionError

    with pytest.raises(InvalidOptionError, match="appears twice"):
        build_gallery_from_explanations([explanations[0]] * 2, tmp_path)
    with pytest.raises(InvalidOptionError, match="relative path"):
        build_gallery_from_explanations(explanations[0], tmp_path, names=["../x", "b", "c"])
    with pytest.raises(InvalidOptionError, match="names must be"):
        build_gallery_from_explanations(explanations[0], tmp_path, names=["a"])


@pytest.mark.parametrize("channels", [1, 3])
def test_heatmap_layers_are_the_pixels_of_render(channels: int) -> None:
    attributions = torch.randn(1, channels, 20, 30, generator=torch.Generator().manual_seed(5))
    absolute, signed = heatmaps(attributions, "viridis", "RdBu_r", limit=1024)
    expected = [
        np.asarray(saliency.render(attributions, style="heatmap", cmap="viridis", as_pil=True)[0]),
        np.asarray(
            saliency.render(attributions, style="heatmap", sign="all", cmap="RdBu_r", as_pil=True)[
                0
            ]
        ),
    ]
    assert (np.asarray(absolute) == expected[0]).all()
    assert (np.asarray(signed) == expected[1]).all()
    large, _ = heatmaps(attributions, "viridis", "RdBu_r", limit=15)
    assert large.size == (15, 10)


def test_a_large_raw_map_is_shrunk_while_it_is_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Issue #13, item 11: a 16000² map (1 GB) must not be read whole; it is averaged over
    # k × k blocks band by band, to at most the display size.
    import torch.nn.functional as F

    from saliency.gallery import imaging

    monkeypatch.setattr(imaging, "_RAW_READ_BYTES", 3000)  # many bands
    values = np.random.default_rng(0).normal(size=(3, 100, 61))
    np.save(tmp_path / "big.npy", values)  # float64, (C, H, W)
    shrunk = imaging.raw_attributions(tmp_path / "big.npy", limit=16)
    expected = F.avg_pool2d(torch.from_numpy(values[None]).float(), 7, ceil_mode=True)
    assert shrunk.shape == (1, 3, 15, 9) and shrunk.dtype == torch.float32
    torch.testing.assert_close(shrunk, expected, rtol=1e-6, atol=1e-6)
    small = imaging.raw_attributions(tmp_path / "big.npy", limit=100)
    assert torch.equal(small, torch.from_numpy(values[None]).float())
    claims = tmp_path / "claims.npy"
    header = tmp_path / "header.npy"
    np.lib.format.open_memmap(header, mode="w+", dtype=np.float32, shape=(16000, 16000))
    with open(header, "rb") as handle:
        claims.write_bytes(handle.read(4096))  # a header claiming 1 GB, 4 KB of file
    with pytest.raises(ValueError, match="fewer bytes"):
        imaging.raw_attributions(claims, limit=1024)


def test_single_file_embeds_large_overlays_at_the_display_size(tmp_path: Path) -> None:
    # Issue #13, item 12: full-resolution overlays made a 10-photo page 189 MB.
    import base64
    import io

    from saliency.gallery.assets import DISPLAY_SIZE

    run = write_synthetic_run(tmp_path / "run", 2, raw=False, failed=0)
    manifest = json.loads((run / "manifest.json").read_text())
    entry = manifest["inputs"][0]
    overlay = run / next(iter(entry["methods"].values()))["overlay"]
    width, height = PIL.Image.open(overlay).size
    scale = -(-3000 // max(width, height))
    noise = np.random.default_rng(0).integers(0, 256, (height * scale, width * scale, 3))
    PIL.Image.fromarray(noise.astype(np.uint8)).save(overlay)  # ~27 MB of PNG
    page = build_gallery(run, out=tmp_path / "one.html", single_file=True)
    urls = {
        method["overlay"]["url"]
        for item in page_data(page)["items"]
        for method in item["methods"]
        if method.get("overlay")
    }
    big = [u for u in urls if u.startswith("data:image/jpeg;base64,")]
    assert len(big) == 1, "the large overlay is embedded as a display-size JPEG"
    image = PIL.Image.open(io.BytesIO(base64.b64decode(big[0].split(",", 1)[1])))
    assert max(image.size) == DISPLAY_SIZE
    assert abs(image.width / image.height - width / height) < 0.01
    assert all(u.startswith("data:image/png;base64,") for u in urls - set(big)), "small: as is"
    assert page.stat().st_size < overlay.stat().st_size / 5
