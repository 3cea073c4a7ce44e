"""modnet_batch.storage: local paths and URIs (against moto's S3 server on 127.0.0.1), redaction,
listing, atomic writes (no partial object, no temp file left), errors as one line naming the URI
and the fix; Parquet in place and models read by URI."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modnet_batch.digest import sha256_file
from modnet_batch.errors import ModnetBatchError, is_storage_error
from modnet_batch.storage import (
    TEMP_SUFFIX,
    UriError,
    UriPath,
    UriStorageError,
    argument,
    atomic_write_bytes,
    is_uri,
    location,
    redact,
)
from tests.helpers import ROOT
from tests.s3 import ACCESS_KEY, SECRET_KEY, S3Server


def test_redact_drops_user_info_and_secret_query_values_only() -> None:
    uri = f"s3://{ACCESS_KEY}:{SECRET_KEY}@bkt/a/b?endpoint_override=h:9000&secret_key=x&region=eu"
    assert redact(uri) == "s3://bkt/a/b?endpoint_override=h:9000&region=eu"
    text = "failed on gs://u:p@bkt/x?access_token=T and s3://b/k?Signature=abc&y=1, see log"
    assert redact(text) == "failed on gs://bkt/x and s3://b/k?y=1, see log"
    assert redact("/local/path?x=1") == "/local/path?x=1"  # not a URI: unchanged


def test_location_local_file_uri_and_object_storage() -> None:
    assert location("/tmp/x") == Path("/tmp/x")
    assert location("file:///tmp/a%20b/c") == Path("/tmp/a b/c")
    assert location("~/run") == Path.home() / "run"
    uri = f"s3://{ACCESS_KEY}:{SECRET_KEY}@bkt/runs/one?region=eu"
    p = location(uri)
    assert isinstance(p, UriPath) and is_uri(uri) and not is_uri("C:/data")
    assert str(p) == "s3://bkt/runs/one?region=eu" and SECRET_KEY not in repr(p)
    child = p / "alpha" / "x.npz"
    assert child.uri == f"s3://{ACCESS_KEY}:{SECRET_KEY}@bkt/runs/one/alpha/x.npz?region=eu"
    assert (child.name, child.stem, child.suffix) == ("x.npz", "x", ".npz")
    assert child.parent.parent == p and child.relative_to(p).as_posix() == "alpha/x.npz"
    assert pickle.loads(pickle.dumps(child)).uri == child.uri  # what a Ray worker gets
    assert argument(uri) == uri and argument("rel") == str(Path("rel").resolve())


def test_object_operations_listing_and_missing_files(s3_server: S3Server) -> None:
    root = location(s3_server.make_bucket("ops")) / "top"
    assert isinstance(root, UriPath)
    assert not root.exists() and not root.is_dir() and list(root.iterdir()) == []
    (root / "a.json").write_text("{}")
    (root / "sub" / "b.json").write_bytes(b"12345")
    (root / "sub" / "c.txt").write_bytes(b"")
    assert root.is_dir() and (root / "a.json").is_file() and not (root / "sub").is_file()
    assert [p.name for p in root.iterdir()] == ["a.json", "sub"]
    assert [p.name for p in root.glob("*.json")] == ["a.json"]
    assert [p.relative_to(root).as_posix() for p in root.rglob("*.json")] == [
        "a.json",
        "sub/b.json",
    ]
    files = {p.relative_to(root).as_posix(): st.st_size for p, st in root.walk_files()}
    assert files == {"a.json": 2, "sub/b.json": 5, "sub/c.txt": 0}
    st = (root / "sub" / "b.json").stat()
    assert st.st_size == 5 and abs(st.st_mtime - time.time()) < 120
    assert sha256_file(root / "sub" / "b.json") == sha256_file(_local(b"12345"))
    with pytest.raises(FileNotFoundError) as missing:
        (root / "nope.json").read_text()
    assert "s3://ops/top/nope.json" in str(missing.value)
    (root / "nope.json").unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError):
        (root / "nope.json").unlink()
    (root / "a.json").unlink()
    assert not (root / "a.json").exists()
    root.delete_tree()
    assert list(root.walk_files()) == []


def _local(data: bytes) -> Path:
    import tempfile

    fd, name = tempfile.mkstemp()
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return Path(name)


_WRITER = """
import os, sys
from modnet_batch.storage import location
data = os.urandom(1 << 20) * int(sys.argv[2])
print("writing", flush=True)
location(sys.argv[1]).write_bytes(data)
print("done", flush=True)
"""


def test_an_object_killed_mid_upload_is_absent_never_partial(s3_server: S3Server) -> None:
    target = location(s3_server.make_bucket("atomic")) / "big.bin"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(target), "96"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(0.3)  # uploading now (96 MiB take seconds through moto)
    proc.send_signal(signal.SIGKILL)
    rest = proc.communicate(timeout=30)[0]
    assert "done" not in rest, "the upload finished before the kill; nothing was tested"
    assert not target.exists()  # no partial object: the upload never completed
    target.write_bytes(b"x" * 1000)  # a write that completes is there whole
    assert target.read_bytes() == b"x" * 1000


def test_a_failed_local_write_leaves_neither_file_nor_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "run" / "summary.json"

    def broken(src: str, dst: str) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError) as failed:
        atomic_write_bytes(target, b"{}")
    assert failed.value.filename == str(target)  # named as the file, not as its temp
    assert not target.exists()
    assert list(target.parent.glob(f"*{TEMP_SUFFIX}")) == []


def test_missing_bucket_is_permanent_and_one_line(s3_server: S3Server) -> None:
    target = location("s3://no-such-bucket-here/run/summary.json")
    with pytest.raises(UriStorageError) as failed:
        target.write_bytes(b"{}")
    message = str(failed.value)
    assert "\n" not in message and "s3://no-such-bucket-here/run/summary.json" in message
    assert "the bucket does not exist: create it, or fix the URI" in message
    assert is_storage_error(failed.value) and isinstance(failed.value, ModnetBatchError)
    with pytest.raises(UriStorageError, match="does not exist: create it"):
        assert isinstance(target, UriPath)
        target.check_store()


def test_refused_credentials_name_the_uri_and_the_fix_not_the_secret(tmp_path: Path) -> None:
    pytest.importorskip("moto.server")
    server = S3Server(tmp_path / "moto.log", auth=True)  # no IAM user: every key refused
    try:
        query = f"endpoint_override=127.0.0.1:{server.port}&scheme=http"
        target = location(f"s3://{ACCESS_KEY}:{SECRET_KEY}@guarded/run/job.yaml?{query}")
        with pytest.raises(UriStorageError) as failed:
            target.write_bytes(b"x")
        message = str(failed.value)
        assert f"s3://guarded/run/job.yaml?{query}" in message
        assert "credentials were refused" in message and "AWS_ACCESS_KEY_ID" in message
        assert SECRET_KEY not in message and ACCESS_KEY not in message
        assert "\n" not in message
    finally:
        server.stop()


def test_an_unreachable_endpoint_is_a_transient_error_naming_the_endpoint_fix() -> None:
    # a port nothing listens on: a network failure, which a retry may pass
    target = location("s3://bkt/x.json?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1")
    with pytest.raises(UriError) as failed:
        target.read_bytes()
    assert not isinstance(failed.value, UriStorageError) and not is_storage_error(failed.value)
    assert "s3://bkt/x.json" in str(failed.value) and "cannot be reached" in str(failed.value)


def test_parquet_in_place_by_uri(s3_server: S3Server, synth_dataset: Path) -> None:
    """A Hugging Face-style file (struct image column, no id column) read from S3 in place."""
    from modnet_batch.data.dataset import Dataset
    from modnet_batch.data.parquet import open_dataset

    local = Dataset.open(synth_dataset)
    records = list(local.records())
    table = pa.table(
        {
            "image": pa.array(
                [{"bytes": bytes(r.image), "path": f"{r.image_id}.png"} for r in records],
                pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
            )
        }
    )
    root = location(s3_server.make_bucket("inplace")) / "hf" / "data"
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=4)
    (root / "train-00000.parquet").write_bytes(sink.getvalue().to_pybytes())
    dataset = open_dataset(str(root))
    assert dataset.meta["kind"] == "parquet" and dataset.num_images == len(records)
    assert dataset.image_ids() == [r.image_id for r in records]
    got = list(dataset.records())
    assert [bytes(r.image) for r in got] == [bytes(r.image) for r in records]
    assert dataset.row_group_rows(dataset.shards[0]) == [4, 4, 4]


def test_a_model_by_uri_is_fetched_once_with_its_build_record(
    s3_server: S3Server,
    tiny_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from modnet_batch.model import remote
    from modnet_batch.model.variants import read_build_record, resolve_model

    monkeypatch.setenv("MODNET_BATCH_CACHE", str(tmp_path / "cache"))
    models = location(s3_server.make_bucket("models"))
    (models / "tiny.onnx").write_bytes(tiny_model.read_bytes())
    (models / "tiny.build.json").write_text('{"name": "tiny-built", "precision": "fp32"}')
    calls = []
    real = remote._download
    monkeypatch.setattr(remote, "_download", lambda s, t: calls.append(s) or real(s, t))
    first = resolve_model(str(models / "tiny.onnx"))
    assert first.read_bytes() == tiny_model.read_bytes()
    assert first.parent.name == sha256_file(tiny_model)  # keyed by content
    assert read_build_record(first) == {"name": "tiny-built", "precision": "fp32"}
    assert len(calls) == 2  # the model and its record
    assert resolve_model(str(models / "tiny.onnx")) == first
    assert len(calls) == 2  # found by one metadata request, not downloaded again
    with pytest.raises(ModnetBatchError, match="does not exist"):
        resolve_model(str(models / "absent.onnx"))


def test_a_run_directory_in_object_storage_is_held_by_a_marker(s3_server: S3Server) -> None:
    import socket

    from modnet_batch.results import RunDir

    root = location(s3_server.make_bucket("held")) / "run"
    identity = {"dataset": "d"}
    run = RunDir(root)
    assert run.prepare(identity) is False and run.lock_file.is_file()
    with pytest.raises(ModnetBatchError) as refused:
        RunDir(root).prepare(identity)
    assert f"(pid {os.getpid()}) is writing {root} now on host {socket.gethostname()}" in str(
        refused.value
    )
    run.release()
    assert not run.lock_file.exists()
    (root / "state" / "lock").write_text("other.example:7:1.00")  # a job on another machine
    with pytest.raises(ModnetBatchError, match=r"on host other.example.*delete s3://held/run"):
        RunDir(root).prepare(identity)
