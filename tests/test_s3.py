"""The S3 round trip against a real S3 API on 127.0.0.1 (moto's server, tests/s3.py): ingest to
S3, submit from S3 to S3 with the model in S3 too (Ray workers open every URI themselves),
results equal to a local run's, a resume that redoes only the units whose markers are gone,
`report` and `runs` reading the run from S3; credentials (in the URI, or in the environment)
appear in no file written and in no output.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from modnet_batch.execution.driver import run_job
from modnet_batch.options import load_job
from modnet_batch.storage import UriPath, location
from tests.helpers import run_cli
from tests.s3 import ACCESS_KEY, SECRET_KEY, S3Server

pytestmark = pytest.mark.ray


def _objects(root: UriPath) -> dict[str, bytes]:
    """Every object below `root`, by its path there."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p, _ in root.walk_files()}


def _no_secrets(where: str, data: str | bytes) -> None:
    blob = data.encode() if isinstance(data, str) else data
    for secret in (SECRET_KEY, ACCESS_KEY):
        assert secret.encode() not in blob, f"{secret[:6]}... appears in {where}"


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict[str, Path]:
    """The synthetic source, and a local run of it (inline) to compare with."""
    from modnet_batch.data.ingest import ingest
    from modnet_batch.data.synthetic import make_synthetic

    base = tmp_path_factory.mktemp("s3-reference")
    src = make_synthetic(base / "src", n=12, height=160, width=120, seed=3)
    ingest(src, base / "dataset", shard_size=4)
    run = base / "run"
    job = {"dataset": str(base / "dataset"), "out": str(run), "model": str(tiny_model)}
    run_job(load_job(None, {**job, "backend": "inline"}))
    return {"src": src, "run": run}


def _alphas(files: dict[str, bytes]) -> dict[str, Any]:
    out = {}
    for name, data in files.items():
        if name.startswith("alpha/"):
            with np.load(io.BytesIO(data)) as z:
                out[name] = z["alpha"]
    return out


def test_s3_round_trip_ingest_submit_resume_report(
    s3_server: S3Server,
    local_reference: dict[str, Path],
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    bucket = s3_server.make_bucket("roundtrip")
    # credentials and the endpoint in the URIs only (user-info and query string): the
    # environment has neither, so nothing can work unless every process reads the URI's
    query = f"endpoint_override=127.0.0.1:{s3_server.port}&scheme=http"
    secret_uri = f"s3://{ACCESS_KEY}:{SECRET_KEY}@roundtrip"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")
    }
    dataset = f"{secret_uri}/datasets/synth?{query}"
    out = f"{secret_uri}/runs/tiny?{query}"
    model = f"{secret_uri}/models/tiny.onnx?{query}"
    location(model).write_bytes(tiny_model.read_bytes())
    outputs: list[str] = []

    done = run_cli("ingest", local_reference["src"], dataset, "--shard-size", "4", env=env)
    outputs += [done.stdout, done.stderr]
    assert done.returncode == 0, done.stdout + done.stderr
    assert "s3://roundtrip/datasets/synth" in done.stdout  # named, without its credentials
    stored = _objects(UriPath(f"{bucket}/datasets/synth"))
    assert sorted(stored) == ["dataset.json", *(f"shards/shard-0000{i}.parquet" for i in range(3))]

    cmd = ["submit", "--dataset", dataset, "--out", out, "--model", model]
    cmd += ["--workers", "2", "--threads", "1"]
    done = run_cli(*cmd, env=env)
    outputs += [done.stdout, done.stderr]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = UriPath(f"{bucket}/runs/tiny")
    files = _objects(run)
    local = {
        p.relative_to(local_reference["run"]).as_posix(): p.read_bytes()
        for p in local_reference["run"].rglob("*")
        if p.is_file()
    }
    assert {n for n in files if not n.startswith("state/units/")} == {
        n for n in local if not n.startswith("state/units/")
    }
    summary = json.loads(files["summary.json"])
    reference = json.loads(local["summary.json"])
    assert summary["metrics"] == reference["metrics"]  # exact sums: bit-identical
    assert summary["accumulator"] == reference["accumulator"]
    assert summary["job"]["dataset"] == f"s3://roundtrip/datasets/synth?{query}"
    assert summary["job"]["model"] == f"s3://roundtrip/models/tiny.onnx?{query}"
    table = pq.read_table(io.BytesIO(files["metrics.parquet"]))
    assert table.equals(pq.read_table(local_reference["run"] / "metrics.parquet"))
    a, b = _alphas(files), _alphas(local)
    assert a.keys() == b.keys() and len(a) == 12
    assert all(np.array_equal(a[k], b[k]) for k in a)
    workers = {w["pid"] for w in summary["workers"]}
    assert len(workers) == 2  # Ray actors, each opening the URIs in its own process

    # resume: the markers of two units gone (their alphas too): only they are done again
    markers = sorted(n for n in files if n.startswith("state/units/"))
    # 3 shards of 4, a row group per image, 2 workers: units of 2 (ceil(12 / 8)), then single
    # images once fewer than 9 are left: 2 + 2 | 1 + 1 + 1 + 1 | 1 + 1 + 1 + 1
    assert len(markers) == 10
    redo = []
    for name in markers[:2]:
        redo += [r["image_id"] for r in json.loads(files[name])["rows"]]
        (run / name).unlink()
    for image_id in redo:
        (run / f"alpha/{image_id}.npz").unlink()
    assert len(redo) == 4  # cut again for the resume: 4 units of one image
    done = run_cli(*cmd, env=env)
    outputs += [done.stdout, done.stderr]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    again = _objects(run)
    resumed = json.loads(again["summary.json"])
    # the 4 images of the two units removed, cut anew: 4 units of 1 (ceil(4 / 8)); 8 kept
    assert resumed["units"]["processed"] == 4 and resumed["units"]["skipped_done"] == 8
    assert resumed["throughput"]["images"] == 12 + 4  # both attempts' images, added up
    assert resumed["metrics"] == reference["metrics"]
    assert pq.read_table(io.BytesIO(again["metrics.parquet"])).equals(table)
    assert sorted(_alphas(again)) == sorted(a)
    assert all(np.array_equal(_alphas(again)[k], a[k]) for k in a)

    # report and runs read the run through the fs
    page = tmp_path / "report.html"
    done = run_cli("report", out, "--html", page, env=env)
    outputs += [done.stdout, done.stderr]
    assert done.returncode == 0, done.stdout + done.stderr
    assert "MSE" in done.stdout and "worst" in done.stdout.lower()
    assert page.stat().st_size > 10_000
    done = run_cli("runs", f"{secret_uri}/runs?{query}", env=env)
    outputs += [done.stdout, done.stderr]
    assert done.returncode == 0 and "complete" in done.stdout, done.stdout + done.stderr
    assert "s3://roundtrip/runs/tiny" in done.stdout

    # no credential in any object written, in the report, or in any output
    for name, data in {**_objects(UriPath(bucket)), "report.html": page.read_bytes()}.items():
        if not name.startswith("models/"):
            _no_secrets(name, data)
    for text in outputs:
        _no_secrets("the CLI's output", text)
    assert "roundtrip" in outputs[0]


def test_env_credentials_never_written_or_printed(
    s3_server: S3Server, local_reference: dict[str, Path], tiny_model: Path
) -> None:
    """The usual case: credentials and endpoint from the environment, inline backend."""
    bucket = s3_server.make_bucket("envcreds")
    dataset, out = f"{bucket}/ds", f"{bucket}/run"
    done = run_cli("ingest", local_reference["src"], dataset, "--shard-size", "6")
    assert done.returncode == 0, done.stdout + done.stderr
    cmd = ["submit", "--dataset", dataset, "--out", out, "--model", tiny_model]
    done = run_cli(*cmd, "--backend", "inline")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name, data in _objects(UriPath(bucket)).items():
        _no_secrets(name, data)
    _no_secrets("the CLI's output", done.stdout + done.stderr)
    summary = json.loads(UriPath(f"{out}/summary.json").read_text())
    assert summary["images"]["scored"] == 12 and summary["complete"]


def test_missing_bucket_is_one_line_naming_the_uri_and_the_fix(
    s3_server: S3Server, tiny_model: Path, local_reference: dict[str, Path]
) -> None:
    done = run_cli("ingest", local_reference["src"], "s3://no-such-bucket/ds")
    assert done.returncode == 1
    lines = [line for line in done.stdout.splitlines() + done.stderr.splitlines() if line]
    assert "Traceback" not in done.stdout + done.stderr
    error = [line for line in lines if line.startswith("error:")]
    assert len(error) == 1, lines
    assert "s3://no-such-bucket/ds" in error[0] and "create it" in error[0]
