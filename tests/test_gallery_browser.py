"""The gallery in a real browser: Playwright for Python driving the system Chromium.

Needs ``pip install playwright`` and Debian's ``chromium`` (``/usr/bin/chromium``, or the path
in ``$SALIENCY_CHROMIUM``); never ``playwright install``. Without them these tests FAIL and say
how to install them. Screenshots and timings go to ``$SALIENCY_ARTIFACTS/gallery`` when that is
set, else to a pytest temporary folder; each test prints where.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from saliency.gallery import build_gallery
from saliency.gallery.synthetic import write_synthetic_run
from saliency.methods.registry import get_method, list_methods

CHROMIUM = os.environ.get("SALIENCY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
INSTALL = (
    "the gallery's browser tests need Playwright for Python and the system Chromium: "
    "`python -m pip install playwright` and `apt-get install -y chromium` (Debian; "
    "/usr/bin/chromium, or set SALIENCY_CHROMIUM). Do not run `playwright install`."
)
MALICIOUS = "<img src=x onerror=alert(1)>.png"
HOSTILE_LABEL = "</script><script>window.__pwned = 1</script>"
VIEWPORT = {"width": 1400, "height": 900}
# Replaces the dialog functions before any script of the page runs: injected markup that ran
# would leave a trace in window.__dialogs (and window.__pwned), even if no dialog opened.
INIT_SCRIPT = """
window.__dialogs = [];
for (const name of ["alert", "confirm", "prompt", "print"]) {
  window[name] = function () { window.__dialogs.push(name); };
}
"""
VISIBLE_IMAGES = """() => Array.from(document.images).filter((img) => {
  const r = img.getBoundingClientRect();
  const box = img.parentElement.getBoundingClientRect();
  return img.offsetParent !== null && r.width > 0 && r.height > 0 && box.bottom > 0
    && box.top < innerHeight && box.right > 0 && box.left < innerWidth;
})"""


PAGE_TURNS = """() => {
  const next = document.getElementById("page-next");
  const started = performance.now();
  for (let k = 0; k < 3; k++) next.click();
  return (performance.now() - started) / 3;
}"""


@dataclass
class Watch:
    """What a page did: requests, failures, console errors, dialogs."""

    requests: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def assert_clean(self, root: str) -> None:
        assert not self.errors, f"console errors: {self.errors}"
        assert not self.failed, f"failed requests: {self.failed}"
        assert not self.dialogs, f"dialogs opened: {self.dialogs}"
        outside = [url for url in self.requests if not url.startswith(root)]
        assert not outside, f"requests outside the gallery folder {root}: {outside}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"Playwright is not installed: {INSTALL}")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.fail(f"Chromium not found at {CHROMIUM}: {INSTALL}")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = os.environ.get("SALIENCY_ARTIFACTS")
    folder = Path(root) / "gallery" if root else tmp_path_factory.mktemp("gallery-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\ngallery screenshots and timings: {folder}")
    return folder


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A 12-input run: a malicious file name, hostile label and message, two failures,
    one method without raw maps for the first input, and metrics."""
    folder = tmp_path_factory.mktemp("browser") / "run"
    names = [MALICIOUS] + [f"pets/{k:02d}_pet.png" for k in range(1, 12)]
    run = write_synthetic_run(folder, 12, names=names, failed=2, seed=7)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["inputs"][2]["prediction"]["label"] = HOSTILE_LABEL
    manifest["inputs"][-1]["error"] = "<img src=y onerror=alert(2)> broke"
    second = manifest["run"]["methods"][1]
    manifest["inputs"][0]["methods"][second]["raw"] = None
    (run / "manifest.json").write_text(json.dumps(manifest))
    build_gallery(run, title="Gallery <script>alert(3)</script>")
    return run, manifest


def open_gallery(browser: Any, url: str) -> tuple[Any, Watch]:
    context = browser.new_context(viewport=VIEWPORT, service_workers="block")
    context.add_init_script(INIT_SCRIPT)
    page = context.new_page()
    watch = Watch()
    page.on("request", lambda request: watch.requests.append(request.url))
    page.on(
        "requestfailed", lambda request: watch.failed.append(f"{request.url} {request.failure}")
    )
    page.on("pageerror", lambda error: watch.errors.append(str(error)))

    def on_console(message: Any) -> None:
        if message.type == "error":
            watch.errors.append(message.text)

    def on_dialog(dialog: Any) -> None:
        watch.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("console", on_console)
    page.on("dialog", on_dialog)
    page.goto(url)
    wait_until(page, "() => document.documentElement.dataset.galleryReady === 'true'")
    return page, watch


def wait_until(page: Any, predicate: str, timeout: float = 15.0) -> None:
    """Poll a JS predicate from Python (``page.wait_for_function`` would need CSP
    'unsafe-eval', which the gallery rightly refuses)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(predicate):
        assert time.monotonic() < deadline, f"timed out waiting for {predicate}"
        page.wait_for_timeout(50)


def assert_images_decoded(page: Any) -> int:
    """Wait for every visible image, then check each decoded (naturalWidth > 0)."""
    wait_until(page, f"() => ({VISIBLE_IMAGES})().every((img) => img.complete)")
    widths: list[int] = page.evaluate(f"({VISIBLE_IMAGES})().map((img) => img.naturalWidth)")
    assert widths and all(width > 0 for width in widths), widths
    return len(widths)


def assert_no_script_ran(page: Any) -> None:
    assert page.evaluate("window.__dialogs") == []
    assert page.evaluate("window.__pwned === undefined")
    assert page.evaluate("document.querySelectorAll('img[onerror], [onload], svg').length") == 0
    inline = "script:not([src]):not([type='application/json'])"
    assert page.evaluate(f'document.querySelectorAll("{inline}").length') == 0


def row_ids(page: Any) -> list[int]:
    return [
        int(i)
        for i in page.eval_on_selector_all("#rows tr[data-id]", "r => r.map(t => t.dataset.id)")
    ]


def test_overview_is_clean_safe_and_self_contained(
    browser: Any, gallery: tuple[Path, dict[str, Any]], artifacts: Path
) -> None:
    run, manifest = gallery
    page, watch = open_gallery(browser, (run / "index.html").as_uri())
    assert page.title() == "Gallery <script>alert(3)</script>"
    assert len(row_ids(page)) == 12
    assert assert_images_decoded(page) >= 20
    # the malicious name and the hostile strings are text
    assert page.get_by_role("button", name=MALICIOUS, exact=True).count() == 1
    assert page.locator("#rows").get_by_text(HOSTILE_LABEL, exact=True).count() == 1
    assert page.locator("#filter-label option", has_text=HOSTILE_LABEL).count() == 1
    assert page.locator("#failed").get_by_text("<img src=y onerror=alert(2)> broke").count() == 1
    assert page.evaluate('document.querySelectorAll(\'img[src="x"], img[src="y"]\').length') == 0
    assert_no_script_ran(page)
    # the CSP allows only the gallery's own files
    policy = page.get_attribute('meta[http-equiv="Content-Security-Policy"]', "content")
    assert policy is not None
    assert "default-src 'none'" in policy
    for directive in ("script-src 'self';", "style-src 'self';", "img-src 'self';"):
        assert directive in policy
    assert "unsafe" not in policy and "*" not in policy and "http" not in policy
    # the failed-inputs section and the metrics table
    assert page.locator("#failed li").count() == 2
    assert page.locator("#metrics tbody tr").count() == len(manifest["run"]["methods"])
    page.screenshot(path=artifacts / "overview.png")
    page.locator("#failed").scroll_into_view_if_needed()
    assert_images_decoded(page)
    page.screenshot(path=artifacts / "overview-failed-metrics.png")
    watch.assert_clean(run.as_uri() + "/")
    assert any(url.endswith(".jpg") for url in watch.requests)


def test_sort_and_filter(browser: Any, gallery: tuple[Path, dict[str, Any]]) -> None:
    run, manifest = gallery
    inputs = manifest["inputs"]
    page, watch = open_gallery(browser, (run / "index.html").as_uri())

    def probability(i: int) -> float:
        prediction = inputs[i]["prediction"]
        return -1.0 if prediction is None else float(prediction["probability"])

    page.select_option("#sort", "confidence-desc")
    ids = row_ids(page)
    assert [probability(i) for i in ids] == sorted((probability(i) for i in ids), reverse=True)
    page.select_option("#sort", "confidence-asc")
    ids = row_ids(page)
    assert [probability(i) for i in ids if probability(i) >= 0] == sorted(
        probability(i) for i in ids if probability(i) >= 0
    )
    page.click("th[data-sort='status'] button")
    assert {inputs[i]["status"] for i in row_ids(page)[:2]} == {"error"}
    page.select_option("#sort", "label")
    labels = [inputs[i]["prediction"]["label"] for i in row_ids(page) if inputs[i]["prediction"]]
    assert labels == sorted(labels, key=str.lower)

    page.select_option("#filter-status", "error")
    assert sorted(row_ids(page)) == [
        i for i, item in enumerate(inputs) if item["status"] == "error"
    ]
    page.select_option("#filter-status", "")
    label = inputs[3]["prediction"]["label"]
    page.select_option("#filter-label", label)
    expected = [
        i for i, item in enumerate(inputs) if (item["prediction"] or {}).get("label") == label
    ]
    assert sorted(row_ids(page)) == expected
    page.select_option("#filter-label", "")
    page.fill("#filter-confidence", "40")
    assert sorted(row_ids(page)) == [i for i in range(len(inputs)) if probability(i) >= 0.4]
    page.fill("#filter-confidence", "0")
    page.fill("#filter-text", "onerror")
    assert row_ids(page) == [0]
    page.fill("#filter-text", "no such image")
    assert row_ids(page) == [] and "0 of 0" in page.inner_text("#count")
    page.fill("#filter-text", "")
    page.select_option("#page-size", "25")
    assert len(row_ids(page)) == 12
    assert_no_script_ran(page)
    watch.assert_clean(run.as_uri() + "/")


def test_detail_view(browser: Any, gallery: tuple[Path, dict[str, Any]], artifacts: Path) -> None:
    run, manifest = gallery
    page, watch = open_gallery(browser, (run / "index.html").as_uri())
    order = row_ids(page)
    first = order.index(0)
    page.get_by_role("button", name=MALICIOUS, exact=True).click()
    detail = page.locator("#detail")
    assert detail.is_visible()
    assert page.inner_text("#detail-title") == MALICIOUS
    assert page.url.endswith("#image-0")
    cards = detail.locator(".card")
    assert cards.count() == len(manifest["run"]["methods"])
    assert detail.locator(".top5 li").count() == 5
    assert_images_decoded(page)

    # the blend slider: 0 % shows the image, 100 % the heatmap
    card = cards.nth(0)
    layer = card.locator(".layer")
    stack = card.locator(".stack")
    looks = {}
    for value, opacity in (("80", "0.8"), ("0", "0"), ("100", "1")):
        card.locator("input.blend").fill(value)
        assert layer.evaluate("el => getComputedStyle(el).opacity") == opacity
        assert card.locator("output.blend-value").inner_text() == f"{value} %"
        looks[value] = stack.screenshot()
    assert len(set(looks.values())) == 3, "each blend looks different"

    # the sign toggle shows the signed cell of the heatmap sheet, and its colour scale
    toggle = card.locator("input.sign-toggle")
    assert toggle.is_enabled() and layer.get_attribute("data-view") == "absolute"
    toggle.check()
    assert layer.get_attribute("data-view") == "signed"
    assert stack.screenshot() != looks["100"]
    assert card.locator(".ticks span").first.inner_text().startswith("−")
    offset = layer.evaluate(
        "el => [el.firstChild.offsetLeft / el.clientWidth,"
        " el.firstChild.offsetTop / el.clientHeight]"
    )
    cell = page.evaluate(
        "JSON.parse(document.getElementById('gallery-data').textContent).items[0].methods[0].layers"
    )
    assert offset[0] == pytest.approx(-cell["signed"][0] / cell["width"], abs=0.02)
    assert offset[1] == pytest.approx(-cell["signed"][1] / cell["height"], abs=0.02)
    assert_images_decoded(page)
    card.locator("input.blend").fill("60")
    card.scroll_into_view_if_needed()
    page.screenshot(path=artifacts / "detail-signed.png")
    toggle.uncheck()
    assert layer.get_attribute("data-view") == "absolute"

    # without raw maps the slider blends into the stored overlay; the toggle says why it is off
    second = cards.nth(1)
    assert second.locator("input.sign-toggle").is_disabled()
    assert "--save-raw" in str(second.locator("label.sign-label").get_attribute("title"))
    overlay_src = str(second.locator(".layer img").get_attribute("src"))
    assert overlay_src.startswith("%3Cimg%20src%3Dx")
    page.evaluate("document.getElementById('detail').scrollTop = 0")
    page.screenshot(path=artifacts / "detail.png")

    # keyboard: → and ← follow the overview's order, Esc closes
    detail.focus()
    page.keyboard.press("ArrowRight")
    expected_next = manifest["inputs"][order[first + 1]]["path"]
    assert page.inner_text("#detail-title") == expected_next
    page.keyboard.press("ArrowLeft")
    assert page.inner_text("#detail-title") == MALICIOUS
    page.keyboard.press("Escape")
    assert detail.is_hidden()
    assert not page.url.endswith("#image-0")
    assert_no_script_ran(page)
    watch.assert_clean(run.as_uri() + "/")


def test_links_to_method_descriptions_and_images(
    browser: Any, gallery: tuple[Path, dict[str, Any]]
) -> None:
    run, manifest = gallery
    failed = next(i for i, item in enumerate(manifest["inputs"]) if item["status"] == "error")
    page, watch = open_gallery(browser, (run / "index.html").as_uri() + f"#image-{failed}")
    # The hash opens the detail view once the page has laid out (slower on a loaded machine).
    page.locator("#detail").wait_for(state="visible", timeout=15_000)
    assert page.inner_text("#detail-title") == manifest["inputs"][failed]["path"]
    assert "failed" in page.inner_text("#detail-body")
    page.keyboard.press("Escape")
    name = manifest["run"]["methods"][0]
    page.locator("thead th.method-col a", has_text=name).click()
    target = page.locator(".method:target")
    assert target.locator("h3").inner_text().startswith(name)
    assert get_method(name).summary() in target.inner_text()
    assert target.locator(".formula").count() == 1
    page.locator("#failed a").first.click()
    assert page.locator("#detail").is_visible()
    watch.assert_clean(run.as_uri() + "/")


def test_formulas_render_as_mathml_with_no_raw_tex(
    browser: Any, gallery: tuple[Path, dict[str, Any]], artifacts: Path
) -> None:
    run, manifest = gallery
    page, watch = open_gallery(browser, (run / "index.html").as_uri() + "#methods")
    formulas = page.locator("#methods .formula")
    assert formulas.count() == len(manifest["run"]["methods"])
    for index in range(formulas.count()):
        formula = formulas.nth(index)
        assert formula.locator("code").count() == 0, "formula shown as source, not MathML"
        assert formula.locator("math").count() >= 1
        box = formula.locator("math").first.bounding_box()
        assert box is not None and box["width"] > 40 and box["height"] > 10
    text = page.inner_text("#methods")
    for command in ("\\frac", "\\sum", "\\partial", "\\mathrm", "\\int", "\\quad"):
        assert command not in text, f"raw TeX {command!r} visible"
    page.locator("#methods").screenshot(path=str(artifacts / "gallery-methods-mathml.png"))
    watch.assert_clean(run.as_uri() + "/")


def test_single_file_gallery(
    browser: Any, gallery: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    run, _ = gallery
    page_path = build_gallery(run, out=tmp_path / "share.html", single_file=True)
    page, watch = open_gallery(browser, page_path.as_uri())
    assert assert_images_decoded(page) >= 20
    page.get_by_role("button", name=MALICIOUS, exact=True).click()
    assert_images_decoded(page)
    assert page.evaluate("window.__dialogs") == [] and page.evaluate("window.__pwned === undefined")
    files = [url for url in watch.requests if not url.startswith("data:")]
    assert files == [page_path.as_uri()], "a single file loads nothing else"
    watch.requests = files
    watch.assert_clean(page_path.as_uri())


def test_csp_blocks_anything_else(browser: Any, gallery: tuple[Path, dict[str, Any]]) -> None:
    run, _ = gallery
    page, watch = open_gallery(browser, (run / "index.html").as_uri())
    blocked = page.evaluate(
        """() => new Promise((resolve) => {
          const seen = [];
          document.addEventListener(
            "securitypolicyviolation", (e) => seen.push(e.violatedDirective));
          const img = document.createElement("img");
          img.src = "https://example.invalid/x.png";
          document.body.append(img);
          const script = document.createElement("script");
          script.textContent = "window.__pwned = 1";
          document.body.append(script);
          setTimeout(() => resolve(seen), 300);
        })"""
    )
    assert any(d.startswith("img-src") for d in blocked)
    assert any(d.startswith("script-src") for d in blocked)
    assert page.evaluate("window.__pwned === undefined")
    # the browser refused the request itself: nothing went to the network
    remote = [url for url in watch.requests if not url.startswith("file:")]
    assert remote == ["https://example.invalid/x.png"]
    assert watch.failed == ["https://example.invalid/x.png csp"], watch.failed


def test_scale_build_time_and_first_paint(browser: Any, tmp_path: Path, artifacts: Path) -> None:
    """1,000 images × 4 methods builds in seconds and paints fast (pages of lazy images)."""
    methods = list_methods(families=False)[:4]
    timings: dict[str, float] = {}
    for count in (10, 1000):
        run = write_synthetic_run(
            tmp_path / f"run{count}", count, methods, size=(40, 30), raw=count <= 10, failed=3
        )
        started = time.perf_counter()
        page_path = build_gallery(run)
        timings[f"build_seconds_{count}"] = round(time.perf_counter() - started, 2)
        page, watch = open_gallery(browser, page_path.as_uri())
        # the paint timing entry is queued after the frame is presented, so wait for it
        wait_until(page, "() => performance.getEntriesByName('first-contentful-paint').length > 0")
        paint = page.evaluate(
            "performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? null"
        )
        assert paint is not None
        timings[f"first_contentful_paint_ms_{count}"] = round(paint)
        assert len(row_ids(page)) == min(count, 50)
        assert_images_decoded(page)
        lazy = page.eval_on_selector_all("#rows img", "i => i.every(x => x.loading === 'lazy')")
        assert lazy
        images = [url for url in watch.requests if "/strip/" in url]
        assert len(images) <= 50, "only the shown page's thumbnails load"
        if count == 1000:
            timings["page_turn_ms_1000"] = round(page.evaluate(PAGE_TURNS), 1)
            assert_images_decoded(page)
            page.screenshot(path=artifacts / "scale-1000.png")
            assert "Page 4 of 20" in page.inner_text("#page-info")
            assert len(set(row_ids(page))) == 50
        watch.assert_clean(run.as_uri() + "/")
        page.context.close()
    (artifacts / "timings.json").write_text(json.dumps(timings, indent=1))
    print(f"\ngallery timings: {timings}")
    assert timings["build_seconds_1000"] < 60, timings
    assert timings["first_contentful_paint_ms_1000"] < 5000, timings
