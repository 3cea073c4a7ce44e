"""Ingest throughput, side by side in one run: the decode checks as Ray tasks (embedded local Ray)
at 1 and 2 workers, and the local thread pool at 1 and 2 threads, rounds alternating, medians.

The source is synthetic portraits of realistic size (default 1800x1200 JPEG + PNG matte, the
size of a phone photo's long side halved; `--distinct` of them rendered, repeated under other
names up to `--images`), so decoding dominates as it does on real photos.

    python -m benchmarks.ingest --out bench/ingest.json [--images 160] [--rounds 3]

Per run: images/s over the checking span (from the first file handed out to dataset.json
written, so without Ray's start-up), the whole call's wall time (with it), the start-up apart,
the driver's CPU seconds per image (this process: writing the shards, hashing them, receiving
the tasks' results) and the cores other processes used meanwhile.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.stamp import write_results
from modnet_batch.bench.environment import LoadMonitor
from modnet_batch.bench.stats import steady_rate
from modnet_batch.data.ingest import Loader, ingest, thread_loader
from modnet_batch.data.synthetic import make_synthetic
from modnet_batch.execution.ingest_ray import RayLoader


def make_source(root: Path, images: int, distinct: int, height: int, width: int) -> Path:
    """`distinct` rendered portraits, repeated under new names up to `images` pairs."""
    base = make_synthetic(root / "render", n=distinct, height=height, width=width, seed=11)
    src = root / "src"
    for kind in ("image", "matte"):
        (src / kind).mkdir(parents=True)
        files = sorted((base / kind).iterdir())
        for i in range(images):
            f = files[i % len(files)]
            shutil.copyfile(f, src / kind / f"p{i:05d}{f.suffix}")
    return src


def run_once(
    src: Path, out: Path, make_loader: Callable[[Callable[[str], None]], Loader]
) -> dict[str, Any]:
    marks: dict[str, float] = {}

    cpu_at: dict[str, float] = {}

    def on_phase(text: str) -> None:
        if text.startswith("checking") and "checking" not in marks:
            marks["checking"] = time.perf_counter()
            cpu_at["checking"] = time.process_time()

    loader = make_loader(on_phase)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    finishes: list[float] = []  # when each file's result reached the writer

    def progress(done: int, total: int) -> None:
        finishes.append(time.perf_counter())

    with LoadMonitor() as load:
        report = ingest(
            src, out, shard_size=64, loader=loader, on_phase=on_phase, progress=progress
        )
    end = time.perf_counter()
    cpu = time.process_time() - cpu_at.get("checking", cpu0)
    start = marks.get("checking", t0)
    return {
        "images": report.images,
        "images_per_s": report.images / (end - start),
        # between the 10% and 90% results: without the tasks' worker processes starting
        # (importing numpy, OpenCV, pyarrow), which a local thread pool does not pay
        "steady_images_per_s": steady_rate(finishes, 0.1),
        "wall_s": end - t0,
        "startup_s": start - t0,
        "first_result_s": finishes[0] - t0,
        "driver_cpu_ms_per_image": 1000 * cpu / report.images,
        "foreign_cores": load.result["foreign_cores"],
        "busy_cores": load.result["busy_cores"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ingest", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/ingest.json"))
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--distinct", type=int, default=8)
    parser.add_argument("--height", type=int, default=1800)
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    args = parser.parse_args(argv)
    counts = [int(w) for w in args.workers.split(",")]

    def ray_loader(w: int) -> Callable[[Callable[[str], None]], Loader]:
        return lambda say: RayLoader(workers=w, on_phase=say)

    def threads(w: int) -> Callable[[Callable[[str], None]], Loader]:
        return lambda say: thread_loader(w)

    peers: list[tuple[str, Callable[[Callable[[str], None]], Loader]]] = [
        *((f"ray x{w}", ray_loader(w)) for w in counts),
        *((f"threads x{w}", threads(w)) for w in counts),
    ]
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in peers}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        t = time.perf_counter()
        src = make_source(Path(tmp), args.images, args.distinct, args.height, args.width)
        made = time.perf_counter() - t
        source_mb = sum(p.stat().st_size for p in src.rglob("*") if p.is_file()) / 1e6
        print(f"source: {args.images} pairs, {source_mb:.0f} MB, made in {made:.0f} s", flush=True)
        for r in range(args.rounds):
            order = peers if r % 2 == 0 else peers[::-1]  # alternate: drift hits all alike
            for name, make in order:
                out = Path(tmp) / f"out-{r}-{name.replace(' ', '')}"
                rec = run_once(src, out, make)
                shutil.rmtree(out)
                rounds[name].append(rec)
                print(name, r, json.dumps({k: round(v, 3) for k, v in rec.items() if v}))

    def med(name: str, key: str) -> float:
        values = [x[key] for x in rounds[name] if x[key] is not None]
        return float(statistics.median(values)) if values else float("nan")

    keys = (
        "images_per_s",
        "steady_images_per_s",
        "wall_s",
        "startup_s",
        "driver_cpu_ms_per_image",
        "foreign_cores",
    )
    summary = {name: {k: med(name, k) for k in keys} for name in rounds}
    base = summary[f"ray x{counts[0]}"]["images_per_s"]
    for w in counts:
        summary[f"ray x{w}"]["scaling"] = summary[f"ray x{w}"]["images_per_s"] / base
    doc = {
        "source": {
            "images": args.images,
            "distinct": args.distinct,
            "size": f"{args.width}x{args.height}",
            "megabytes": source_mb,
        },
        "rounds": rounds,
        "median": summary,
    }
    write_results(args.out, doc)
    print(
        "| peer | images/s | 10%-90% of results | whole call s | start-up s "
        "| driver CPU ms/image | other processes' cores |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, m in summary.items():
        print(
            f"| {name} | {m['images_per_s']:.1f} | {m['steady_images_per_s']:.1f} | "
            f"{m['wall_s']:.1f} | {m['startup_s']:.1f} | {m['driver_cpu_ms_per_image']:.1f} | "
            f"{m['foreign_cores']:.1f} |"
        )


if __name__ == "__main__":
    main()
