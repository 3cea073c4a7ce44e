"""`make bench-scale` (benchmarks.scale) on 2,000 images: every field of bench/scale.json
is written, and the quick run already shows flat memory and a resume with nothing to do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from benchmarks.scale import bucket_of, main, make_dataset
from modnet_batch.data.dataset import Dataset, iter_records

pytestmark = pytest.mark.ray
IMAGES = 2000


def _nones(doc: Any, path: str = "") -> list[str]:
    """The paths of every None in a JSON document."""
    if isinstance(doc, dict):
        return [p for k, v in doc.items() for p in _nones(v, f"{path}.{k}")]
    if isinstance(doc, list):
        return [p for i, v in enumerate(doc) for p in _nones(v, f"{path}[{i}]")]
    return [path] if doc is None else []


def test_the_fast_dataset_is_a_dataset(tmp_path: Path) -> None:
    info = make_dataset(tmp_path / "ds", 150, shard_size=64, pool=8)
    ds = Dataset.open(tmp_path / "ds")
    assert (ds.num_images, ds.num_with_matte, len(ds.shards)) == (150, 150, 3)
    assert [s.rows for s in ds.shards] == [64, 64, 22] and info["shards"] == 3
    ids = ds.image_ids()
    assert ids == [f"img-{i:07d}" for i in range(150)]
    ds.verify()  # the recorded hashes are the files'
    first = next(iter_records(ds.shard_path(ds.shards[0])))
    assert (first.width, first.height) == (64, 64) and first.matte is not None
    assert pq.read_schema(ds.shard_path(ds.shards[0])).names[0] == "image_id"


def test_bucket_of_spreads_ids() -> None:
    buckets = {bucket_of(f"img-{i:07d}") for i in range(5000)}
    assert len(buckets) == 256 and all(len(b) == 2 for b in buckets)


def test_bench_scale_writes_every_field(tmp_path: Path) -> None:
    main(["--images", str(IMAGES), "--out", str(tmp_path)])
    doc = json.loads((tmp_path / "scale.json").read_text())
    assert not (tmp_path / "scale-work").exists()  # the dataset and run are removed
    assert not _nones(doc), _nones(doc)
    assert doc["images"] == IMAGES and doc["dataset"]["images"] == IMAGES

    run = doc["run"]
    assert run["complete"] and run["summary_images"]["scored"] == IMAGES
    # units are whole shards of 64 until the work left shrinks them (execution/units.py)
    assert doc["dataset"]["shards"] == 32 and run["units"] > 32
    for key in ("dispatch_cpu_per_shard_ms", "process_cpu_per_shard_ms", "steady_cpu_per_shard_ms"):
        assert run["driver"][key] > 0
    gaps = run["driver"]["result_to_dispatch_ms"]
    assert gaps["count"] > 0 and gaps["p50"] <= gaps["max"]
    marks = [c["checkpoint"] for c in run["checkpoints"]]
    assert marks == [IMAGES // 10, IMAGES // 2, IMAGES]
    for c in run["checkpoints"]:
        assert c["driver_rss_mib"] > 0 and len(c["workers"]) == run["workers"] >= 1
        assert all(w["rss_mib"] > 0 for w in c["workers"].values())
    assert set(run["memory_flat"]) == {"flat", "growth", "flagged"}
    assert "driver" in run["memory_flat"]["growth"]

    resume = doc["resume"]
    assert resume["shards_processed"] == 0 and resume["shards_skipped_done"] == run["units"]
    assert resume["wall_s"] > 0

    rundir = doc["rundir"]
    assert rundir["alpha"]["entries"] == IMAGES and rundir["markers"]["entries"] == run["units"]
    assert rundir["files_per_folder"]["alpha"] == IMAGES
    assert set(rundir["write_ms_per_image"]) == {"first_tenth", "last_tenth"}
    layouts = doc["layouts"]
    for layout in ("flat", "buckets"):
        for key in ("create_us_first_tenth", "create_us_last_tenth", "list_all_ms", "lookup_us"):
            assert layouts[layout][key] > 0
    assert layouts["flat"]["largest_folder"] == IMAGES > layouts["buckets"]["largest_folder"]
