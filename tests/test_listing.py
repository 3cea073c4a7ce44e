"""`modnet-batch runs DIR`: each run's state (complete, failed, partial) and headline metrics;
and `model list` / `model info`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import onnx
import pytest

from modnet_batch.results.listing import find_runs, list_runs
from tests.helpers import run_cli


@pytest.fixture(scope="module")
def runs_dir(
    synth_dataset: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """complete/, failed/ (every image fails), partial/ (stopped before its summary) and a
    matte OUT folder, under one folder, with an unrelated folder beside them."""
    from modnet_batch.execution.driver import run_job
    from modnet_batch.options import load_job

    top = tmp_path_factory.mktemp("runs")

    def job(out: Path, model: Path, **kw: object) -> None:
        overrides = {"dataset": str(synth_dataset), "out": str(out), "model": str(model)}
        run_job(load_job(None, {**overrides, "backend": "inline", **kw}))

    job(top / "complete", tiny_model)
    model = onnx.load(str(tiny_model))
    conv2 = next(n for n in model.graph.node if n.name == "conv2")
    conv2.attribute.append(onnx.helper.make_attribute("strides", [2, 2]))
    half = top / "half.onnx"
    onnx.save(model, str(half))
    job(top / "nested" / "failed", half)
    job(top / "partial", tiny_model)
    (top / "partial" / "summary.json").unlink()
    src = synth_dataset.parent / "src" / "image"
    res = run_cli("matte", src, top / "matted", "--model", tiny_model, "--backend", "inline")
    assert res.returncode == 0, res.stderr
    (top / "not-a-run").mkdir()
    (top / "not-a-run" / "job.yaml").write_text("a file that looks like a job\n")
    return top


def test_find_runs_finds_run_dirs_and_matte_folders_only(runs_dir: Path) -> None:
    found = [p.relative_to(runs_dir).as_posix() for p in find_runs(runs_dir)]
    assert found == ["complete", "matted", "nested/failed", "partial"]


def test_each_state_and_its_figures(runs_dir: Path) -> None:
    states = {p.path.name: p for p in list_runs(runs_dir)}
    complete = states["complete"]
    assert complete.state == "complete" and complete.detail == ""
    summary = json.loads((runs_dir / "complete" / "summary.json").read_text())
    assert complete.metrics["mse"] == summary["metrics"]["mse"]
    assert (complete.scored, complete.images, complete.failed) == (12, 12, 0)
    failed = states["failed"]
    assert failed.state == "failed" and "12 image(s) failed" in failed.detail
    partial = states["partial"]
    assert (
        partial.state == "partial" and "3 work unit(s) finished, no summary yet" in partial.detail
    )
    matted = states["matted"]
    assert matted.state == "complete" and matted.scored == 0 and matted.images == 12


def test_a_resume_that_stopped_is_partial(runs_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs_dir / "complete", run)
    summary_time = (run / "summary.json").stat().st_mtime
    marker = next((run / "state" / "units").glob("*.json"))
    os.utime(marker, (summary_time + 5, summary_time + 5))
    (state,) = list_runs(tmp_path)
    assert state.state == "partial" and "a resume stopped" in state.detail


def test_runs_command_prints_the_table(runs_dir: Path) -> None:
    res = run_cli("runs", runs_dir)
    assert res.returncode == 0, res.stderr
    lines = {line.split("│")[1].strip(): line for line in res.stdout.splitlines() if "│" in line}
    assert "complete" in lines[str(runs_dir / "complete")]
    assert "12/12 scored" in lines[str(runs_dir / "complete")]
    assert "failed" in lines[str(runs_dir / "nested" / "failed")]
    assert "12 unscored" in lines[str(runs_dir / "matted")]
    assert "partial" in lines[str(runs_dir / "partial")]
    assert "no summary yet" in res.stderr
    empty = run_cli("runs", runs_dir / "not-a-run")
    assert empty.returncode == 0 and "no runs under" in empty.stderr
    missing = run_cli("runs", runs_dir / "missing")
    assert missing.returncode == 1 and "is not a folder" in missing.stderr


def test_model_list_and_info(tiny_model: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    variants = cache / "variants"
    variants.mkdir(parents=True)
    shutil.copy(tiny_model, variants / "fp32.onnx")

    def model(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "MODNET_BATCH_CACHE": str(cache)}
        return run_cli("model", *args, env=env, timeout=120)

    res = model("list")
    assert res.returncode == 0, res.stderr
    rows = {line.split("│")[1].strip(): line for line in res.stdout.splitlines() if "│" in line}
    # an empty cache: the reference is not fetched yet, and the row says how to get it
    assert "│ no " in rows["reference"] and "modnet-batch model fetch" in rows["reference"]
    assert "│ yes " in rows["fp32"] and str(variants / "fp32.onnx") in rows["fp32"]
    assert "│ no " in rows["int8"] and "modnet-batch build int8" in rows["int8"]
    res = model("info", "fp32")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["precision"] == "fp32" and info["path"] == str(variants / "fp32.onnx")
    res = model("info", "int8")
    assert res.returncode == 1 and "run `modnet-batch build int8` first" in res.stderr
