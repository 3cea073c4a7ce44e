"""Report pages as a browser shows them: headless Chromium (the system's, driven by playwright)
opens a run's page, a comparison and a page without ground truth, checks that every picture
and chart loaded and the key text is there, and saves a full-page screenshot of each.

Screenshots go to $MODNET_REPORT_CHECK_DIR when set (`make report-check`: report-check/ in the
repository), else to this test's pytest tmp dir. Skips when chromium or playwright is missing
(`.ci/run` installs chromium when it can; playwright is in the `dev` extra).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modnet_batch.reporting.html import write_html

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("MODNET_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SHOTS_ENV = "MODNET_REPORT_CHECK_DIR"
# Headless, as root, offline: without the background-networking flags Chromium keeps trying
# to reach Google's services on a closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# What every <img> says about itself once the page has loaded.
_IMAGES_JS = """() => Array.from(document.images).map(i => ({
    alt: i.alt, kind: i.dataset.kind || null, cls: i.className,
    complete: i.complete, w: i.naturalWidth, h: i.naturalHeight,
    shownW: i.getBoundingClientRect().width, shownH: i.getBoundingClientRect().height}))"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium; or $MODNET_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    profile = tmp_path_factory.mktemp("chromium-profile")  # a fresh --user-data-dir
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1500, "height": 1000},
            offline=True,  # a page that fetches anything fails the checks below
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = os.environ.get(SHOTS_ENV)
    path = Path(folder) if folder else tmp_path_factory.mktemp("report-check")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def pages(report_runs: dict[str, Path], shots: Path) -> dict[str, Path]:
    return {
        "run": write_html([report_runs["gt"]], shots / "run.html"),
        "comparison": write_html(
            [report_runs["gt"], report_runs["paper"]], shots / "comparison.html"
        ),
        "no-ground-truth": write_html([report_runs["matte"]], shots / "no-ground-truth.html"),
    }


def _open(browser: Any, page_file: Path, shots: Path) -> tuple[Any, list[dict[str, Any]]]:
    """The page loaded from file://, its images, and its full-page screenshot saved."""
    requests: list[str] = []
    page = browser.new_page()
    page.on("request", lambda r: requests.append(r.url))
    page.goto(page_file.resolve().as_uri(), wait_until="load")
    images = page.evaluate(_IMAGES_JS)
    page.screenshot(path=str(shots / f"{page_file.stem}.png"), full_page=True)
    assert all(u.startswith(("file:", "data:")) for u in requests), requests  # nothing online
    broken = [i["alt"] for i in images if not (i["complete"] and i["w"] > 0 and i["h"] > 0)]
    assert not broken, f"images that did not load: {broken}"
    return page, images


def _panels_keep_aspect(images: list[dict[str, Any]]) -> None:
    panels = [i for i in images if i["kind"] and i["kind"] != "colorbar"]
    assert panels
    for i in panels:  # shown at the picture's own aspect, never squeezed by the layout
        assert abs(i["shownW"] / i["shownH"] - i["w"] / i["h"]) < 0.02, i["alt"]


def test_a_run_page(browser: Any, pages: dict[str, Path], shots: Path) -> None:
    page, images = _open(browser, pages["run"], shots)
    text = page.inner_text("body")
    for needle in ("MSE", "MAD", "SAD", "Grad", "Conn", "mIoU", "lower is better"):
        assert needle in text
    assert "synth-001" in page.inner_text("#failed-list")
    assert "land-synth-000" in text and "Worst 6 by MSE" in text
    plots = [i["alt"] for i in images if "plot" in i["cls"]]
    assert sorted(plots) == ["distributions", "run-gt timeline"]
    kinds = [i["kind"] for i in images]
    assert kinds.count("error") == kinds.count("colorbar") == 9
    _panels_keep_aspect(images)
    page.close()


def test_a_comparison_page(browser: Any, pages: dict[str, Path], shots: Path) -> None:
    page, images = _open(browser, pages["comparison"], shots)
    warning = page.inner_text("#warnings")
    assert "different protocols (seed-area vs paper)" in warning
    assert page.is_visible("#warnings")
    assert "run-paper \u2212 run-gt" in page.inner_text("#metrics")  # the delta row
    plots = [i["alt"] for i in images if "plot" in i["cls"]]
    assert sorted(plots) == ["distributions", "run-gt timeline", "run-paper timeline", "scatter"]
    _panels_keep_aspect(images)
    page.close()


def test_a_page_without_ground_truth(browser: Any, pages: dict[str, Path], shots: Path) -> None:
    page, images = _open(browser, pages["no-ground-truth"], shots)
    text = page.inner_text("body")
    assert "No ground truth" in text and "Predictions: 10 of 10 images" in text
    kinds = [i["kind"] for i in images]
    assert kinds.count("prediction") == kinds.count("cutout") == 10
    assert "error" not in kinds and page.query_selector("#metrics") is None
    _panels_keep_aspect(images)
    page.close()


def test_the_screenshots_are_saved(browser: Any, pages: dict[str, Path], shots: Path) -> None:
    for name in pages:
        if not (shots / f"{name}.png").is_file():
            _open(browser, pages[name], shots)[0].close()
        assert (shots / f"{name}.png").stat().st_size > 10_000
        assert pages[name].parent == shots  # the page beside its screenshot
