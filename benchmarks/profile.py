"""`make profile`: where the CPU goes, sampled with py-spy, for the naive loop and the pipeline.

Each workload runs single-threaded for the network (one onnxruntime thread, so every inference
is on a Python thread py-spy can see) under `py-spy record --format raw`; the samples are then
grouped by pipeline stage from their Python stacks. Output: a table and `profile.json`.

    python -m benchmarks.profile [--dataset DS [--prepared DS_PREPARED]] --out bench/profile

Without --dataset it ingests ppm100-dev from MODNET_SHARED_DIR (else synthetic portraits), as
`make bench` does, both as is and prepared for seed-area.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.stamp import write_results
from modnet_batch.storage import atomic_write_json

# (stage, substrings of the collapsed stack); the first stage with a match takes the sample.
STAGE_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("start-up: imports", ("_find_and_load",)),
    ("start-up: session", ("open_session",)),
    ("infer", ("Session.run", "InferenceSession.run")),
    ("read", ("iter_records", "Dataset.records", "read_table", "iter_batches")),
    ("decode", ("decode_image", "decode_matte")),
    ("preprocess", ("preprocess (modnet_batch/protocol", "ground_truth (modnet_batch/protocol")),
    ("postprocess", ("postprocess (modnet_batch/protocol",)),
    ("score: conn", ("connectivity_error",)),
    ("score: grad", ("gradient_error",)),
    ("score: other", ("image_metrics",)),
    ("write", ("write_alpha",)),
    ("idle: pool waiting", ("concurrent/futures/thread.py:81)",)),
)
OTHER = "other (driver, bookkeeping)"
STAGES = (*(name for name, _ in STAGE_RULES), OTHER)


def stage_of(stack: str) -> str:
    for name, keys in STAGE_RULES:
        if any(k in stack for k in keys):
            return name
    return OTHER


def summarize(raw: str) -> dict[str, Any]:
    """py-spy's raw (collapsed) output -> samples and shares per stage."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, n = line.rstrip().rpartition(" ")
        if stack and n.isdigit():
            counts[stage_of(stack)] += int(n)
    total = sum(counts.values())
    return {
        "samples": total,
        "stages": {
            s: {"samples": counts[s], "share": counts[s] / total if total else 0.0}
            for s in STAGES
            if counts[s]
        },
    }


def workload(kind: str, dataset: str, out: Path) -> dict[str, Any]:
    """Run one workload in this process (what py-spy samples)."""
    from modnet_batch.model.fetch import fetch_model

    if kind == "naive":
        from modnet_batch.bench.naive import run_naive

        r = run_naive(dataset, str(fetch_model()), "seed-area", 1, out)
        return {"images": r["images"], "images_per_s": r["images_per_s"]}
    from modnet_batch.execution.driver import run_job
    from modnet_batch.options import load_job

    shutil.rmtree(out, ignore_errors=True)
    # inline: the pipeline's shard loop in one process; 1 onnxruntime thread + 1 pool thread
    job = load_job(None, {"dataset": dataset, "out": str(out), "backend": "inline", "threads": 1})
    thr = run_job(job).summary.throughput
    shutil.rmtree(out, ignore_errors=True)
    return {"images": thr.images, "images_per_s": thr.overall_images_per_s}


def record(kind: str, dataset: str, out: Path, rate: int) -> dict[str, Any]:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    raw = out / f"{kind}.raw.txt"
    result = out / f"{kind}.result.json"
    cmd = [pyspy, "record", "--rate", str(rate), "--format", "raw", "--output", str(raw)]
    cmd += ["--", sys.executable, "-m", "benchmarks.profile", "--run", kind]
    cmd += ["--dataset", dataset, "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not raw.is_file():
        raise SystemExit(f"py-spy failed for {kind}: {done.stderr.strip()[-500:]}")
    doc = summarize(raw.read_text())
    doc.update(json.loads(result.read_text()))
    doc["dataset"] = dataset
    return doc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("--dataset", help="dataset as ingested (original files)")
    parser.add_argument("--prepared", help="the same, ingested with --prepare seed-area")
    parser.add_argument("--out", type=Path, default=Path("bench/profile"))
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # inside py-spy: run one workload
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.run:
        kind = "naive" if args.run == "naive" else "job"
        res = workload(kind, args.dataset, args.out / f"{args.run}-run")
        atomic_write_json(args.out / f"{args.run}.result.json", res)
        return
    console = Console()
    made = None
    if not args.dataset:
        from benchmarks.standard import prepare_data

        made = args.out / "data"
        data = prepare_data(made, console)
        args.dataset, args.prepared = data["plain"]["path"], data["prepared"]["path"]
    runs = {"naive": args.dataset, "pipeline": args.dataset}
    if args.prepared:
        runs["pipeline-prepared"] = args.prepared
    doc: dict[str, Any] = {}
    for kind, dataset in runs.items():
        console.print(f"profiling {kind} on {dataset}", highlight=False)
        doc[kind] = record(kind, dataset, args.out, args.rate)
    write_results(args.out / "profile.json", doc)
    if made is not None:  # re-ingested on every run; the raw profiles and the JSON stay
        shutil.rmtree(made, ignore_errors=True)
    table = Table(title="share of py-spy samples per stage (1 onnxruntime thread)")
    table.add_column("stage")
    for kind in runs:
        table.add_column(f"{kind} ({doc[kind]['images_per_s']:.2f} img/s)", justify="right")
    for stage in STAGES:
        cells = [doc[k]["stages"].get(stage, {}).get("share", 0.0) for k in runs]
        if any(cells):
            table.add_row(stage, *(f"{100 * c:.1f}%" for c in cells))
    console.print(table)
    console.print(f"wrote {args.out / 'profile.json'}", highlight=False)


if __name__ == "__main__":
    main()
