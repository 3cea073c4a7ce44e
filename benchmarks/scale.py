"""`make bench-scale`: a load run of `submit` on this machine, 100,000 small images through the
tiny model (benchmarks.tiny), so that what is measured is the machinery, not the network:

- the driver's CPU per shard (its dispatch loop, summary.json `dispatch`, and the whole process);
- the peak memory (RSS) of the driver and of each worker at 10%, 50% and 100% of the images done
  (10k / 50k / 100k): it must stay flat, growth is flagged;
- the time to resume the finished job (nothing left to do);
- the run directory's costs: files per folder, listing and lookup times, and the per-image write
  cost early and late in the run, measured on the run itself and, side by side, on the flat
  `alpha/<id>.npz` layout against one sub-folder per 256-way bucket.

`--images N` makes a quick run (tests/test_bench_scale.py runs 2,000). JSON to bench/scale.json.
The dataset is made fast: a few synthetic 64x64 images ingested once, their rows ingested again
under new ids without decoding them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from benchmarks.memory import TreeWatch
from benchmarks.stamp import stamp, write_results
from benchmarks.tiny import make_tiny_model
from modnet_batch.data.dataset import (
    Dataset,
)
from modnet_batch.data.ingest import Item, Loaded, ingest
from modnet_batch.data.loading import Row
from modnet_batch.data.synthetic import make_synthetic
from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution.units import parse_unit
from modnet_batch.results import RunDir
from modnet_batch.results.alpha import write_alpha

DEFAULT_IMAGES = 100_000
SHARD_SIZE = 64  # ingest's default
POOL = 64  # distinct synthetic images, replicated under new ids
SIDE = 64  # synthetic images are at least 64 px a side
CHECKPOINTS = (0.1, 0.5, 1.0)  # of the images done: 10k / 50k / 100k
GROWTH_FLAG = 0.10  # RSS growth from the first checkpoint to the last above 10% ...
GROWTH_FLAG_MIB = 16.0  # ... and 16 MiB is flagged
SAMPLE_S = 0.25


# --- the dataset --------------------------------------------------------------------------------
def make_dataset(
    root: Path, images: int, shard_size: int = SHARD_SIZE, pool: int = POOL, seed: int = 0
) -> dict[str, Any]:
    """A dataset of `images` images in shards of `shard_size`: `pool` synthetic images (with
    mattes) ingested once, then `ingest` of `images` empty placeholder pairs img-0000000,
    img-0000001, ... whose loader hands it the pool's checked rows instead of reading them."""
    t0 = time.perf_counter()
    if root.exists():
        shutil.rmtree(root)
    work = root.parent / f".{root.name}.pool"
    shutil.rmtree(work, ignore_errors=True)
    src = make_synthetic(work / "src", n=pool, height=SIDE, width=SIDE, seed=seed)
    ingest(src, work / "ds", shard_size=pool)
    base = Dataset.open(work / "ds")
    rows = pq.read_table(base.shard_path(base.shards[0])).to_pylist()
    names = work / "names"
    for folder in ("image", "matte"):
        (names / folder).mkdir(parents=True)
        for k in range(images):
            (names / folder / f"img-{k:07d}.png").touch()

    def replicate(
        src: Path, items: Sequence[Item], prepare: str | None
    ) -> Generator[Loaded, None, None]:
        for item in items:
            row = rows[int(item.image_id.removeprefix("img-")) % len(rows)]
            yield Row(
                item.image_id,
                row["image"],
                row["matte"],
                row["width"],
                row["height"],
                item.image,
                item.matte,
            )

    report = ingest(names, root, shard_size=shard_size, loader=replicate)
    shutil.rmtree(work, ignore_errors=True)
    shards = Dataset.open(root).shards
    return {
        "images": report.images,
        "shards": len(shards),
        "shard_size": shard_size,
        "distinct_images": pool,
        "image_size": f"{SIDE}x{SIDE}",
        "bytes": sum((root / s.path).stat().st_size for s in shards),
        "seconds": time.perf_counter() - t0,
    }


# --- the load run -------------------------------------------------------------------------------
def _submit_cmd(dataset: Path, out: Path, model: Path, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "modnet_batch", "submit", "--dataset", str(dataset)]
    return [*cmd, "--out", str(out), "--model", str(model), *extra]


def _images_done(run: Path, shard_size: int, images: int) -> int:
    """The images the unit markers cover: a whole shard, or a run of its row groups (one
    image each in this dataset)."""
    try:
        names = os.listdir(run / "state" / "units")
    except FileNotFoundError:
        return 0
    groups = (parse_unit(name.removesuffix(".json"))[1] for name in names)
    return min(images, sum(shard_size if g is None else len(g) for g in groups))


def load_run(
    dataset: Path, out: Path, model: Path, images: int, shard_size: int, extra: list[str], log: Path
) -> dict[str, Any]:
    """Run `submit` to the end, taking the memory of its processes at each checkpoint."""
    marks = [max(1, round(images * c)) for c in CHECKPOINTS]
    checkpoints: list[dict[str, Any]] = []
    env = {**os.environ, "MODNET_BATCH_PROGRESS_S": "30"}
    t0 = time.perf_counter()
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            _submit_cmd(dataset, out, model, extra), stdout=fh, stderr=subprocess.STDOUT, env=env
        )
        watch = TreeWatch(proc.pid)
        first_result = all_done = None
        before: dict[str, Any] = {}  # the last sample with every worker, and its images done
        most = 0  # the most workers a sample has seen
        while proc.poll() is None:
            watch.sample()
            done = _images_done(out, shard_size, images)
            if done and first_result is None:
                first_result = time.perf_counter() - t0
            if done >= images and all_done is None:
                all_done = time.perf_counter() - t0
            now: dict[str, Any] = {
                "images_done": done,
                "elapsed_s": round(time.perf_counter() - t0, 1),
            }
            now |= watch.snapshot()
            most = max(most, len(now["workers"]))
            whole = bool(now["workers"]) and len(now["workers"]) == most
            while marks and done >= marks[0]:
                # the last unit's marker comes as the job ends and its workers go: then the last
                # sample that had every worker (a few units earlier) stands for the end
                point = now if whole or not before else before
                checkpoints.append({"checkpoint": marks.pop(0), **point})
            if whole:
                before = now
            time.sleep(SAMPLE_S)
        last = watch.snapshot()  # the final sample: the driver's peak includes finalize
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise ModnetBatchError(f"submit exited with {proc.returncode}; {log}:\n{tail}")
    summary = json.loads((out / "summary.json").read_text())
    dispatch = summary.get("dispatch") or {}
    units = int(summary["units"]["processed"])
    return {
        "wall_s": round(wall, 2),
        "startup_s": round(float(summary["startup_seconds"]), 2),
        "time_to_first_result_s": round(first_result or 0.0, 2),
        "images_per_s": round(images / wall, 1),
        "processing_images_per_s": round(float(summary["throughput"]["overall_images_per_s"]), 1),
        "units": units,  # smaller than shards at the end (execution/units.py)
        "workers": len(summary["workers"]),
        # the last result to the exit: the summary (every marker read), metrics.parquet, Ray's
        # shutdown
        "after_last_result_s": round(wall - (all_done or wall), 2),
        "driver": {
            "dispatch_cpu_per_shard_ms": dispatch.get("driver_cpu_per_shard_ms"),
            "dispatch_busy_per_shard_ms": dispatch.get("driver_busy_per_shard_ms"),
            "result_to_dispatch_ms": dispatch.get("result_to_dispatch_ms"),
            "dispatch_stages_s": dispatch.get("stages_s"),
            "process_cpu_s": last["driver_cpu_s"],
            # between the first checkpoint and the last: the steady state, start-up left out
            "steady_cpu_per_shard_ms": _steady_cpu(checkpoints, shard_size),
            # per shard: per `shard_size` images, as the steady figure (dispatch: per unit)
            "process_cpu_per_shard_ms": round(
                last["driver_cpu_s"] / max(images / shard_size, 1) * 1e3, 2
            ),
            "peak_rss_mib": last["driver_peak_rss_mib"],
        },
        "checkpoints": checkpoints,
        "memory_flat": _flatness(checkpoints),
        "summary_images": summary["images"],
        "complete": summary["complete"],
    }


def _steady_cpu(checkpoints: list[dict[str, Any]], shard_size: int) -> float | None:
    if len(checkpoints) < 2:
        return None
    first, last = checkpoints[0], checkpoints[-1]
    shards = (last["images_done"] - first["images_done"]) / shard_size  # as measured
    cpu = last["driver_cpu_s"] - first["driver_cpu_s"]
    return round(cpu / shards * 1e3, 2) if shards > 0 else None


def _flatness(checkpoints: list[dict[str, Any]]) -> dict[str, Any]:
    """RSS at the last checkpoint against the first, per process: growth above GROWTH_FLAG
    (and GROWTH_FLAG_MIB) is flagged."""
    if len(checkpoints) < 2:
        return {"flat": True, "growth": {}, "flagged": []}
    first, last = checkpoints[0], checkpoints[-1]
    growth: dict[str, dict[str, float]] = {}

    def grew(name: str, a: float, b: float) -> None:
        growth[name] = {"from_mib": a, "to_mib": b, "growth": round((b - a) / a, 3) if a else 0}

    grew("driver", first["driver_rss_mib"], last["driver_rss_mib"])
    for pid, w in last["workers"].items():
        if pid in first["workers"]:
            grew(f"worker {pid}", first["workers"][pid]["rss_mib"], w["rss_mib"])
    flagged = [
        name
        for name, g in growth.items()
        if g["growth"] > GROWTH_FLAG and g["to_mib"] - g["from_mib"] > GROWTH_FLAG_MIB
    ]
    return {"flat": not flagged, "growth": growth, "flagged": flagged}


def resume_run(
    dataset: Path, out: Path, model: Path, extra: list[str], log: Path
) -> dict[str, Any]:
    """The same `submit` again on the finished run: nothing to do, timed end to end."""
    t0 = time.perf_counter()
    with log.open("wb") as fh:
        proc = subprocess.run(
            _submit_cmd(dataset, out, model, extra), stdout=fh, stderr=subprocess.STDOUT
        )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise ModnetBatchError(f"the resume exited with {proc.returncode}; see {log}")
    summary = json.loads((out / "summary.json").read_text())
    return {
        "wall_s": round(wall, 2),
        "shards_processed": summary["units"]["processed"],
        "shards_skipped_done": summary["units"]["skipped_done"],
    }


# --- run-directory costs ------------------------------------------------------------------------
def _best(fn: Callable[[], Any], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _listing(folder: Path, pattern: str) -> dict[str, Any]:
    names = os.listdir(folder)
    sample = random.Random(0).sample(names, min(1000, len(names)))
    return {
        "entries": len(names),
        "listdir_ms": round(_best(lambda: os.listdir(folder)) * 1e3, 2),
        "glob_ms": round(_best(lambda: list(folder.glob(pattern))) * 1e3, 2),
        "stat_all_ms": round(_best(lambda: [os.stat(folder / n) for n in names], 1) * 1e3, 1),
        "lookup_us": round(
            _best(lambda: [os.stat(folder / n) for n in sample]) / len(sample) * 1e6, 2
        )
        if sample
        else None,
    }


def rundir_costs(run: Path) -> dict[str, Any]:
    """Files per folder of the finished run, listing times, and the per-image write cost of the
    first and last tenth of its shards (the pool threads' `cpu_write`, per image)."""
    rd = RunDir(run)
    folders: dict[str, int] = {}
    for folder, dirs, files in os.walk(run):
        folders[str(Path(folder).relative_to(run)) or "."] = len(files) + len(dirs)
    results = []
    for p in rd.unit_state.glob("*.json"):
        data = json.loads(p.read_text())
        results.append(
            (data.get("started") or 0.0, data["stages"].get("cpu_write", 0.0), data["images"])
        )
    results.sort()
    tenth = max(1, len(results) // 10)

    def per_image_ms(part: list[tuple[float, float, int]]) -> float:
        return round(sum(w for _, w, _ in part) / max(1, sum(n for *_, n in part)) * 1e3, 3)

    assert isinstance(rd.alpha, Path)  # the load run is local (run_dir above)
    alpha_files = [rd.alpha / n for n in os.listdir(rd.alpha)]
    return {
        "files_per_folder": dict(sorted(folders.items(), key=lambda kv: -kv[1])[:6]),
        "alpha": _listing(rd.alpha, "*.npz")
        | {"bytes": sum(p.stat().st_size for p in alpha_files)},
        "markers": _listing(Path(str(rd.unit_state)), "*.json"),
        "write_ms_per_image": {
            "first_tenth": per_image_ms(results[:tenth]),
            "last_tenth": per_image_ms(results[-tenth:]),
        },
        "alpha_times_s": round(_best(rd.alpha_times, 1), 3),  # what a report's timeline reads
    }


def layout_costs(folder: Path, files: int, buckets: int = 256) -> dict[str, Any]:
    """The same `files` alpha files written (atomically, as a job does) into one folder and into
    `buckets` sub-folders by a hash of the id: create time early and late, listing, lookup."""
    alpha = np.zeros((288, 480), np.uint8)
    alpha[100:200, 100:300] = 200
    out: dict[str, Any] = {"files": files, "buckets": buckets}
    for layout in ("flat", "buckets"):
        root = folder / layout
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        if layout == "buckets":
            for b in range(buckets):
                (root / f"{b:02x}").mkdir()
        ids = [f"img-{i:07d}" for i in range(files)]

        def path(image_id: str, root: Path = root, layout: str = layout) -> Path:
            if layout == "flat":
                return root / f"{image_id}.npz"
            return root / f"{bucket_of(image_id, buckets)}" / f"{image_id}.npz"

        tenth = max(1, files // 10)
        times = []
        t = time.perf_counter()
        for i, image_id in enumerate(ids):
            write_alpha(path(image_id), alpha)
            if (i + 1) % tenth == 0:
                times.append(time.perf_counter() - t)
                t = time.perf_counter()
        sample = random.Random(0).sample(ids, min(1000, files))

        def walk(root: Path = root) -> int:
            return sum(len(f) for _, _, f in os.walk(root))

        def lookup(sample: list[str] = sample, path: Callable[[str], Path] = path) -> None:
            for image_id in sample:
                os.stat(path(image_id))

        out[layout] = {
            "create_us_first_tenth": round(times[0] / tenth * 1e6, 1),
            "create_us_last_tenth": round(times[-1] / tenth * 1e6, 1),
            "list_all_ms": round(_best(walk) * 1e3, 2),
            "lookup_us": round(_best(lookup) / len(sample) * 1e6, 2),
            "largest_folder": files
            if layout == "flat"
            else max(len(os.listdir(d)) for d in root.iterdir()),
        }
        shutil.rmtree(root, ignore_errors=True)
    return out


def bucket_of(image_id: str, buckets: int = 256) -> str:
    """The sub-folder of an id in the bucketed layout measured against the flat one."""
    return f"{int(hashlib.sha1(image_id.encode()).hexdigest()[:8], 16) % buckets:02x}"


# --- the whole benchmark ------------------------------------------------------------------------
def run_bench(
    out: Path,
    images: int = DEFAULT_IMAGES,
    shard_size: int = SHARD_SIZE,
    extra: list[str] | None = None,
    keep: bool = False,
    layouts: bool = True,
) -> dict[str, Any]:
    extra = list(extra or [])
    work = out / "scale-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    model = make_tiny_model(work / "tiny.onnx")
    data = make_dataset(work / "dataset", images, shard_size)
    run = work / "run"
    doc: dict[str, Any] = {
        **stamp(),
        "benchmark": "scale",
        "images": images,
        "dataset": data,
        "submit": [
            "modnet-batch",
            "submit",
            "--dataset",
            "DATASET",
            "--out",
            "RUN",
            "--model",
            "tiny.onnx",
            *extra,
        ],
    }
    doc["run"] = load_run(
        work / "dataset", run, model, images, shard_size, extra, work / "submit.log"
    )
    doc["resume"] = resume_run(work / "dataset", run, model, extra, work / "resume.log")
    doc["rundir"] = rundir_costs(run)
    if layouts:
        doc["layouts"] = layout_costs(work / "layouts", images)
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    write_results(out / "scale.json", doc)
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return doc


def print_bench(doc: dict[str, Any]) -> None:
    run = doc["run"]
    print(
        f"{doc['images']} images in {run['units']} units, {run['workers']} workers: "
        f"{run['wall_s']} s ({run['images_per_s']} img/s, start-up {run['startup_s']} s)"
    )
    d = run["driver"]
    print(
        f"driver CPU per shard: {d['dispatch_cpu_per_shard_ms']:.2f} ms in the dispatch loop, "
        f"{d['steady_cpu_per_shard_ms']} ms for the whole process once running "
        f"({d['process_cpu_per_shard_ms']:.2f} ms with start-up and finalize)"
    )
    print("images done   driver RSS   workers RSS (MiB)")
    for c in run["checkpoints"]:
        workers = " ".join(f"{w['rss_mib']:.0f}" for w in c["workers"].values())
        print(f"{c['checkpoint']:>11}   {c['driver_rss_mib']:>10.0f}   {workers}")
    flat = run["memory_flat"]
    print("memory flat" if flat["flat"] else f"memory GROWS: {', '.join(flat['flagged'])}")
    print(f"resume of the finished job: {doc['resume']['wall_s']} s")
    a = doc["rundir"]["alpha"]
    print(f"alpha/: {a['entries']} files, listdir {a['listdir_ms']} ms, glob {a['glob_ms']} ms")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scale", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES)
    parser.add_argument("--shard-size", type=int, default=SHARD_SIZE)
    parser.add_argument("--keep", action="store_true", help="keep the dataset and the run")
    parser.add_argument("--no-layouts", action="store_true", help="skip the layout comparison")
    args, extra = parser.parse_known_args(argv)
    doc = run_bench(args.out, args.images, args.shard_size, extra, args.keep, not args.no_layouts)
    print_bench(doc)
    print(f"written: {args.out / 'scale.json'}")


if __name__ == "__main__":
    main()
