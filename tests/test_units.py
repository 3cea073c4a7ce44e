"""Work units: runs of row groups sized for the job, each resumable on its own (inline backend)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from modnet_batch.data.dataset import Dataset
from modnet_batch.data.ingest import ingest
from modnet_batch.data.synthetic import make_synthetic
from modnet_batch.engine import EngineSpec
from modnet_batch.execution import shard_check as processor_module
from modnet_batch.execution import units
from modnet_batch.execution.driver import run_job
from modnet_batch.execution.processor import UnitProcessor
from modnet_batch.execution.worker_spec import WorkerSpec
from modnet_batch.options import JobConfig, load_job
from modnet_batch.results import RunDir, UnitResult, WorkUnit
from tests.helpers import calls_to


def _job(dataset: Path, out: Path, model: Path, **kw: object) -> JobConfig:
    values = {"dataset": str(dataset), "out": str(out), "model": str(model), "backend": "inline"}
    return load_job(None, {**values, **kw})


@pytest.fixture(scope="module")
def grouped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """22 small synthetic images ingested three ways: `big` in one shard of row groups of 4
    (6 row groups, the last of 2), `two` in 2 shards of 12 / 10 rows (row groups of 4), and
    `small` one shard per 4 images (what whole-shard runs did)."""
    base = tmp_path_factory.mktemp("grouped")
    src = make_synthetic(base / "src", n=22, height=96, width=64, seed=7)
    ingest(src, base / "big", shard_size=64, row_group_rows=4)
    ingest(src, base / "two", shard_size=12, row_group_rows=4)
    ingest(src, base / "small", shard_size=4, row_group_rows=4)
    return {k: base / k for k in ("big", "two", "small")}


@pytest.fixture(scope="module")
def reference(
    grouped: dict[str, Path], tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The whole-shard run: one shard per 4 images, each shard one unit."""
    out = tmp_path_factory.mktemp("ref") / "run"
    run_job(_job(grouped["small"], out, tiny_model))
    return out


def _same(a: Path, b: Path) -> None:
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (a, b))
    assert sa["metrics"] == sb["metrics"]  # bit-identical floats, not approx
    assert sa["accumulator"] == sb["accumulator"]
    assert sa["images"] == sb["images"]
    assert pq.read_table(a / "metrics.parquet").equals(pq.read_table(b / "metrics.parquet"))
    names = sorted(p.name for p in (a / "alpha").iterdir())
    assert names == sorted(p.name for p in (b / "alpha").iterdir())
    for name in names:  # outputs identical
        assert (a / "alpha" / name).read_bytes() == (b / "alpha" / name).read_bytes()


def _pending(dataset: Path, done: set[str] | None = None) -> list[WorkUnit]:
    ds = Dataset.open(dataset)
    groups = {s.name: ds.row_group_rows(s) for s in ds.shards}
    return units.pending(ds, groups, done or set())


def test_the_unit_size_rule() -> None:
    assert units.unit_images(41, 2) == 6  # ceil(41 / (4 * 2))
    assert units.unit_images(41, 1) == 11
    assert units.unit_images(100_000, 2) == units.MAX_UNIT_IMAGES
    assert units.unit_images(3, 16) == 1
    assert units.unit_images(0, 2) == 1


def test_units_never_split_a_row_group_and_cover_each_once(grouped: dict[str, Path]) -> None:
    tasks = _pending(grouped["big"])
    assert [(t.name, t.rows, t.row_groups) for t in tasks] == [
        ("shard-00000", 22, (0, 1, 2, 3, 4, 5))
    ]
    # 2 workers: at most ceil(22 / 8) = 3 images, so one row group (4) per unit, largest first
    two = units.split(tasks, 2)
    assert [u.name for u in two] == [f"shard-00000.rg{g}-{g}" for g in range(6)]
    assert [u.rows for u in two] == [4, 4, 4, 4, 4, 2]
    # 1 worker: at most ceil(22 / 4) = 6 images in the first unit, then ceil(18 / 4) = 5, ...
    # down to ceil(2 / 4) = 1, so the last row groups stay apart: 4, 4, 4, 4, 4, 2
    one = units.split(tasks, 1)
    assert [(u.name, u.rows) for u in one] == [(f"shard-00000.rg{g}-{g}", 4) for g in range(5)] + [
        ("shard-00000.rg5-5", 2)
    ]
    groups = sorted(g for u in one for g in u.row_groups or ())
    assert groups == list(range(6))
    # few images on many workers: whole files are never cut into more than their row groups
    assert len(units.split(_pending(grouped["small"]), 8)) == 6


def test_units_shrink_to_single_images_as_the_work_left_does() -> None:
    """Each unit is cut by the rule from the images not yet in a unit: big first, single images
    at the end, so a worker that runs out waits at most about one image for the others."""
    photos = WorkUnit("shard-00000", "x", 41, row_groups=tuple(range(41)), group_rows=(1,) * 41)
    two = units.split([photos], 2)
    # ceil(41 / 8) = 6, ceil(35 / 8) = 5, ceil(30 / 8) = 4, ...
    assert [u.rows for u in two] == [6, 5, 4, 4, 3, 3, 2, 2, 2, 2] + [1] * 8
    assert sorted(g for u in two for g in u.row_groups or ()) == list(range(41))
    # a folder as `matte` lists it (shards of 4 photos): units within shards, shrinking too
    listed = [
        WorkUnit(
            f"shard-{k:05}", f"shard-{k:05}", n, row_groups=tuple(range(n)), group_rows=(1,) * n
        )
        for k, n in enumerate([4] * 11 + [1])
    ]
    cut = units.split(listed, 2)
    singles = [f"shard-0000{k}.rg{g}-{g}" for k, g in ((6, 3), (7, 3), (9, 2), (9, 3))]
    assert [(u.name, u.rows) for u in cut] == [
        *((f"shard-{k:05}", 4) for k in range(6)),  # ceil(45 / 8) = 6 > 4: whole shards
        ("shard-00006.rg0-2", 3),  # 21 left: ceil(21 / 8) = 3
        ("shard-00007.rg0-2", 3),
        ("shard-00008.rg0-1", 2),  # 13 left: 2
        ("shard-00008.rg2-3", 2),
        ("shard-00009.rg0-1", 2),
        *((name, 1) for name in singles),  # 8 left: 1
        *((f"shard-00010.rg{g}-{g}", 1) for g in range(4)),
        ("shard-00011", 1),
    ]
    for u in cut:  # within its shard, each photo once
        assert units.parse_unit(u.name)[0] == u.path
    assert sorted((units.parse_unit(u.name)[0], g) for u in cut for g in u.row_groups or ()) == [
        (f"shard-{k:05}", g) for k, n in enumerate([4] * 11 + [1]) for g in range(n)
    ]


def test_names_and_coverage() -> None:
    assert units.unit_name("shard-00003", (0, 1, 2), 3) == "shard-00003"
    assert units.unit_name("shard-00003", (1, 2), 3) == "shard-00003.rg1-2"
    assert units.parse_unit("shard-00003.rg1-2") == ("shard-00003", range(1, 3))
    assert units.parse_unit("shard-00003") == ("shard-00003", None)
    shards = {"shard-00000": [4, 4, 2], "shard-00001": [4, 4]}
    cover = units.covered(["shard-00000", "shard-00001.rg1-1", "other.rg0-0"], shards)
    assert cover == {"shard-00000": {0, 1, 2}, "shard-00001": {1}}
    assert units.is_done("shard-00000", shards["shard-00000"], cover)
    assert not units.is_done("shard-00001", shards["shard-00001"], cover)


def test_split_run_equals_whole_shard_run_and_markers_are_per_unit(
    grouped: dict[str, Path], reference: Path, tiny_model: Path, tmp_path: Path
) -> None:
    outcome = run_job(_job(grouped["big"], tmp_path / "run", tiny_model, workers=1))
    assert outcome.complete
    _same(reference, tmp_path / "run")
    markers = sorted(p.stem for p in (tmp_path / "run" / "state" / "units").glob("*.json"))
    # one worker: units of up to ceil(22 / 4) = 6 images, shrinking; one per row group here
    assert markers == [f"shard-00000.rg{g}-{g}" for g in range(6)]
    assert outcome.summary.units.total == 6 and outcome.summary.units.processed == 6


def test_a_run_made_before_units_resumes(
    grouped: dict[str, Path], reference: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """Markers of whole shards (what every run wrote before units) cover all their row groups;
    a resume runs only the row groups no marker covers, and its results equal a clean run's."""
    run = tmp_path / "run"
    run_job(_job(grouped["two"], run, tiny_model))
    state = RunDir(run)
    results = {r.unit: r for r in state.load_results()}
    # shard-00000 as the old code wrote it: one marker for the whole shard
    parts = sorted(n for n in results if n.startswith("shard-00000"))
    merged: UnitResult = results[parts[0]]
    for name in parts[1:]:
        merged = merged.with_retry(results[name])
    for name in parts:
        state.marker(name).unlink()
    state.write_result(replace(merged, unit="shard-00000"))
    # shard-00001 half done: only its first unit's marker is left
    later = sorted(n for n in results if n.startswith("shard-00001"))
    for name in later[1:]:
        state.marker(name).unlink()
    for name in later[1:]:
        for row in results[name].rows:
            state.alpha_path(row.image_id).unlink()
    state.metrics.unlink()
    again = run_job(_job(grouped["two"], run, tiny_model))
    assert again.complete
    assert again.summary.units.skipped_done == 2
    # what was left (row groups 1-2 of shard-00001, 6 images) is cut for the work left
    assert sorted(p.stem for p in state.unit_state.glob("*.json")) == [
        "shard-00000",
        "shard-00001.rg0-0",
        "shard-00001.rg1-1",
        "shard-00001.rg2-2",
    ]
    assert again.summary.units.processed == 2
    assert sorted(r.image_id for r in state.read_rows()) == sorted(
        r.image_id for r in RunDir(reference).read_rows()
    )  # every image exactly once
    _same(reference, run)


def test_a_resume_with_other_units_redoes_only_what_no_marker_covers(
    grouped: dict[str, Path], tiny_model: Path, tmp_path: Path
) -> None:
    tasks = _pending(grouped["big"], {"shard-00000.rg1-2", "shard-00000.rg5-5"})
    assert [(t.name, t.row_groups) for t in tasks] == [
        ("shard-00000.rg0-0", (0,)),
        ("shard-00000.rg3-4", (3, 4)),
    ]
    assert _pending(grouped["big"], {"shard-00000"}) == []


def test_a_unit_reads_only_its_row_groups_and_a_file_is_hashed_once(
    grouped: dict[str, Path], tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = Dataset.open(grouped["big"])
    tasks = units.split(_pending(grouped["big"]), 2)
    hashed = calls_to(monkeypatch, processor_module, "sha256_file")
    spec = WorkerSpec(EngineSpec(str(tiny_model)), "seed-area", str(tmp_path / "run"))
    proc = UnitProcessor(spec)
    try:
        results = [proc.process(t) for t in tasks[:3]]
    finally:
        proc.close()
    assert len(hashed) == 1  # three units of one file: its SHA-256 checked once
    for task, result in zip(tasks[:3], results, strict=True):
        wanted = ds.image_ids(ds.shards[0], list(task.row_groups or ()))
        assert [r.image_id for r in result.rows] == sorted(wanted)
        assert len(wanted) == task.rows


def _old_layout(run: Path) -> None:
    """Rewrite a finished run into the layout modnet-batch wrote before work units were named
    so: markers in state/shards/ naming their `shard`, `shards` in summary.json, and a
    throughput of one rate per device over its busy seconds (`seconds`, `images_per_s`)."""
    (run / "state" / "units").rename(run / "state" / "shards")
    for marker in (run / "state" / "shards").glob("*.json"):
        data = json.loads(marker.read_text())
        data["shard"] = data.pop("unit")
        marker.write_text(json.dumps(data))
    summary = json.loads((run / "summary.json").read_text())
    summary["shards"] = summary.pop("units")
    new = summary["throughput"]

    def entries(table: dict[str, Any]) -> dict[str, Any]:
        return {
            k: {"images": v["images"], "seconds": v["steady_s"], "images_per_s": 1.0}
            for k, v in table.items()
        }

    summary["throughput"] = {
        "attempts": 1,
        "images": new["images"],
        "images_per_s": new["overall_images_per_s"],
        "wall_s": new["wall_s"],
        "per_device": entries(new["per_device"]),
        "per_node": entries(new["per_node"]),
        "stages_s": new["stages_s"],
    }
    (run / "summary.json").write_text(json.dumps(summary))


def test_a_run_directory_of_the_old_layout_reports_and_resumes(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from modnet_batch.cli import app

    run = tmp_path / "run"
    run_job(_job(synth_dataset, run, tiny_model))
    _old_layout(run)
    report = CliRunner().invoke(app, ["report", str(run)])
    assert report.exit_code == 0, report.output
    assert "3 work unit(s) processed" in report.output and "steady img/s" in report.output
    old = run / "state" / "shards"
    (old / "shard-00001.json").unlink()  # one unit left to do
    again = run_job(_job(synth_dataset, run, tiny_model))
    assert again.complete and again.summary.images.total == 12
    assert (again.summary.units.processed, again.summary.units.skipped_done) == (1, 2)
    assert sorted(p.name for p in old.glob("*.json")) == [f"shard-0000{i}.json" for i in range(3)]
    assert not (run / "state" / "units").exists()  # the run keeps its layout
    assert again.summary.throughput.images == 16  # 12 in the first attempt, 4 in this one
    assert again.summary.throughput.attempts == 2
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["units"]["processed"] == 1 and "shards" not in on_disk
