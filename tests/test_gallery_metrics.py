"""The gallery's metrics table (grouped columns, intervals, control rows, sticky model and
method columns) and the colour legend of the overview, as data and in the real browser."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_gallery_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    INSTALL,
    assert_images_decoded,
    open_gallery,
)

from saliency.gallery import build_gallery
from saliency.gallery.metrics_table import OTHER, metrics_table
from saliency.gallery.synthetic import write_synthetic_run

LAYERS = ("stage1", "stage2", "stage3", "stage4", "classifier")
LOCALISATION = ("pointing_game", "relevance_mass", "relevance_rank", "marker_mass", "object_mass")


def demo_rows(intervals: bool = False) -> list[dict[str, Any]]:
    """Rows shaped like ``saliency demo``'s metrics.json: 18 metric columns (20 with model and
    method), optional ``_low``/``_high`` intervals and a control row."""
    generator = random.Random(0)
    rows: list[dict[str, Any]] = []
    for model in ("demo:shapes", "demo:shapes-shortcut", "demo:shapes-rrr"):
        for method in ("gradient", "integrated_gradients", "smoothgrad", "gradcam"):
            row: dict[str, Any] = {"model": model, "method": method}
            for name in (*LOCALISATION, "deletion_auc", "insertion_auc"):
                row[name] = generator.random()
                if intervals:
                    row[f"{name}_low"], row[f"{name}_high"] = row[name] - 0.05, row[name] + 0.04
            row.update({f"sanity_{layer}": generator.random() for layer in LAYERS})
            row.update(accuracy=0.97, counterfactual_accuracy=0.41, robustness=0.5)
            row.update(robustness_top_k=0.6, random_robustness=0.2, seconds=1.25)
            rows.append(row)
    if intervals:
        rows.append({"model": "demo:shapes", "method": "baseline:centre", "pointing_game": 0.31})
    return rows


# --- the table as data --------------------------------------------------------------------------


def test_columns_are_grouped_by_what_they_measure() -> None:
    table = metrics_table({"rows": demo_rows()})
    assert table is not None
    titles = [group.title for group in table.groups]
    assert titles == ["Localisation", "Faithfulness", "Robustness", "Sanity", "Model", "Run"]
    groups = {group.title: [c.key for c in group.columns] for group in table.groups}
    assert groups["Localisation"] == list(LOCALISATION)
    assert groups["Faithfulness"] == ["deletion_auc", "insertion_auc"]
    assert groups["Sanity"] == [f"sanity_{layer}" for layer in LAYERS]
    assert groups["Robustness"] == ["robustness", "robustness_top_k", "random_robustness"]
    assert len(table.columns) == 18 and len(table.rows) == 12
    labels = {c.key: c.label for c in table.columns}
    assert labels["sanity_stage1"] == "stage1" and labels["robustness_top_k"] == "top k"
    assert labels["pointing_game"] == "pointing game"
    # each row's cells follow the columns, group by group
    first = table.rows[0]
    assert [len(cells) for cells in first.groups] == [len(g.columns) for g in table.groups]
    assert first.cells[0].text == f"{demo_rows()[0]['pointing_game']:.3f}"


def test_new_columns_join_their_group_or_other() -> None:
    rows = [
        {"model": "m", "method": "gradient", "sanity_layer9": 0.5, "road_morf": 0.2},
        {"model": "m", "method": "gradcam", "mystery": "x", "sparseness": 0.3, "control": False},
    ]
    table = metrics_table({"rows": rows})
    assert table is not None
    groups = {group.title: [c.key for c in group.columns] for group in table.groups}
    assert groups == {
        "Faithfulness": ["road_morf"],
        "Sanity": ["sanity_layer9"],
        "Complexity": ["sparseness"],
        OTHER: ["mystery"],
    }
    # a missing value is a dash; text stays text
    by_key = dict(zip([c.key for c in table.columns], table.rows[1].cells, strict=True))
    assert by_key["road_morf"].text == "—" and by_key["mystery"].number is False


def test_intervals_fold_into_their_metric() -> None:
    table = metrics_table({"rows": demo_rows(intervals=True)})
    assert table is not None
    keys = [c.key for c in table.columns]
    assert len(keys) == 18 and not any(k.endswith(("_low", "_high")) for k in keys)
    column = table.columns[0]
    assert (column.key, column.low, column.high) == (
        "pointing_game",
        "pointing_game_low",
        "pointing_game_high",
    )
    row = demo_rows(intervals=True)[0]
    cell = table.rows[0].cells[0]
    assert cell.text == f"{row['pointing_game']:.3f}"
    low, high = row["pointing_game_low"], row["pointing_game_high"]
    assert cell.interval == f"[{low:.3f}, {high:.3f}]"
    # a control row: marked, its missing intervals left out
    control = table.rows[-1]
    assert control.control and control.method == "baseline:centre"
    assert control.cells[0].interval is None and control.cells[1].text == "—"
    assert not any(r.control for r in table.rows[:-1])


def test_a_lone_low_column_stays_a_column() -> None:
    table = metrics_table({"rows": [{"model": "m", "method": "g", "x": 1.0, "x_low": 0.5}]})
    assert table is not None
    assert [c.key for c in table.columns] == ["x", "x_low"]
    assert metrics_table(None) is None and metrics_table({"rows": "nope"}) is None


def test_the_page_has_group_headers_and_sticky_columns(tmp_path: Path) -> None:
    run = metrics_run(tmp_path, intervals=True)
    html = build_gallery(run).read_text()
    assert '<th scope="colgroup" colspan="5" class="group">Localisation</th>' in html
    assert html.count('class="sticky sticky-model"') == 1 + 13
    assert '<tr class="control">' in html
    assert '<span class="interval">[' in html
    assert 'data-column="sanity_stage1"' in html and 'title="sanity_stage1"' in html


def metrics_run(folder: Path, intervals: bool = False) -> Path:
    run = write_synthetic_run(folder / "run", 4, seed=3)
    (run / "metrics.json").write_text(json.dumps({"rows": demo_rows(intervals), "notes": "demo"}))
    return run


# --- in the browser -----------------------------------------------------------------------------


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


STICKY_VISIBLE = """() => {
  const wrap = document.querySelector("#metrics .table-wrap");
  const box = wrap.getBoundingClientRect();
  return Array.from(wrap.querySelectorAll("tbody tr")).map((row) => {
    const cells = [row.querySelector(".sticky-model"), row.querySelector(".sticky-method")];
    return cells.map((cell) => {
      const r = cell.getBoundingClientRect();
      const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
      return { left: r.left - box.left, right: r.right - box.left,
               onTop: hit === cell || cell.contains(hit), text: cell.textContent };
    });
  });
}"""


def test_metrics_table_keeps_model_and_method_in_view(
    browser: Any, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    run = metrics_run(tmp_path, intervals=True)
    build_gallery(run)
    page, watch = open_gallery(browser, (run / "index.html").as_uri())
    section = page.locator("#metrics")
    section.scroll_into_view_if_needed()
    titles = page.locator("#metrics th.group").all_text_contents()
    assert titles == ["Localisation", "Faithfulness", "Robustness", "Sanity", "Model", "Run"]
    wrap = page.locator("#metrics .table-wrap")
    widths = wrap.evaluate("w => [w.scrollWidth, w.clientWidth]")
    artifacts = tmp_path_factory.mktemp("metrics-artifacts")
    section.screenshot(path=artifacts / "metrics.png")
    before = page.evaluate(STICKY_VISIBLE)
    assert all(cell["onTop"] for row in before for cell in row)
    if widths[0] > widths[1]:  # the metric columns scroll; model and method must not
        wrap.evaluate("w => { w.scrollLeft = w.scrollWidth; }")
        assert wrap.evaluate("w => w.scrollLeft") > 0
        section.screenshot(path=artifacts / "metrics-scrolled.png")
        after = page.evaluate(STICKY_VISIBLE)
        for row_before, row_after in zip(before, after, strict=True):
            for cell_before, cell_after in zip(row_before, row_after, strict=True):
                assert cell_after["onTop"], cell_after
                assert abs(cell_after["left"] - cell_before["left"]) < 1
        # the last column is in view next to them
        last = page.locator("#metrics thead th.metric").last.bounding_box()
        box = wrap.bounding_box()
        assert last is not None and box is not None
        assert last["x"] + last["width"] <= box["x"] + box["width"] + 1
        assert last["x"] >= after[0][1]["right"] + box["x"] - 1
    # intervals sit under their value, inside the cell
    cell = page.locator("#metrics tbody tr").first.locator("td.number").first
    assert cell.locator(".interval").count() == 1
    value, interval = cell.inner_text().split("\n")
    assert interval.startswith("[") and float(value) > float(interval[1:].split(",")[0])
    # the control row is set apart
    control = page.locator("#metrics tr.control")
    assert control.count() == 1
    assert control.evaluate("r => getComputedStyle(r.cells[0]).fontStyle") == "italic"
    print(f"\nmetrics screenshots: {artifacts}; table {widths[0]} px in {widths[1]} px")
    watch.assert_clean(run.as_uri() + "/")
    page.context.close()


def test_overview_columns_carry_a_colour_legend(browser: Any, tmp_path: Path) -> None:
    run = metrics_run(tmp_path)
    build_gallery(run)
    page, watch = open_gallery(browser, (run / "index.html").as_uri())
    headers = page.locator("#grid thead th.method-col")
    assert headers.count() >= 2
    for k in range(headers.count()):
        legend = headers.nth(k).locator(".col-legend")
        assert legend.locator(".ticks span").all_text_contents() == ["low", "high"]
        assert "low → high relevance" in (legend.get_attribute("title") or "")
        bar = legend.locator("img.col-legend-bar").bounding_box()
        assert bar is not None and bar["width"] >= 60 and bar["height"] > 3
    assert assert_images_decoded(page) > 0
    watch.assert_clean(run.as_uri() + "/")
    page.context.close()


def test_overview_legend_is_signed_when_the_run_recorded_signed_overlays(tmp_path: Path) -> None:
    run = metrics_run(tmp_path)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["run"]["overlay"] = {"sign": "all"}
    (run / "manifest.json").write_text(json.dumps(manifest))
    html = build_gallery(run).read_text()
    assert '<span class="ticks"><span>−</span><span>0</span><span>+</span></span>' in html
    assert "scale/RdBu_r.png" in html.split('class="col-legend-bar"')[1][:200]


def test_detail_cards_say_what_the_colours_mean(browser: Any, tmp_path: Path) -> None:
    run = metrics_run(tmp_path)
    build_gallery(run)
    page, watch = open_gallery(browser, (run / "index.html").as_uri() + "#image-0")
    card = page.locator(".method-cards .card").first
    assert card.locator(".scale-caption").inner_text() == "|attribution|: low → high relevance"
    card.locator(".sign-toggle").check()
    assert "0 · + for the target" in card.locator(".scale-caption").inner_text()
    ticks = card.locator(".scale .ticks span").all_text_contents()
    assert len(ticks) == 3 and ticks[1] == "0" and ticks[0].startswith("−")
    watch.assert_clean(run.as_uri() + "/")
    page.context.close()
