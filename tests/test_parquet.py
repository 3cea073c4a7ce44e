"""Parquet datasets in place (no dataset.json): Hugging Face-style struct columns, ids, bad rows,
missing columns, identity for resume, and the same work units as ingested shards."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from modnet_batch.data.ids import is_safe_name, safe_id
from modnet_batch.data.ingest import ingest
from modnet_batch.data.parquet import ParquetColumns, open_dataset, open_parquet
from modnet_batch.data.synthetic import make_synthetic
from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution.driver import run_job
from modnet_batch.options import JobConfig, load_job

N = 10
HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _job(dataset: Path, out: Path, model: Path, **kw: object) -> JobConfig:
    values = {"dataset": str(dataset), "out": str(out), "model": str(model), "backend": "inline"}
    return load_job(None, {**values, **kw})


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("pq") / "src", n=N, height=96, width=64, seed=11)


def _hf_rows(src: Path) -> list[dict[str, Any]]:
    """The synthetic pairs as a Hugging Face `datasets` export holds them."""
    rows = []
    for image in sorted((src / "image").iterdir()):
        matte = src / "matte" / f"{image.stem}.png"
        rows.append(
            {
                "image": {"bytes": image.read_bytes(), "path": image.name},
                "matte": {"bytes": matte.read_bytes(), "path": matte.name},
            }
        )
    return rows


def _write(path: Path, rows: list[dict[str, Any]], schema: pa.Schema, groups: int = 3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=groups)
    return path


HF_SCHEMA = pa.schema([("image", HF_IMAGE), ("matte", HF_IMAGE)])


def test_a_hugging_face_export_equals_the_same_images_ingested(
    source: Path, tiny_model: Path, tmp_path: Path
) -> None:
    hf = _write(tmp_path / "hf" / "train-00000-of-00001.parquet", _hf_rows(source), HF_SCHEMA)
    assert pq.ParquetFile(hf).metadata.num_row_groups == 4  # 3 + 3 + 3 + 1
    ingest(source, tmp_path / "ds")
    a = run_job(_job(tmp_path / "ds", tmp_path / "ingested", tiny_model))
    b = run_job(_job(tmp_path / "hf", tmp_path / "inplace", tiny_model))
    assert a.exit_status == b.exit_status == 0
    sa, sb = a.summary.to_dict(), b.summary.to_dict()
    for key in ("images", "metrics", "accumulator"):
        assert sa[key] == sb[key], key  # bit-identical
    ta = pq.read_table(tmp_path / "ingested" / "metrics.parquet")
    tb = pq.read_table(tmp_path / "inplace" / "metrics.parquet")
    assert ta.equals(tb)  # same ids (the paths' stems), sizes (from the headers) and metrics
    for row in ta.to_pylist():
        name = f"{row['image_id']}.npz"
        assert (tmp_path / "ingested" / "alpha" / name).read_bytes() == (
            tmp_path / "inplace" / "alpha" / name
        ).read_bytes()
    # work units are runs of row groups, as for ingested shards (inline: ceil(10 / 4) = 3)
    markers = sorted(p.stem for p in (tmp_path / "inplace" / "state" / "units").iterdir())
    assert markers == [f"shard-00000.rg{g}-{g}" for g in range(4)]
    # resume: the same job is recognised, nothing is redone
    again = run_job(_job(tmp_path / "hf", tmp_path / "inplace", tiny_model))
    assert again.summary.units.processed == 0 and again.complete


def test_bad_rows_become_error_rows_and_the_job_goes_on(
    source: Path, tiny_model: Path, tmp_path: Path
) -> None:
    rows = _hf_rows(source)[:5]
    rows[1]["image"] = None  # a null image
    rows[2]["image"] = {"bytes": b"not an image at all", "path": "junk.jpg"}
    rows[3]["image"] = {"bytes": None, "path": "empty.jpg"}  # a struct without bytes
    rows[4]["matte"] = None  # no ground truth: matted, unscored
    _write(tmp_path / "bad.parquet", rows, HF_SCHEMA, groups=2)
    outcome = run_job(_job(tmp_path / "bad.parquet", tmp_path / "run", tiny_model))
    assert outcome.exit_status == 4
    by_id = {
        r["image_id"]: r for r in pq.read_table(tmp_path / "run" / "metrics.parquet").to_pylist()
    }
    assert by_id["synth-000"]["error"] is None and by_id["synth-000"]["mse"] is not None
    assert "has no image (null in column 'image')" in by_id["bad-1"]["error"]  # no path: row id
    assert "not a readable image" in by_id["junk"]["error"] and not by_id["junk"]["transient"]
    assert "has no image" in by_id["empty"]["error"]
    assert by_id["synth-004"]["error"] is None and by_id["synth-004"]["mse"] is None
    counts = outcome.summary.images
    assert (counts.total, counts.scored, counts.failed, counts.unscored) == (5, 1, 3, 1)


def test_missing_or_wrong_columns_are_one_line_errors_naming_the_columns(
    source: Path, tmp_path: Path
) -> None:
    path = _write(tmp_path / "d.parquet", _hf_rows(source)[:2], HF_SCHEMA)
    with pytest.raises(ModnetBatchError) as exc:
        open_dataset(path, ParquetColumns(image="pixels"))
    text = str(exc.value)
    assert "no image column 'pixels' (its columns: image, matte)" in text
    assert "--image-column" in text and "\n" not in text
    with pytest.raises(ModnetBatchError, match=r"no matte column 'mask' .*columns: image, matte"):
        open_dataset(path, ParquetColumns(matte="mask"))
    with pytest.raises(ModnetBatchError, match=r"no id column 'name' .*--id-column"):
        open_dataset(path, ParquetColumns(id="name"))
    labels = pa.schema([("image", pa.binary()), ("label", pa.int64())])
    lab = _write(tmp_path / "l.parquet", [{"image": b"x", "label": 1}], labels)
    with pytest.raises(ModnetBatchError, match=r"column .label. of l\.parquet is int64"):
        open_dataset(lab, ParquetColumns(image="label"))
    with pytest.raises(ModnetBatchError, match="ingested dataset"):
        ds = tmp_path / "ds"
        ingest(source, ds)
        open_dataset(ds, ParquetColumns(image="image"))


def test_ids_from_a_column_are_escaped_and_duplicates_are_error_rows(
    source: Path, tiny_model: Path, tmp_path: Path
) -> None:
    images = [p.read_bytes() for p in sorted((source / "image").iterdir())][:5]
    names = ["a b/c", "ok", "dup", "DUP", None]
    schema = pa.schema([("name", pa.string()), ("img", pa.binary())])
    rows = [{"name": n, "img": b} for n, b in zip(names, images, strict=True)]
    path = _write(tmp_path / "named.parquet", rows, schema, groups=2)
    ds = open_dataset(path, ParquetColumns(image="img", id="name"))
    ids = ds.image_ids()
    assert ids == [safe_id("a b/c"), "ok", "named-2", "named-3", "named-4"]
    assert ids[0].startswith("a_b_c-") and is_safe_name(ids[0])
    # from YAML, as every job option
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        yaml.safe_dump(
            {
                "dataset": str(path),
                "out": str(tmp_path / "run"),
                "model": str(tiny_model),
                "backend": "inline",
                "image_column": "img",
                "id_column": "name",
            }
        )
    )
    outcome = run_job(load_job(job_file))
    assert outcome.exit_status == 4 and outcome.summary.images.failed == 3
    rows_out = {
        r["image_id"]: r for r in pq.read_table(tmp_path / "run" / "metrics.parquet").to_pylist()
    }
    assert (
        "image id 'dup' (column 'name') is shared by several rows" in rows_out["named-2"]["error"]
    )
    assert "image id 'DUP'" in rows_out["named-3"]["error"]
    assert "no id (null in column 'name')" in rows_out["named-4"]["error"]
    written = sorted(p.stem for p in (tmp_path / "run" / "outputs").iterdir())
    assert written == sorted([ids[0], "ok"])  # no output for a shared or missing id
    assert any("shared by several rows" in w for w in outcome.warnings)


def test_ids_from_paths_else_from_rows(source: Path, tmp_path: Path) -> None:
    rows = _hf_rows(source)[:4]
    # unique paths: their stems (escaped when unsafe)
    rows[0]["image"]["path"] = "/data/photos/my photo.JPG"
    unique = open_dataset(_write(tmp_path / "u" / "part.parquet", rows, HF_SCHEMA))
    assert unique.image_ids() == [safe_id("my photo"), "synth-001", "synth-002", "synth-003"]
    # paths that repeat (or are missing): every id is <file stem>-<row>, the file's folder path
    # with / as __
    for row in rows:
        row["image"]["path"] = "image.png"
    _write(tmp_path / "s" / "sub" / "train.parquet", rows, HF_SCHEMA)
    shared = open_dataset(tmp_path / "s")  # a folder: files named by their path in it
    assert shared.image_ids() == [f"sub__train-{i}" for i in range(4)]
    assert "not unique" in shared.meta["ids_note"]
    # a binary image column has no paths: row ids, zero-padded to the file's rows
    plain = pa.schema([("image", pa.binary())])
    many = [{"image": r["image"]["bytes"]} for r in rows * 3]
    ds = open_dataset(_write(tmp_path / "p.parquet", many, plain, groups=5))
    assert ds.image_ids()[:2] == ["p-00", "p-01"] and ds.image_ids()[-1] == "p-11"
    assert ds.image_ids(ds.shards[0], [1]) == [f"p-{i:02d}" for i in range(5, 10)]
    assert [r.image_id for r in ds.records()] == ds.image_ids()
    assert {(r.width, r.height) for r in ds.records()} == {(64, 96)}  # from the headers


def test_identity_is_cheap_stable_and_follows_files_and_columns(
    source: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "f"
    _write(folder / "a.parquet", _hf_rows(source)[:3], HF_SCHEMA)
    _write(folder / "b.parquet", _hf_rows(source)[3:6], HF_SCHEMA)
    (folder / ".hidden").mkdir()
    _write(folder / ".hidden" / "x.parquet", _hf_rows(source)[:1], HF_SCHEMA)  # left out
    ds = open_parquet(folder)
    assert [s.path for s in ds.shards] == ["a.parquet", "b.parquet"] and ds.num_images == 6
    assert ds.num_with_matte == 6
    assert open_parquet(folder).fingerprint() == ds.fingerprint()
    assert open_parquet(folder, ParquetColumns(matte="image")).fingerprint() != ds.fingerprint()
    _write(folder / "b.parquet", _hf_rows(source)[3:5], HF_SCHEMA)
    assert open_parquet(folder).fingerprint() != ds.fingerprint()
    assert json.dumps(ds.meta)  # plain data
    # what travels to Ray workers with each unit
    assert pickle.loads(pickle.dumps(ds.reader)) == ds.reader


def test_files_that_are_links_and_differ_in_columns(source: Path, tmp_path: Path) -> None:
    real = _write(tmp_path / "elsewhere" / "real.parquet", _hf_rows(source)[:2], HF_SCHEMA)
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "mine.parquet").symlink_to(real)
    plain = pa.schema([("image", pa.binary())])
    rows = [{"image": r["image"]["bytes"]} for r in _hf_rows(source)[:2]]
    _write(tmp_path / "elsewhere" / "plain.parquet", rows, plain)
    (tmp_path / "linked" / "plain.parquet").symlink_to(tmp_path / "elsewhere" / "plain.parquet")
    ds = open_dataset(tmp_path / "linked")
    # the first file's images have paths, the second's are plain bytes (named by row), and only
    # the first has mattes (the default column, where a file has one)
    assert ds.image_ids() == ["synth-000", "synth-001", "plain-0", "plain-1"]
    assert ds.num_with_matte == 2
    assert [r.image_id for r in ds.records()] == ds.image_ids()


def test_submit_and_matte_read_parquet_in_place_from_the_command_line(
    source: Path, tiny_model: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from modnet_batch.cli import app

    schema = pa.schema([("key", pa.string()), ("photo", HF_IMAGE)])
    rows = [{"key": f"k{i}", "photo": r["image"]} for i, r in enumerate(_hf_rows(source)[:3])]
    path = _write(tmp_path / "in" / "photos.parquet", rows, schema)
    common = ["--model", str(tiny_model), "--backend", "inline", "--image-column", "photo"]
    args = ["submit", "--dataset", str(path), "--out", str(tmp_path / "run"), *common]
    result = CliRunner().invoke(app, [*args, "--id-column", "key"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "run" / "outputs").iterdir()) == [
        "k0.png",
        "k1.png",
        "k2.png",
    ]
    result = CliRunner().invoke(app, ["matte", str(tmp_path / "in"), str(tmp_path / "m"), *common])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "m").glob("*.png")) == [
        "synth-000.png",
        "synth-001.png",
        "synth-002.png",
    ]
    missing = CliRunner().invoke(app, [*args[:4], str(tmp_path / "run2"), *common[:4]])
    assert (
        missing.exit_code == 1
        and "no image column 'image' (its columns: key, photo)" in missing.output
    )
