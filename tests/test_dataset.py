"""Tests for modnet_batch.data.dataset: opening, fingerprint, verify, streaming records."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modnet_batch.data.dataset import SCHEMA_VERSION, Dataset, iter_records
from modnet_batch.data.ingest import ingest
from modnet_batch.errors import ModnetBatchError


def _source(root: Path, n: int, seed: int = 0) -> Path:
    """PPM layout with n PNG pairs; every third image has no matte."""
    rng = np.random.default_rng(seed)
    (root / "image").mkdir(parents=True)
    (root / "matte").mkdir()
    for i in range(n):
        h, w = 10 + i, 12 + i
        _, img = cv2.imencode(".png", rng.integers(0, 256, (h, w, 3), np.uint8))
        (root / "image" / f"id{i:02d}.png").write_bytes(img.tobytes())
        if i % 3 != 2:
            _, matte = cv2.imencode(".png", rng.integers(0, 256, (h, w), np.uint8))
            (root / "matte" / f"id{i:02d}.png").write_bytes(matte.tobytes())
    return root


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    ingest(_source(tmp_path / "src", 10), tmp_path / "ds", shard_size=4)
    return tmp_path / "ds"


def test_open_reads_counts_and_shards(dataset_dir: Path) -> None:
    ds = Dataset.open(dataset_dir)
    assert ds.root == dataset_dir.resolve()
    assert (ds.num_images, ds.num_with_matte) == (10, 7)
    assert ds.meta["schema_version"] == SCHEMA_VERSION
    assert [(s.name, s.path, s.rows) for s in ds.shards] == [
        ("shard-00000", "shards/shard-00000.parquet", 4),
        ("shard-00001", "shards/shard-00001.parquet", 4),
        ("shard-00002", "shards/shard-00002.parquet", 2),
    ]
    assert ds.shard_path(ds.shards[1]) == dataset_dir.resolve() / "shards" / "shard-00001.parquet"
    assert all(len(s.sha256) == 64 for s in ds.shards)


def test_records_stream_original_bytes_zero_copy(dataset_dir: Path) -> None:
    src = dataset_dir.parent / "src"
    records = list(Dataset.open(dataset_dir).records())
    assert [r.image_id for r in records] == [f"id{i:02d}" for i in range(10)]
    for i, r in enumerate(records):
        assert isinstance(r.image, memoryview) and r.image.readonly
        assert bytes(r.image) == (src / "image" / f"{r.image_id}.png").read_bytes()
        assert (r.width, r.height) == (12 + i, 10 + i)
        if i % 3 == 2:
            assert r.matte is None
        else:
            assert r.matte is not None
            assert bytes(r.matte) == (src / "matte" / f"{r.image_id}.png").read_bytes()
    # Zero copy: consecutive values of one Arrow batch lie back to back in its data buffer.
    first, second = records[0].image, records[1].image
    assert _address(second) == _address(first) + len(first)


def _address(view: bytes | memoryview) -> int:
    return int(np.frombuffer(view, np.uint8).ctypes.data)


@pytest.mark.parametrize("batch_rows", [1, 3, 100])
def test_iter_records_batch_size_does_not_change_content(
    dataset_dir: Path, batch_rows: int
) -> None:
    path = dataset_dir / "shards" / "shard-00000.parquet"
    ids = [r.image_id for r in iter_records(path, batch_rows=batch_rows)]
    assert ids == ["id00", "id01", "id02", "id03"]


def test_iter_records_errors(tmp_path: Path, dataset_dir: Path) -> None:
    with pytest.raises(ModnetBatchError, match=r"batch_rows=0"):
        next(iter_records(dataset_dir / "shards" / "shard-00000.parquet", batch_rows=0))
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet")
    with pytest.raises(ModnetBatchError, match=r"junk.parquet is not a readable Parquet shard"):
        next(iter_records(junk))
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1]}), other)
    with pytest.raises(ModnetBatchError, match=r"lacks column.*image_id"):
        next(iter_records(other))


def test_fingerprint_depends_on_content_not_location(tmp_path: Path, dataset_dir: Path) -> None:
    ds = Dataset.open(dataset_dir)
    moved = tmp_path / "moved"
    shutil.copytree(dataset_dir, moved)
    assert Dataset.open(moved).fingerprint() == ds.fingerprint()
    ingest(_source(tmp_path / "src2", 10, seed=1), tmp_path / "ds2", shard_size=4)
    assert Dataset.open(tmp_path / "ds2").fingerprint() != ds.fingerprint()
    regrouped = tmp_path / "ds3"
    ingest(dataset_dir.parent / "src", regrouped, shard_size=5)  # same images, other shards
    assert Dataset.open(regrouped).fingerprint() != ds.fingerprint()
    assert len(ds.fingerprint()) == 64


def test_verify_detects_a_changed_shard(dataset_dir: Path) -> None:
    ds = Dataset.open(dataset_dir)
    ds.verify()
    shard = ds.shard_path(ds.shards[1])
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ModnetBatchError, match=r"shard-00001.parquet has sha256"):
        ds.verify()


def test_open_missing_path_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(ModnetBatchError, match=r"does not exist.*modnet-batch ingest"):
        Dataset.open(tmp_path / "nope")


def test_open_file_or_plain_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ModnetBatchError, match=r"it is a file"):
        Dataset.open(tmp_path / "f")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ModnetBatchError, match=r"no dataset.json.*modnet-batch ingest SRC"):
        Dataset.open(tmp_path / "plain")


def test_open_source_folder_suggests_ingesting_it(tmp_path: Path) -> None:
    src = _source(tmp_path / "src", 1)
    with pytest.raises(ModnetBatchError, match=f"looks like a source folder.*ingest {src}"):
        Dataset.open(src)


def _edit_meta(root: Path, **changes: object) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    meta.update(changes)
    (root / "dataset.json").write_text(json.dumps(meta))


def test_open_refuses_other_schema_versions(dataset_dir: Path) -> None:
    _edit_meta(dataset_dir, schema_version=2)
    with pytest.raises(ModnetBatchError, match=r"schema_version 2.*reads 1"):
        Dataset.open(dataset_dir)


def test_open_refuses_malformed_metadata(dataset_dir: Path) -> None:
    _edit_meta(dataset_dir, shards=[{"name": "shard-00000"}])
    with pytest.raises(ModnetBatchError, match=r"malformed field"):
        Dataset.open(dataset_dir)
    (dataset_dir / "dataset.json").write_text("{not json")
    with pytest.raises(ModnetBatchError, match=r"dataset.json is unreadable"):
        Dataset.open(dataset_dir)


def test_open_refuses_missing_shard_files(dataset_dir: Path) -> None:
    (dataset_dir / "shards" / "shard-00002.parquet").unlink()
    with pytest.raises(ModnetBatchError, match=r"incomplete: missing shards/shard-00002.parquet"):
        Dataset.open(dataset_dir)


def test_shard_info_pickles_for_handing_to_actors(dataset_dir: Path) -> None:
    ds = Dataset.open(dataset_dir)
    shards = pickle.loads(pickle.dumps(ds.shards))
    assert shards == ds.shards
    with pytest.raises(AttributeError):
        shards[0].rows = 4
