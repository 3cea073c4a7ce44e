"""The HTML report without a browser: self-contained, panels at the photo's aspect, the
comparison page of several runs, runs without ground truth, failed images, old runs."""

from __future__ import annotations

import base64
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from modnet_batch.cli import app
from modnet_batch.reporting.html import write_html
from modnet_batch.results import RunDir, UnitResult

runner = CliRunner()
PANEL_KINDS = ("input", "gt", "prediction", "error", "cutout")


class _Page(HTMLParser):
    """Every element's attributes, and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


def _imgs(page: _Page) -> list[dict[str, str]]:
    return [a for tag, a in page.elements if tag == "img"]


def _decoded_size(uri: str) -> tuple[int, int]:
    """(width, height) of a data URI's image."""
    head, data = uri.split(",", 1)
    assert head.startswith("data:image/") and head.endswith(";base64")
    pixels = cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_UNCHANGED)
    assert pixels is not None
    return pixels.shape[1], pixels.shape[0]


@pytest.fixture(scope="module")
def gt_page(report_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_html([report_runs["gt"]], tmp_path_factory.mktemp("page") / "gt.html")


def test_the_page_is_self_contained(gt_page: Path) -> None:
    page = _parse(gt_page)
    for tag, attrs in page.elements:
        for key in ("src", "href", "srcset", "data"):
            value = attrs.get(key, "")
            assert not value.startswith(("http:", "https:", "//", "file:")), (tag, key, value)
        if tag == "img":
            assert attrs["src"].startswith("data:image/"), attrs.get("alt")
        assert tag not in ("script", "link", "iframe"), tag
    assert "url(" not in gt_page.read_text()  # no CSS fetches either


def test_the_page_says_what_the_job_was_and_what_the_metrics_mean(
    gt_page: Path, report_runs: dict[str, Path]
) -> None:
    text = " ".join(_parse(gt_page).text)
    summary = RunDir(report_runs["gt"]).read_summary()
    for fact in (summary.job.dataset, "seed-area", "exact", "inline", "tiny", "fp32"):
        assert fact in text, fact
    for name in ("MSE", "MAD", "SAD", "Grad", "Conn", "mIoU", "img/s"):
        assert name in text
    assert text.count("lower is better") >= 5 and text.count("higher is better") >= 2
    assert "metrics over 9 of 10 images, 1 failed" in text
    assert "Worst 6 by MSE" in text and "Best 3 by MSE" in text


def test_failed_images_are_listed_with_their_reasons(gt_page: Path) -> None:
    page = gt_page.read_text()
    failed = page[page.index("id='failed-list'") :]
    failed = failed[: failed.index("</table>")]
    assert "synth-001" in failed and "Input/output error" in failed
    assert "1 may pass on a retry" in page


def test_panels_keep_each_photos_aspect(gt_page: Path) -> None:
    page = _parse(gt_page)
    shown = [a for a in _imgs(page) if a.get("data-kind") in PANEL_KINDS]
    ids = {a["alt"].split()[0] for a in shown}
    assert len(ids) == 9 and "land-synth-000" in ids  # the scored images: worst 6, best 3
    for attrs in shown:
        width, height = int(attrs["width"]), int(attrs["height"])
        assert _decoded_size(attrs["src"]) == (width, height)
        landscape = attrs["alt"].startswith("land-")
        source = (176, 96) if landscape else (120, 160)  # the photos' own W x H
        assert max(width, height) == 400
        assert abs(width / height - source[0] / source[1]) < 0.01, attrs["alt"]
    for image_id in ids:  # every pictured image: all five panels and the error's colour bar
        kinds = {a["data-kind"] for a in shown if a["alt"].split()[0] == image_id}
        assert kinds == set(PANEL_KINDS), image_id
    assert sum(a.get("data-kind") == "colorbar" for a in _imgs(page)) == len(ids)
    plots = [a for a in _imgs(page) if "plot" in a.get("class", "")]
    assert sorted(a["alt"] for a in plots) == ["distributions", "run-gt timeline"]


def test_two_runs_with_html_write_a_comparison(
    report_runs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "cmp.html"
    result = runner.invoke(
        app, ["report", str(report_runs["gt"]), str(report_runs["paper"]), "--html", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    page = out.read_text()
    assert "modnet-batch comparison: run-gt vs run-paper" in page
    assert "id='warnings'" in page and "different protocols (seed-area vs paper)" in page
    assert "the means are over different images" in page  # one image failed in run-gt only
    assert "run-paper &minus; run-gt" in page  # the delta row
    alts = [a["alt"] for a in _imgs(_parse(out)) if "plot" in a.get("class", "")]
    assert alts.count("scatter") == 1 and "distributions" in alts
    assert "run-gt timeline" in alts and "run-paper timeline" in alts
    kinds = {a.get("data-kind") for a in _imgs(_parse(out))}
    assert {"input", "gt", "pa", "ea", "pb", "eb"} <= kinds


def test_the_same_run_twice_compares_without_a_warning(
    report_runs: dict[str, Path], tmp_path: Path
) -> None:
    copy = tmp_path / "again"
    shutil.copytree(report_runs["paper"], copy)
    page = write_html([report_runs["paper"], copy], tmp_path / "same.html").read_text()
    assert "id='warnings'" not in page
    assert "run-paper vs again" in page


@pytest.mark.parametrize("run", ["nogt", "matte"])
def test_a_run_without_ground_truth_shows_predictions_and_cutouts(
    report_runs: dict[str, Path], tmp_path: Path, run: str
) -> None:
    out = tmp_path / f"{run}.html"
    result = runner.invoke(app, ["report", str(report_runs[run]), "--html", str(out)])
    assert result.exit_code == 0, result.output
    page = _parse(out)
    text = " ".join(page.text)
    assert "No ground truth" in text and "Predictions: 10 of 10 images" in text
    assert "id='metrics'" not in out.read_text()
    kinds = [a.get("data-kind") for a in _imgs(page)]
    assert kinds.count("input") == kinds.count("prediction") == kinds.count("cutout") == 10
    assert "error" not in kinds and "gt" not in kinds and "colorbar" not in kinds


def test_panels_cap_the_page(report_runs: dict[str, Path], tmp_path: Path) -> None:
    page = write_html([report_runs["gt"]], tmp_path / "two.html", panels=2)
    kinds = [a.get("data-kind") for a in _imgs(_parse(page))]
    assert kinds.count("input") == 4  # worst 2 + best 2


def test_the_summary_records_each_shards_times(report_runs: dict[str, Path]) -> None:
    summary = RunDir(report_runs["gt"]).read_summary()
    assert summary.started is not None and len(summary.timeline) == 3
    for entry in summary.timeline:
        assert summary.started <= entry["started"] <= entry["finished"]
        assert entry["worker"].startswith("inline:cpu") and entry["infer_s"] > 0
    assert sum(t["images"] for t in summary.timeline) == 10


def test_runs_made_before_shard_times_were_recorded_still_report(
    report_runs: dict[str, Path], tmp_path: Path
) -> None:
    old = tmp_path / "old"
    shutil.copytree(report_runs["gt"], old)
    data = json.loads((old / "summary.json").read_text())
    del data["started"], data["timeline"]
    (old / "summary.json").write_text(json.dumps(data))
    for marker in (old / "state" / "units").glob("*.json"):
        record = json.loads(marker.read_text())
        del record["started"], record["finished"]
        assert UnitResult.from_dict(record).started is None
    page = write_html([old], tmp_path / "old.html").read_text()
    assert "no per-shard times recorded" in page
    assert RunDir(old).read_summary().timeline == []


def test_a_report_of_a_missing_dataset_still_writes_the_numbers(
    report_runs: dict[str, Path], tmp_path: Path
) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(report_runs["gt"], moved)
    data = json.loads((moved / "summary.json").read_text())
    data["job"]["dataset"] = str(tmp_path / "gone")
    (moved / "summary.json").write_text(json.dumps(data))
    page = write_html([moved], tmp_path / "moved.html").read_text()
    assert "no pictures: the dataset could not be opened" in page and "MSE" in page
