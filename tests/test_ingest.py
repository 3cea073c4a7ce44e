"""Tests for modnet_batch.data.ingest: layouts, skipped inputs, id rules, atomic output."""

from __future__ import annotations

import io
import json
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest

from modnet_batch.data.dataset import Dataset, iter_records
from modnet_batch.data.ingest import ingest, work_dir
from modnet_batch.errors import ModnetBatchError


def _write(path: Path, arr: np.ndarray, ext: str | None = None) -> bytes:
    """Encode `arr` (RGB or gray) with OpenCV into `path`; returns the bytes written."""
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(ext or path.suffix, arr)
    assert ok
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.tobytes())
    return bytes(buf.tobytes())


def _make_ppm(
    root: Path, ids: list[str], *, mattes: bool = True, seed: int = 0, ext: str = ".jpg"
) -> Path:
    """A PPM-100-layout source: image/<id><ext> + matte/<id>.png, sizes vary per id."""
    rng = np.random.default_rng(seed)
    for i, image_id in enumerate(ids):
        h, w = 20 + 3 * i, 30 + 2 * i
        _write(root / "image" / f"{image_id}{ext}", rng.integers(0, 256, (h, w, 3), np.uint8))
        if mattes:
            _write(root / "matte" / f"{image_id}.png", rng.integers(0, 256, (h, w), np.uint8))
    return root


def _shard_ids(out: Path) -> list[list[str]]:
    ds = Dataset.open(out)
    return [[r.image_id for r in iter_records(ds.shard_path(s))] for s in ds.shards]


def test_ppm_layout_is_sharded_in_sorted_id_order(tmp_path: Path) -> None:
    ids = ["e", "b", "a", "d", "c", "g", "f"]
    src = _make_ppm(tmp_path / "src", ids)
    seen: list[tuple[int, int]] = []
    report = ingest(src, tmp_path / "ds", shard_size=3, progress=lambda d, t: seen.append((d, t)))
    assert (report.images, report.with_matte, report.shards, report.skipped) == (7, 7, 3, [])
    assert _shard_ids(tmp_path / "ds") == [["a", "b", "c"], ["d", "e", "f"], ["g"]]
    assert seen == [(i, 7) for i in range(1, 8)]
    meta = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert meta["schema_version"] == 1
    assert meta["counts"] == {"images": 7, "with_matte": 7, "skipped": 0, "ignored": 0, "shards": 3}
    assert meta["layout"] == "ppm" and meta["source"] == str(src.resolve())
    assert [
        (s["name"], s["rows"], s["first_image_id"], s["last_image_id"]) for s in meta["shards"]
    ] == [
        ("shard-00000", 3, "a", "c"),
        ("shard-00001", 3, "d", "f"),
        ("shard-00002", 1, "g", "g"),
    ]
    assert "tool_version" in meta and "created" in meta


def test_sizes_and_formats_are_recorded(tmp_path: Path) -> None:
    src = _make_ppm(tmp_path / "src", ["a", "b"], ext=".png")
    ingest(src, tmp_path / "ds")
    table = pq.read_table(tmp_path / "ds" / "shards" / "shard-00000.parquet")
    assert table.column("width").to_pylist() == [30, 32]
    assert table.column("height").to_pylist() == [20, 23]
    assert table.column("image_format").to_pylist() == ["png", "png"]
    assert table.column("matte_format").to_pylist() == ["png", "png"]
    assert table.column("image_file").to_pylist() == ["image/a.png", "image/b.png"]
    assert str(table.schema.field("width").type) == "int32"


def test_original_bytes_are_preserved_and_pandas_reads_the_shard(tmp_path: Path) -> None:
    src = _make_ppm(tmp_path / "src", ["x1", "x2", "x3"])
    (src / "matte" / "x2.png").unlink()  # an image without matte is fine
    ingest(src, tmp_path / "ds")
    df = pq.read_table(tmp_path / "ds" / "shards" / "shard-00000.parquet").to_pandas()
    assert df["image_id"].tolist() == ["x1", "x2", "x3"]
    for row in df.itertuples():
        assert row.image == (src / "image" / f"{row.image_id}.jpg").read_bytes()
    assert df["matte"][0] == (src / "matte" / "x1.png").read_bytes()
    assert df["matte"][1] is None
    assert Dataset.open(tmp_path / "ds").num_with_matte == 2


def test_flat_folder_has_no_mattes_and_lists_other_files_as_ignored(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    src = tmp_path / "flat"
    for name in ["p.JPG", "q.jpeg", "r.Png", "s.bmp", "t.webp", "u.TIF", "v.tiff"]:
        _write(
            src / name, rng.integers(0, 256, (16, 16, 3), np.uint8), ext=Path(name).suffix.lower()
        )
    (src / "notes.txt").write_text("not an image")
    (src / "sub").mkdir()
    report = ingest(src, tmp_path / "ds")
    assert (report.images, report.with_matte, report.skipped) == (7, 0, [])
    assert report.ignored == ["notes.txt"]
    assert _shard_ids(tmp_path / "ds") == [["p", "q", "r", "s", "t", "u", "v"]]
    assert Dataset.open(tmp_path / "ds").meta["layout"] == "flat"


def _bad_source(root: Path) -> Path:
    src = _make_ppm(root, ["a", "b", "c", "d"])
    (src / "image" / "b.jpg").write_bytes(b"\xff\xd8\xff garbage")  # unreadable image
    _write(src / "matte" / "c.png", np.zeros((5, 5), np.uint8))  # wrong size
    _write(src / "matte" / "zz.png", np.zeros((5, 5), np.uint8))  # no image
    (src / "matte" / "d.png").write_bytes(b"nope")  # unreadable matte
    return src


def test_bad_inputs_are_skipped_with_reasons_and_counted(tmp_path: Path) -> None:
    report = ingest(_bad_source(tmp_path / "src"), tmp_path / "ds")
    assert (report.images, report.with_matte) == (1, 1)
    reasons = dict(report.skipped)
    assert sorted(reasons) == ["image/b.jpg", "matte/c.png", "matte/d.png", "matte/zz.png"]
    assert "corrupt or truncated jpeg" in reasons["image/b.jpg"]
    assert "5x5" in reasons["matte/c.png"] and "image/c.jpg" in reasons["matte/c.png"]
    assert "not a known image format" in reasons["matte/d.png"]
    assert "no image" in reasons["matte/zz.png"]
    meta = Dataset.open(tmp_path / "ds").meta
    assert meta["counts"]["skipped"] == 4
    assert [s["name"] for s in meta["skipped"]] == sorted(reasons)
    assert _shard_ids(tmp_path / "ds") == [["a"]]


@pytest.mark.parametrize(
    ("broken", "named"),
    [("image", "image/b.jpg"), ("size", "matte/c.png"), ("orphan", "matte/zz.png")],
)
def test_strict_raises_naming_the_file_and_leaves_nothing(
    tmp_path: Path, broken: str, named: str
) -> None:
    src = _make_ppm(tmp_path / "src", ["a", "b", "c"])
    if broken == "image":
        (src / "image" / "b.jpg").write_bytes(b"garbage")
    elif broken == "size":
        _write(src / "matte" / "c.png", np.zeros((5, 5), np.uint8))
    else:
        _write(src / "matte" / "zz.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(ModnetBatchError, match=named):
        ingest(src, tmp_path / "ds", strict=True, shard_size=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no output, no temp dir


@pytest.mark.parametrize(
    ("names", "match"),
    [
        (["a.jpg", "a.png"], "duplicate image id.*a.jpg = image/a.png"),
        (["Cat.jpg", "cat.png"], "duplicate image id.*ignoring case"),
        (["my photo.jpg"], "unsafe image id"),
        ([".hidden.jpg"], "unsafe image id"),
        (["caf\u00e9.png"], "unsafe image id"),
        (["x" * 240 + ".png"], "at most 200 characters"),  # its temp file would not fit
    ],
)
def test_duplicate_and_unsafe_ids_are_skipped_and_listed_the_rest_ingested(
    tmp_path: Path, names: list[str], match: str
) -> None:
    """Issue 11.4: one bad name used to abort the whole ingest, even without strict."""
    src = _make_ppm(tmp_path / "src", ["ok"])
    for name in names:
        _write(src / "image" / name, np.zeros((8, 8, 3), np.uint8), ext=Path(name).suffix)
    report = ingest(src, tmp_path / "ds")
    assert report.images == 1 and _shard_ids(tmp_path / "ds") == [["ok"]]
    skipped = dict(report.skipped)
    assert sorted(skipped) == sorted(f"image/{n}" for n in names)
    assert all(re.search(match, reason) for reason in skipped.values()), skipped
    assert all("rename" in reason for reason in skipped.values())
    with pytest.raises(ModnetBatchError, match=match):
        ingest(src, tmp_path / "strict", strict=True)
    assert not (tmp_path / "strict").exists()


def test_an_ambiguous_or_unsafe_matte_is_skipped_with_its_image(tmp_path: Path) -> None:
    src = _make_ppm(tmp_path / "src", ["a", "b"])
    _write(src / "matte" / "A.png", np.zeros((8, 8), np.uint8))  # a.png and A.png: which one?
    _write(src / "matte" / "bad name.png", np.zeros((8, 8), np.uint8))
    report = ingest(src, tmp_path / "ds")
    skipped = dict(report.skipped)
    assert "ambiguous" in skipped["image/a.jpg"]
    assert "unsafe image id" in skipped["matte/bad name.png"]
    assert _shard_ids(tmp_path / "ds") == [["b"]]


def test_existing_output_is_never_overwritten(tmp_path: Path) -> None:
    src = _make_ppm(tmp_path / "src", ["a"])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("precious")
    with pytest.raises(ModnetBatchError, match=r"choose a new directory or remove it"):
        ingest(src, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "precious"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ModnetBatchError, match=r"is a file"):
        ingest(src, tmp_path / "afile")
    (tmp_path / "empty").mkdir()
    assert ingest(src, tmp_path / "empty").images == 1  # an empty directory is fine
    assert ingest(src, tmp_path / "deep" / "new").images == 1  # parents are created


def test_source_errors(tmp_path: Path) -> None:
    with pytest.raises(ModnetBatchError, match=r"does not exist"):
        ingest(tmp_path / "missing", tmp_path / "ds")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModnetBatchError, match=r"no images in .*jpg"):
        ingest(tmp_path / "empty", tmp_path / "ds")
    (tmp_path / "noimg" / "image").mkdir(parents=True)
    (tmp_path / "noimg" / "image" / "readme.md").write_text("x")
    with pytest.raises(ModnetBatchError, match=r"no images in"):
        ingest(tmp_path / "noimg", tmp_path / "ds")
    src = _make_ppm(tmp_path / "src", ["a"])
    with pytest.raises(ModnetBatchError, match=r"shard_size=0"):
        ingest(src, tmp_path / "ds", shard_size=0)


def test_all_images_unreadable_is_an_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(b"garbage")
    with pytest.raises(ModnetBatchError, match=r"no readable images.*a.jpg"):
        ingest(src, tmp_path / "ds")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_ingest_is_deterministic(tmp_path: Path) -> None:
    src = _make_ppm(tmp_path / "src", [f"img{i:02d}" for i in range(11)])
    ingest(src, tmp_path / "one", shard_size=4, workers=1)
    ingest(src, tmp_path / "two", shard_size=4, workers=2)
    one, two = Dataset.open(tmp_path / "one"), Dataset.open(tmp_path / "two")
    assert [s.sha256 for s in one.shards] == [s.sha256 for s in two.shards]
    for s in one.shards:
        assert one.shard_path(s).read_bytes() == two.shard_path(s).read_bytes()
    assert one.fingerprint() == two.fingerprint()


def test_row_groups_are_small(tmp_path: Path) -> None:
    """A row group per image by default (work units are cut at row groups, so every worker of a
    small job gets images); `row_group_rows` sets another size."""
    src = _make_ppm(tmp_path / "src", [f"i{i:02d}" for i in range(20)])
    ingest(src, tmp_path / "ds", shard_size=20)
    md = pq.ParquetFile(tmp_path / "ds" / "shards" / "shard-00000.parquet").metadata
    assert [md.row_group(g).num_rows for g in range(md.num_row_groups)] == [1] * 20
    ingest(src, tmp_path / "ds8", shard_size=20, row_group_rows=8)
    md = pq.ParquetFile(tmp_path / "ds8" / "shards" / "shard-00000.parquet").metadata
    assert [md.row_group(g).num_rows for g in range(md.num_row_groups)] == [8, 8, 4]


def test_exif_rotated_image_stores_oriented_size(tmp_path: Path) -> None:
    image_module = pytest.importorskip("PIL.Image", reason="Pillow writes the EXIF file")
    img = image_module.fromarray(np.zeros((20, 40, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW: displayed 20 wide, 40 high
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "r.jpg").write_bytes(buf.getvalue())
    ingest(tmp_path / "src", tmp_path / "ds")
    (record,) = Dataset.open(tmp_path / "ds").records()
    assert (record.width, record.height) == (20, 40)
    assert bytes(record.image) == buf.getvalue()


def _shared_dir() -> Path:
    shared = os.environ.get("MODNET_SHARED_DIR")
    if not shared:
        pytest.skip("MODNET_SHARED_DIR is not set (the shared datasets directory)")
    return Path(shared)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "count"), [("ppm100-dev", 41), ("p3m10k-sample", 5)])
def test_ingest_shared_datasets(tmp_path: Path, name: str, count: int) -> None:
    src = _shared_dir() / "datasets" / name
    report = ingest(src, tmp_path / name, shard_size=16)
    assert (report.images, report.with_matte, report.skipped) == (count, count, [])
    ds = Dataset.open(tmp_path / name)
    assert ds.num_images == count and len(ds.shards) == -(-count // 16)
    first = next(ds.records())
    source_file = next((src / "image").glob(f"{first.image_id}.*"))
    assert bytes(first.image) == source_file.read_bytes()


# --- resume (issue 14.5): an interrupted ingest continues after its finished shards


class _Stop(Exception):
    """Stands in for Ctrl-C or a lost driver after some shards."""


def _stop_after(k: int) -> Callable[[int], None]:
    def on_shard(n: int) -> None:
        if n == k:
            raise _Stop(f"stopped after {n} shards")

    return on_shard


def _same_dataset(a: Path, b: Path) -> None:
    """Identical datasets: dataset.json but for its creation time, every shard byte for byte."""
    ma, mb = (json.loads((d / "dataset.json").read_text()) for d in (a, b))
    ma.pop("created"), mb.pop("created")
    assert ma == mb
    for shard in ma["shards"]:
        assert (a / shard["path"]).read_bytes() == (b / shard["path"]).read_bytes()
    assert sorted(p.name for p in a.rglob("*")) == sorted(p.name for p in b.rglob("*"))


def _bad_many(root: Path, n: int = 23) -> Path:
    """n pairs with a few bad files among them: bad image, bad matte, wrong size, orphan."""
    src = _make_ppm(root, [f"p{i:03d}" for i in range(n)])
    (src / "image" / "p003.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (src / "matte" / "p008.png").write_bytes(b"nope")
    _write(src / "matte" / "p013.png", np.zeros((5, 5), np.uint8))
    _write(src / "matte" / "zz.png", np.zeros((5, 5), np.uint8))
    return src


def test_interrupted_ingest_resumes_to_the_same_dataset(tmp_path: Path) -> None:
    src = _bad_many(tmp_path / "src")
    ingest(src, tmp_path / "clean", shard_size=4, row_group_rows=2)
    out = tmp_path / "ds"
    with pytest.raises(_Stop):
        ingest(src, out, shard_size=4, row_group_rows=2, on_shard=_stop_after(2))
    assert not out.exists()  # no partial dataset where the dataset goes
    work = work_dir(out.resolve())
    state = json.loads((work / "state.json").read_text())
    assert [s["name"] for s in state["progress"]["shards"]] == ["shard-00000", "shard-00001"]
    kept = {p: p.read_bytes() for p in (work / "dataset" / "shards").glob("shard-0000[01]*")}
    phases: list[str] = []
    seen: list[tuple[int, int]] = []
    report = ingest(
        src,
        out,
        shard_size=4,
        row_group_rows=2,
        on_phase=phases.append,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert report.resumed_shards == 2
    # the 8 images of the kept shards (and the bad file among their items) are not decoded again
    assert report.decoded == 23 - state["progress"]["consumed"] and report.decoded < 23 - 8
    assert seen[-1] == (report.decoded, report.decoded)
    assert any("resuming: 2 shard(s) of 8 images" in p for p in phases), phases
    assert all((out / "shards" / p.name).read_bytes() == b for p, b in kept.items())
    _same_dataset(tmp_path / "clean", out)
    assert not work.exists()
    assert sorted(dict(report.skipped)) == [
        "image/p003.jpg",
        "matte/p008.png",
        "matte/p013.png",
        "matte/zz.png",
    ]


def test_resume_after_every_shard_and_with_prepare(tmp_path: Path) -> None:
    src = _bad_many(tmp_path / "src", n=9)
    opts: dict[str, Any] = {"shard_size": 2, "row_group_rows": 1, "prepare": "seed-area"}
    ingest(src, tmp_path / "clean", **opts)
    out = tmp_path / "ds"
    stops = 0
    while True:  # stopped after each new shard, until one run gets through
        try:
            ingest(src, out, on_shard=_stop_after(stops + 1), **opts)
            break
        except _Stop:
            stops += 1
    assert (
        stops == json.loads((tmp_path / "clean" / "dataset.json").read_text())["counts"]["shards"]
    )
    clean = json.loads((tmp_path / "clean" / "dataset.json").read_text())
    resumed = json.loads((out / "dataset.json").read_text())
    # the prepare CPU time is measured, not a content: the rest must be equal
    clean["prepared"].pop("cpu_seconds"), resumed["prepared"].pop("cpu_seconds")
    (out / "dataset.json").write_text(json.dumps(resumed))
    (tmp_path / "clean" / "dataset.json").write_text(json.dumps(clean))
    _same_dataset(tmp_path / "clean", out)


def test_resume_refuses_another_source_or_options_and_restart_discards(tmp_path: Path) -> None:
    src = _make_ppm(tmp_path / "src", [f"i{i}" for i in range(6)])
    out = tmp_path / "ds"
    with pytest.raises(_Stop):
        ingest(src, out, shard_size=2, on_shard=_stop_after(1))
    work = work_dir(out.resolve())
    before = (work / "state.json").read_text()
    with pytest.raises(ModnetBatchError, match=r"another --shard-size;.*--restart") as info:
        ingest(src, out, shard_size=3)
    assert "\n" not in str(info.value)
    with pytest.raises(ModnetBatchError, match=r"another --prepare"):
        ingest(src, out, shard_size=2, prepare="seed-area")
    other = _make_ppm(tmp_path / "other", [f"i{i}" for i in range(6)], seed=5)
    with pytest.raises(ModnetBatchError, match=r"another source folder"):
        ingest(other, out, shard_size=2)
    _write(src / "image" / "i9.jpg", np.zeros((8, 8, 3), np.uint8))  # the source changed
    with pytest.raises(ModnetBatchError, match=r"source files \(added, removed or changed"):
        ingest(src, out, shard_size=2)
    assert (work / "state.json").read_text() == before  # refusals keep what was finished
    report = ingest(src, out, shard_size=3, restart=True)
    assert report.resumed_shards == 0 and report.images == 7 and not work.exists()


def test_resume_refuses_while_another_ingest_holds_the_work_folder(tmp_path: Path) -> None:
    src = _make_ppm(tmp_path / "src", ["a", "b", "c"])
    out = tmp_path / "ds"
    with pytest.raises(_Stop):
        ingest(src, out, shard_size=1, on_shard=_stop_after(1))
    lock = work_dir(out.resolve()) / "lock"
    assert not lock.exists()  # a stop releases it; a killed driver leaves it (next test)
    # a live process (this one) holding it: refused
    lock.write_text(f"{socket.gethostname()}:{os.getpid()}:{psutil.Process().create_time():.2f}")
    with pytest.raises(ModnetBatchError, match=rf"another ingest \(pid {os.getpid()}\) is writing"):
        ingest(src, out, shard_size=1)
    # a dead one's (a killed driver): taken over
    lock.write_text(f"{socket.gethostname()}:{os.getpid()}:1.00")
    assert ingest(src, out, shard_size=1).resumed_shards == 1


def test_a_damaged_kept_shard_is_refused_with_the_fix(tmp_path: Path) -> None:
    src = _make_ppm(tmp_path / "src", ["a", "b", "c"])
    out = tmp_path / "ds"
    with pytest.raises(_Stop):
        ingest(src, out, shard_size=1, on_shard=_stop_after(2))
    shard = work_dir(out.resolve()) / "dataset" / "shards" / "shard-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ModnetBatchError, match=r"shard-00001.parquet is missing or not the size"):
        ingest(src, out, shard_size=1)
    assert ingest(src, out, shard_size=1, restart=True).images == 3
