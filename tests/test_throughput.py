"""The throughput record (results/throughput.py): steady and overall img/s per device and in
total, a resume's merge, old summaries; and one run showing the same figures everywhere."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modnet_batch.cli import app
from modnet_batch.data.ingest import ingest
from modnet_batch.data.synthetic import make_synthetic
from modnet_batch.reporting.html import write_html
from modnet_batch.results import Share, Throughput, UnitResult


def _unit(worker: str, images: int, started: float, finished: float) -> UnitResult:
    return UnitResult(
        unit=f"s-{worker}-{started}",
        rows=[],
        accumulator={},
        images=images,
        failed=0,
        seconds=finished - started,
        stages={"infer": finished - started},
        worker=worker,
        node="n1",
        pid=1,
        started=started,
        finished=finished,
    )


def test_steady_counts_from_the_first_start_to_the_last_finish() -> None:
    units = [_unit("cpu0", 4, 10.0, 12.0), _unit("cpu1", 4, 11.0, 14.0), _unit("cpu0", 2, 12.5, 13)]
    t = Throughput.measure(units, wall_s=20.0)
    assert t.images == 10 and t.steady_s == 4.0  # 10.0 -> 14.0
    assert t.steady_images_per_s == 2.5 and t.overall_images_per_s == 0.5
    assert t.per_device == {"cpu0": Share(6, 3.0), "cpu1": Share(4, 3.0)}
    assert t.per_device["cpu0"].steady_images_per_s == 2.0
    # the devices' overall figures add up to the total
    assert sum(t.overall_of(s) for s in t.per_device.values()) == t.overall_images_per_s
    assert t.per_node == {"n1": Share(10, 4.0)}
    assert t.stages_s == {"infer": 5.5}


def test_a_resume_adds_to_the_earlier_attempts_and_a_no_op_changes_nothing() -> None:
    first = Throughput.measure([_unit("cpu0", 4, 0.0, 2.0)], wall_s=5.0).after(None)
    second = Throughput.measure([_unit("cpu0", 2, 100.0, 101.0), _unit("gpu0", 2, 100, 102)], 3.0)
    merged = second.after(first)
    assert (merged.images, merged.wall_s, merged.steady_s, merged.attempts) == (8, 8.0, 4.0, 2)
    assert merged.per_device == {"cpu0": Share(6, 3.0), "gpu0": Share(2, 2.0)}
    assert merged.steady_images_per_s == 2.0 and merged.overall_images_per_s == 1.0
    nothing = Throughput.measure([], wall_s=0.4).after(merged)
    assert nothing == Throughput(**{**merged.__dict__, "attempts": 3})


def test_the_record_round_trips_and_old_summaries_still_read() -> None:
    t = Throughput.measure([_unit("cpu0", 4, 0.0, 2.0)], wall_s=5.0)
    data = t.to_dict()
    assert data["steady_images_per_s"] == 2.0 and data["overall_images_per_s"] == 0.8
    assert data["per_device"]["cpu0"]["overall_images_per_s"] == 0.8
    assert Throughput.from_dict(json.loads(json.dumps(data))) == t
    old = {  # as summaries were written before the two rates were named
        "attempts": 1,
        "images": 6,
        "images_per_s": 21.7,
        "wall_s": 0.2765,
        "per_device": {"inline:cpu": {"images": 6, "images_per_s": 33.5, "seconds": 0.179}},
        "per_node": {"vm": {"images": 6, "images_per_s": 33.5, "seconds": 0.179}},
        "stages_s": {"infer": 0.05},
    }
    read = Throughput.from_dict(old)
    assert read.per_device == {"inline:cpu": Share(6, 0.179)} and read.steady_s == 0.179
    assert read.overall_images_per_s == pytest.approx(21.7, rel=1e-3)


def _figures(text: str) -> tuple[str, str]:
    found = re.search(r"([\d.]+) steady img/s, ([\d.]+) overall img/s", text)
    assert found, text
    return found.group(1), found.group(2)


def test_one_run_shows_the_same_figures_everywhere(tiny_model: Path, tmp_path: Path) -> None:
    src = make_synthetic(tmp_path / "src", n=6, height=96, width=64, seed=5)
    ingest(src, tmp_path / "ds", shard_size=3)
    run = tmp_path / "run"
    args = ["submit", "--dataset", str(tmp_path / "ds"), "--model", str(tiny_model)]
    result = CliRunner().invoke(app, [*args, "--out", str(run), "--backend", "inline"])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())["throughput"]
    steady, overall = (
        f"{summary['steady_images_per_s']:.2f}",
        f"{summary['overall_images_per_s']:.2f}",
    )
    assert float(overall) > 0 and float(steady) >= float(overall)  # start-up only adds time
    lines = result.output.splitlines()
    progress = [line for line in lines if re.match(r"\[\s*\d+:\d\d\] submit: \d+/6 images", line)]
    assert _figures(progress[-1]) == (steady, overall)  # the progress line's last figures
    rows = [line for line in lines if "│" in line and re.search(r"^\W*6\W", line)]
    # the summary table's last two columns, and the device table's
    assert len(rows) == 1 and rows[0].rstrip(" │").split()[-3:] == [steady, "│", overall], rows
    # each device's row shows the summary's figures for that device
    per_device = json.loads((run / "summary.json").read_text())["throughput"]["per_device"]
    for label, share in per_device.items():
        device = [line for line in lines if f" {label} " in line and "│" in line]
        figures = [
            f"{share['steady_images_per_s']:.2f}",
            "│",
            f"{share['overall_images_per_s']:.2f}",
        ]
        assert device and device[0].rstrip(" │").split()[-3:] == figures, device
    page = write_html([run], tmp_path / "page.html").read_text()
    assert f"<th>steady img/s</th><td class='num'>{steady}</td>" in page
    assert f"<th>overall img/s</th><td class='num'>{overall}</td>" in page
