"""The job driver with the inline backend: run dir contract, error rows, resume, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from modnet_batch.data.ingest import ingest
from modnet_batch.data.synthetic import make_synthetic
from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution.driver import run_job
from modnet_batch.options import load_job


def _job(dataset: Path, out: Path, model: Path, **kw: object) -> object:
    return load_job(
        None,
        {"dataset": str(dataset), "out": str(out), "model": str(model), "backend": "inline", **kw},
    )


def test_run_dir_contract(synth_dataset: Path, tiny_model: Path, tmp_path: Path) -> None:
    outcome = run_job(_job(synth_dataset, tmp_path / "run", tiny_model))  # type: ignore[arg-type]
    run = tmp_path / "run"
    assert outcome.complete
    assert (run / "job.yaml").exists()
    npz = sorted((run / "alpha").glob("*.npz"))
    assert len(npz) == 12 and not list((run / "alpha").glob(".*"))  # no temp files left
    with np.load(npz[0], allow_pickle=False) as data:
        assert data["alpha"].dtype == np.uint8 and data["alpha"].shape == (480, 288)
    table = pq.read_table(run / "metrics.parquet").to_pylist()
    assert [r["image_id"] for r in table] == sorted(r["image_id"] for r in table)
    assert all(r["error"] is None and r["mse"] is not None for r in table)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["images"] == {
        "total": 12,
        "scored": 12,
        "failed": 0,
        "unscored": 0,
        "transient": 0,
        "retried": 0,
    }
    mse = [r["mse"] for r in table]
    assert summary["metrics"]["mse"] == pytest.approx(sum(mse) / len(mse), rel=1e-12)
    assert summary["units"]["processed"] == 3 and summary["complete"]


def test_bad_image_becomes_error_row_and_unmatted_image_is_unscored(
    tiny_model: Path, tmp_path: Path
) -> None:
    src = make_synthetic(tmp_path / "src", n=3, height=96, width=64, seed=3)
    ds = tmp_path / "ds"
    ingest(src, ds, shard_size=8)
    # corrupt one image inside the shard (keeping the Parquet valid) and drop one matte
    table: list[dict[str, object]] = []

    def edit(rows: list[dict[str, object]]) -> None:
        rows[0]["image"] = b"\xff\xd8 broken jpeg"
        rows[1]["matte"] = None
        table.extend(rows)

    _rewrite_shard(ds, edit)
    outcome = run_job(_job(ds, tmp_path / "run", tiny_model))  # type: ignore[arg-type]
    rows = {
        r["image_id"]: r for r in pq.read_table(tmp_path / "run" / "metrics.parquet").to_pylist()
    }
    assert "DecodeError" in rows[table[0]["image_id"]]["error"]
    assert rows[table[1]["image_id"]]["error"] is None and rows[table[1]["image_id"]]["mse"] is None
    assert (tmp_path / "run" / "alpha" / f"{table[1]['image_id']}.npz").exists()
    assert outcome.summary.to_dict()["images"] == {
        "total": 3,
        "scored": 1,
        "failed": 1,
        "unscored": 1,
        "transient": 0,  # undecodable: a retry cannot help
        "retried": 0,
    }
    assert rows[table[0]["image_id"]]["transient"] is False
    assert outcome.exit_status == 4


def test_rerun_resumes_without_redoing_shards(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    job = _job(synth_dataset, tmp_path / "run", tiny_model)
    first = run_job(job)  # type: ignore[arg-type]
    marker = tmp_path / "run" / "state" / "units" / "shard-00001.json"
    marker.unlink()  # as if the driver died before that shard finished
    second = run_job(job)  # type: ignore[arg-type]
    assert second.summary.units.processed == 1
    assert second.summary.units.skipped_done == 2
    assert second.summary.metrics == first.summary.metrics
    assert second.summary.accumulator == first.summary.accumulator


def test_refuses_to_reuse_a_run_dir_of_another_job(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    run_job(_job(synth_dataset, tmp_path / "run", tiny_model))  # type: ignore[arg-type]
    with pytest.raises(ModnetBatchError, match=r"different job.*protocol"):
        run_job(_job(synth_dataset, tmp_path / "run", tiny_model, protocol="paper"))  # type: ignore[arg-type]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ModnetBatchError, match="not a modnet-batch run"):
        run_job(_job(synth_dataset, tmp_path / "other", tiny_model))  # type: ignore[arg-type]
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_missing_dataset_and_bad_model_are_clear(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ModnetBatchError, match="ingest"):
        run_job(_job(tmp_path / "nope", tmp_path / "run", tiny_model))  # type: ignore[arg-type]
    shutil.rmtree(tmp_path / "run", ignore_errors=True)


@pytest.mark.parametrize(
    ("protocol", "precision", "asked", "factor"),
    [
        ("seed-area", "fp32", "auto", 0),  # 0: reduced per image (DecodeMode.AUTO)
        ("seed-area", "fp16", "auto", 0),
        ("seed-area", "int8", "auto", 1),  # int8 moves ~1e-3 on reduced inputs: exact
        ("seed-linear", "fp32", "auto", 1),  # INTER_LINEAR samples pixels: exact
        ("paper", "fp32", "auto", 1),  # full-resolution scoring: exact
        ("seed-area", "fp32", "off", 1),
        ("seed-area", "int8", "4", 4),  # an explicit factor is obeyed
        ("seed-linear", "fp32", "2", 2),
    ],
)
def test_decode_mode_resolution(protocol: str, precision: str, asked: str, factor: int) -> None:
    from modnet_batch.pipeline import DecodeMode
    from modnet_batch.protocol import get_protocol

    job = load_job(None, {"dataset": "d", "out": "r", "protocol": protocol, "decode_reduce": asked})
    assert job.decode_reduce == asked
    got = job.decode_reduce.resolve(get_protocol(protocol), precision)
    assert (0 if got is DecodeMode.AUTO else got.factor) == factor
    assert got.describe().startswith(
        "auto" if got is DecodeMode.AUTO else ("exact" if got is DecodeMode.EXACT else "JPEG")
    )


def test_defaults_batch_one_on_cpu_measured_on_accelerators() -> None:
    from modnet_batch.execution.plan import batch_size

    assert batch_size(load_job(None, {"dataset": "d", "out": "r"})) == 1
    # 0: each accelerator's actor measures its own (tests/test_batching.py)
    assert batch_size(load_job(None, {"dataset": "d", "out": "r", "device": "gpu"})) == 0
    assert batch_size(load_job(None, {"dataset": "d", "out": "r", "batch_size": 3})) == 3
    assert load_job(None, {"dataset": "d", "out": "r"}).decode_reduce is None  # per job: below


def _rewrite_shard(ds: Path, edit: object) -> None:
    """Apply `edit(rows)` to the dataset's first shard and re-record its SHA-256."""
    import pyarrow as pa

    from modnet_batch.digest import sha256_file

    shard = sorted((ds / "shards").glob("*.parquet"))[0]
    rows = pq.read_table(shard).to_pylist()
    edit(rows)  # type: ignore[operator]
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(shard)), shard)
    meta = json.loads((ds / "dataset.json").read_text())
    for s in meta["shards"]:
        s["sha256"] = sha256_file(ds / s["path"])
    (ds / "dataset.json").write_text(json.dumps(meta))


def test_ids_edited_into_a_shard_never_write_outside_the_run_dir(
    tiny_model: Path, tmp_path: Path
) -> None:
    """Ids are checked at ingest, but a shard edited by hand must not steer writes (issue 11.3)."""
    src = make_synthetic(tmp_path / "src", n=3, height=96, width=64, seed=4)
    ds = tmp_path / "ds"
    ingest(src, ds, shard_size=8)
    outside = tmp_path / "escaped"

    def edit(rows: list[dict[str, object]]) -> None:
        rows[0]["image_id"] = f"../../{outside.name}"
        rows[1]["image_id"] = str(outside / "abs")

    _rewrite_shard(ds, edit)
    run = tmp_path / "deep" / "run"
    outcome = run_job(_job(ds, run, tiny_model))  # type: ignore[arg-type]
    assert not list(tmp_path.glob("escaped*")) and not outside.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "ds", "src"]
    rows = {r["image_id"]: r for r in pq.read_table(run / "metrics.parquet").to_pylist()}
    for bad in (f"../../{outside.name}", str(outside / "abs")):
        assert "not safe as a file name" in rows[bad]["error"]
    assert outcome.summary.images.scored == 1 and len(list((run / "alpha").iterdir())) == 1


def test_shard_paths_outside_the_dataset_are_refused(synth_dataset: Path, tmp_path: Path) -> None:
    from modnet_batch.data.dataset import Dataset

    ds = tmp_path / "ds"
    shutil.copytree(synth_dataset, ds)
    shutil.copy(next((ds / "shards").glob("*.parquet")), tmp_path / "outside.parquet")
    meta = json.loads((ds / "dataset.json").read_text())
    meta["shards"][0]["path"] = "../outside.parquet"
    (ds / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ModnetBatchError, match=r"outside the dataset directory"):
        Dataset.open(ds)
    meta["shards"][0]["path"], meta["shards"][0]["name"] = "shards/shard-00000.parquet", "../x"
    (ds / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ModnetBatchError, match=r"not a safe name"):
        Dataset.open(ds)


def test_results_are_readable_by_other_users(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """Atomic writes honour the umask (issue 11.8): 0644 under umask 022, not mkstemp's 0600."""
    from modnet_batch.storage import FILE_MODE

    run = tmp_path / "run"
    run_job(_job(synth_dataset, run, tiny_model))  # type: ignore[arg-type]
    files = [p for p in run.rglob("*") if p.is_file()]
    assert files and {p.stat().st_mode & 0o777 for p in files} == {FILE_MODE}
    assert FILE_MODE & 0o044  # readable by group and others under the usual umask


def test_a_no_op_resume_keeps_the_measured_throughput(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """Rerunning a finished job used to overwrite the throughput with zeros (issue 11.9)."""
    job = _job(synth_dataset, tmp_path / "run", tiny_model)
    first = run_job(job).summary.throughput  # type: ignore[arg-type]
    again = run_job(job).summary.throughput  # type: ignore[arg-type]
    assert first.images == 12 and again.images == 12
    assert again.per_device == first.per_device
    assert again.overall_images_per_s == pytest.approx(first.overall_images_per_s, rel=0.05)
    assert (first.attempts, again.attempts) == (1, 2)
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())["throughput"]
    assert on_disk["images"] == 12


def test_a_damaged_shard_is_a_named_failed_shard_and_the_job_goes_on(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """Issue 11.5: a truncated shard used to end the job in a pyarrow traceback, and a shard
    whose bytes changed after ingest went unnoticed."""
    from typer.testing import CliRunner

    from modnet_batch.cli import app

    ds = tmp_path / "ds"
    shutil.copytree(synth_dataset, ds)
    first, second = sorted((ds / "shards").glob("*.parquet"))[:2]
    first.write_bytes(first.read_bytes()[:-200])  # truncated: no Parquet footer
    data = bytearray(second.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte changed after ingest
    second.write_bytes(bytes(data))
    outcome = run_job(_job(ds, tmp_path / "run", tiny_model))  # type: ignore[arg-type]
    assert not outcome.complete
    failed = outcome.summary.units.failed
    assert failed == [first.stem, second.stem]
    rows = pq.read_table(tmp_path / "run" / "metrics.parquet").to_pylist()
    errors = [r["error"] for r in rows if r["error"]]
    assert any("changed after ingest" in e for e in errors)
    assert any(f"shard {first.stem}" in e for e in errors)
    assert outcome.summary.images.scored == 4  # the intact third shard
    result = CliRunner().invoke(app, ["verify", str(ds)])
    assert result.exit_code == 1 and "changed after ingest" in result.output
    result = CliRunner().invoke(app, ["verify", str(synth_dataset)])
    assert result.exit_code == 0 and "all intact" in result.output


@pytest.mark.parametrize(
    ("requested", "scored", "want"),
    [
        (None, True, "off"),  # issue 11.1: a scored job decodes exactly unless asked
        (None, False, "auto"),  # matting only: the fast decode
        ("auto", True, "auto"),  # asked: obeyed, and reported as approximate
        ("4", True, "4"),
    ],
)
def test_the_default_decode_is_exact_for_scored_jobs(
    requested: str | None, scored: bool, want: str
) -> None:
    from modnet_batch.pipeline import DecodeMode
    from modnet_batch.protocol import get_protocol

    asked = None if requested is None else DecodeMode.parse(requested)
    got = DecodeMode.for_job(asked, get_protocol("seed-area"), "fp32", scored)
    assert got.value == want
    assert ("approximate" in got.describe(scored=scored)) == (scored and want != "off")


def test_a_scored_job_says_when_its_metrics_are_approximate(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    plain = run_job(_job(synth_dataset, tmp_path / "a", tiny_model)).summary  # type: ignore[arg-type]
    assert plain.job.decode == "exact" and not plain.warnings
    fast = run_job(_job(synth_dataset, tmp_path / "b", tiny_model, decode_reduce="auto")).summary  # type: ignore[arg-type]
    assert "metrics approximate" in fast.job.decode
    assert any("approximate" in w and "--decode-reduce off" in w for w in fast.warnings)


def test_a_reduced_decode_measures_how_far_it_moved_the_metrics(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """The check's exact side equals an exact job's rows on the same images, its job side the
    reduced job's rows: the deltas are the real difference on those images."""
    from modnet_batch.metrics import ImageRow, MetricAccumulator

    exact = run_job(_job(synth_dataset, tmp_path / "exact", tiny_model))  # type: ignore[arg-type]
    fast = run_job(
        _job(synth_dataset, tmp_path / "fast", tiny_model, decode_reduce="2", decode_check=4)  # type: ignore[arg-type]
    )
    check = fast.summary.decode_check
    assert check is not None and len(check["images"]) == 4
    # from shards spread over the dataset (3 shards of 4 images: 2 + 1 + 1)
    assert check["images"] == ["synth-000", "synth-002", "synth-004", "synth-008"]

    def over(run: Path) -> dict[str, object]:
        rows = [ImageRow.from_record(r) for r in pq.read_table(run / "metrics.parquet").to_pylist()]
        acc = MetricAccumulator()
        for row in rows:
            if row.image_id in check["images"]:
                assert row.metrics is not None
                acc.update(row.metrics)
        return acc.summary()

    want_exact, want_job = over(tmp_path / "exact"), over(tmp_path / "fast")
    for k, v in check["exact"].items():
        assert v == pytest.approx(want_exact[k], rel=1e-12, abs=1e-15), k
        assert check["job"][k] == pytest.approx(want_job[k], rel=1e-12, abs=1e-15), k
    assert check["delta"]["mse"] == pytest.approx(want_job["mse"] - want_exact["mse"])
    assert check["delta"]["mse"] != 0  # a 1/2 decode of these images does move the metrics
    assert (
        "on 4 of its images re-run with an exact decode they moved by mse"
        in fast.summary.job.decode
    )
    assert exact.summary.decode_check is None


@pytest.mark.parametrize(
    ("engine", "model_precision", "asked", "expected"),
    [
        ("onnxruntime", "fp32", None, "fp32"),
        ("onnxruntime", "fp16", None, "fp16"),
        ("onnxruntime", "fp16", "fp16", "fp16"),
        ("onnxruntime", "fp32", "fp16", "use --model fp16"),
        ("torch", "fp32", "bf16", "bf16"),
        ("torch", "fp32", None, "fp32"),
        ("torch", "int8", "fp16", "casts an fp32 model; this model is int8"),
        ("torch", "fp32", "int4", "use one of fp32, fp16, bf16"),
    ],
)
def test_compute_precision(
    engine: str, model_precision: str, asked: str | None, expected: str
) -> None:
    from modnet_batch.errors import ModnetBatchError
    from modnet_batch.execution.plan import compute_precision
    from modnet_batch.options import JobConfig

    job = JobConfig(dataset="d", out="r", engine=engine, precision=asked)
    if expected in {"fp32", "fp16", "bf16"}:
        assert compute_precision(job, model_precision) == expected
    else:
        with pytest.raises(ModnetBatchError, match=expected):
            compute_precision(job, model_precision)


def test_a_model_calibrated_on_evaluated_images_is_warned_about(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """The shards' ids are read only for a model with a calibration set (a resume of a large
    run no longer reads every shard for nothing); the warning still names the overlap."""
    from modnet_batch.execution.plan import plan_job

    model = tmp_path / "calibrated.onnx"
    shutil.copy(tiny_model, model)
    (tmp_path / "calibrated.build.json").write_text(
        json.dumps({"calibration": {"ids": ["synth-003", "elsewhere"]}})
    )
    plan = plan_job(_job(synth_dataset, tmp_path / "run", model))  # type: ignore[arg-type]
    assert any("1 of the 12 images" in w and "synth-003" in w for w in plan.warnings)
    plain = plan_job(_job(synth_dataset, tmp_path / "run2", tiny_model))  # type: ignore[arg-type]
    assert not [w for w in plain.warnings if "calibrate" in w]
