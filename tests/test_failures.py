"""Failed images count: they are named in the table and the summary, the exit status says so, and
a resume retries the ones that failed for a reason that may pass (I/O) but not the others."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import onnx
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from modnet_batch.cli import app
from modnet_batch.execution.driver import EXIT_IMAGES_FAILED, EXIT_OK, run_job
from modnet_batch.options import load_job
from modnet_batch.results import RunDir


def _job(dataset: Path, out: Path, model: Path, **kw: object) -> Any:
    return load_job(
        None,
        {"dataset": str(dataset), "out": str(out), "model": str(model), "backend": "inline", **kw},
    )


def _rows(run: Path) -> dict[str, dict[str, Any]]:
    return {r["image_id"]: r for r in pq.read_table(run / "metrics.parquet").to_pylist()}


@pytest.fixture(scope="module")
def clean_run(synth_dataset: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("clean") / "run"
    run_job(_job(synth_dataset, out, tiny_model))
    return out


def _failing_writes(monkeypatch: pytest.MonkeyPatch, ids: set[str]) -> None:
    """The disk fails (EIO) when the alpha of one of `ids` is written, as a flaky mount does."""
    original = RunDir.write_alpha

    def write_alpha(self: RunDir, image_id: str, alpha: Any) -> None:
        if image_id in ids:
            raise OSError(errno.EIO, "Input/output error", str(self.alpha_path(image_id)))
        original(self, image_id, alpha)

    monkeypatch.setattr(RunDir, "write_alpha", write_alpha)


def test_transient_failures_are_counted_and_a_resume_retries_them(
    synth_dataset: Path,
    tiny_model: Path,
    tmp_path: Path,
    clean_run: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = sorted(_rows(clean_run))
    lost = {ids[1], ids[6]}  # in two different shards of 4
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _failing_writes(m, lost)
        first = run_job(_job(synth_dataset, out, tiny_model))
    images = first.summary.images
    assert (images.failed, images.transient, images.scored) == (2, 2, 10)
    assert first.complete and first.exit_status == EXIT_IMAGES_FAILED
    rows = _rows(out)
    for image_id in lost:
        assert "Input/output error" in rows[image_id]["error"] and rows[image_id]["transient"]
        assert not (out / "alpha" / f"{image_id}.npz").exists()

    again = run_job(_job(synth_dataset, out, tiny_model))  # the disk is back
    assert again.exit_status == EXIT_OK
    assert again.summary.images.retried == 2 and again.summary.images.failed == 0
    # every image exactly once, and the result equals a clean run's
    assert pq.read_table(out / "metrics.parquet").num_rows == 12
    assert _rows(out) == _rows(clean_run)
    clean = RunDir(clean_run).read_summary()
    assert again.summary.metrics == clean.metrics
    assert again.summary.accumulator == clean.accumulator
    assert again.summary.images.scored == 12
    assert again.summary.throughput.images == 14  # 12 in the first attempt, 2 retried
    assert again.summary.units.skipped_done == 1  # the shard without a failure was not redone


def test_deterministic_failures_are_kept_and_not_retried(tiny_model: Path, tmp_path: Path) -> None:
    """A model whose output is half the input's size fails every image the same way: the job
    says so (exit 4, 0 scored) and a resume does not try again."""
    from modnet_batch.data.ingest import ingest
    from modnet_batch.data.synthetic import make_synthetic

    model = onnx.load(str(tiny_model))
    conv2 = next(n for n in model.graph.node if n.name == "conv2")
    conv2.attribute.append(onnx.helper.make_attribute("strides", [2, 2]))
    half = tmp_path / "half.onnx"
    onnx.save(model, str(half))
    src = make_synthetic(tmp_path / "src", n=5, height=96, width=64, seed=2)
    ingest(src, tmp_path / "ds", shard_size=8)

    runner = CliRunner()
    args = ["submit", "--dataset", str(tmp_path / "ds"), "--out", str(tmp_path / "run")]
    args += ["--model", str(half), "--backend", "inline"]
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_IMAGES_FAILED, result.output
    assert "metrics over 0 of 5 images, 5 failed" in result.output
    assert "5 of 5 images failed" in result.output and "none would pass on a retry" in result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["images"]["failed"] == 5 and summary["images"]["transient"] == 0
    for row in _rows(tmp_path / "run").values():
        assert not row["transient"]
        assert "the model's output is 144x240 for a 288x480 input" in row["error"]

    again = runner.invoke(app, args)  # a resume: nothing transient, so nothing is redone
    assert again.exit_code == EXIT_IMAGES_FAILED
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["images"]["retried"] == 0 and summary["units"]["processed"] == 0


def test_the_cli_names_transient_failures_and_how_to_retry(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first_id = sorted(_rows_of_dataset(synth_dataset))[0]
    _failing_writes(monkeypatch, {first_id})
    args = ["submit", "--dataset", str(synth_dataset), "--out", str(tmp_path / "run")]
    args += ["--model", str(tiny_model), "--backend", "inline"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == EXIT_IMAGES_FAILED, result.output
    assert "metrics over 11 of 12 images, 1 failed" in result.output
    assert "1 may pass on a retry" in result.output
    assert f"{first_id}: OSError:" in result.output


def _rows_of_dataset(dataset: Path) -> list[str]:
    from modnet_batch.data.dataset import Dataset

    ds = Dataset.open(dataset)
    return [i for s in ds.shards for i in ds.image_ids(s)]


def test_an_out_that_is_a_file_is_one_line(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    args = ["submit", "--dataset", str(synth_dataset), "--out", str(target)]
    result = CliRunner().invoke(app, [*args, "--model", str(tiny_model), "--backend", "inline"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: --out {target} is a file, not a directory; pass a new directory for the run"
    ]
    assert target.read_text() == "mine"


def test_a_read_only_out_is_one_line(synth_dataset: Path, tiny_model: Path, tmp_path: Path) -> None:
    import os
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a read-only file system is made with a tmpfs mount, which needs root")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here (a container without CAP_SYS_ADMIN)")
    try:
        args = ["submit", "--dataset", str(synth_dataset), "--out", str(mnt / "run")]
        args += ["--model", str(tiny_model), "--backend", "inline"]
        result = CliRunner().invoke(app, args)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot write {mnt / 'run'}"), lines
    assert "its file system is read-only: pass a writable --out" in lines[0]


def test_only_storage_errors_on_a_named_file_read_as_storage_errors() -> None:
    from modnet_batch.errors import StorageError
    from modnet_batch.execution.driver import _os_error

    full = _os_error(OSError(errno.ENOSPC, "No space left on device", "/runs/a/summary.json"))
    assert isinstance(full, StorageError)
    assert str(full) == (
        "cannot write /runs/a/summary.json: no space left on its device: free space (or pass "
        "another --out); then run the same command again: finished work is kept"
    )
    other = _os_error(ConnectionError("the GCS went away"))
    assert not isinstance(other, StorageError)
    assert str(other) == "ConnectionError: the GCS went away"


def test_a_failing_decode_check_is_a_warning_and_the_results_stand(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modnet_batch.execution.decode_check as decode_check

    def broken(*args: object, **kw: object) -> None:
        raise MemoryError("no room for the check")

    monkeypatch.setattr(decode_check, "measure", broken)
    outcome = run_job(_job(synth_dataset, tmp_path / "run", tiny_model, decode_reduce="2"))
    assert outcome.exit_status == EXIT_OK and outcome.summary.images.scored == 12
    assert outcome.summary.decode_check is None
    assert any("the decode check failed (MemoryError" in w for w in outcome.summary.warnings)
    assert (tmp_path / "run" / "summary.json").exists()
