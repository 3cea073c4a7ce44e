"""Storage throughput, side by side in one run: `submit` of the same dataset with the same model
from local disk to local disk, and from S3 to S3 (moto's S3 server on 127.0.0.1, in its own
process), rounds alternating, images/s as each job measured it (its processing span) and the
whole command's wall time; medians over the rounds.

    python -m benchmarks.storage SRC --out bench/storage.json [--rounds 3] [--model M]

SRC is ingested once locally; the S3 copy is that dataset's files uploaded unchanged (the same
shards). The model is local in both cases (only the dataset and run directory move). Needs
`moto[server]` (the dev extra). Loopback S3 measures the cost of the S3 API and of modnet-batch's
requests, not a network: a real bucket adds its latency and bandwidth.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.stamp import write_results
from modnet_batch.data.ingest import ingest
from modnet_batch.errors import ModnetBatchError
from modnet_batch.model.variants import resolve_model
from modnet_batch.storage import UriPath

if TYPE_CHECKING:
    from tests.s3 import S3Server


def start_s3(log: Path) -> S3Server:
    """moto's S3 server on a free loopback port, as the tests run it (tests/s3.py)."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        raise ModnetBatchError(
            "the storage bench needs moto's S3 server: pip install 'moto[server]' (in the dev "
            "extra, `make install`)"
        ) from None
    from tests.s3 import S3Server

    try:
        return S3Server(log)
    except RuntimeError as exc:
        raise ModnetBatchError(str(exc)) from None


def _submit(dataset: str, out: str, model: Path, env: dict[str, str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "modnet_batch", "submit", "--dataset", dataset, "--out", out]
    cmd += ["--model", str(model)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise ModnetBatchError(f"submit to {out} failed: {proc.stdout[-800:]}{proc.stderr[-800:]}")
    summary_text = (
        UriPath(f"{out}/summary.json").read_text()
        if out.startswith("s3://")
        else (Path(out) / "summary.json").read_text()
    )
    summary = json.loads(summary_text)
    tp = summary["throughput"]
    return {
        "images_per_s": tp["overall_images_per_s"],
        "processing_s": tp["wall_s"],
        "command_s": wall,
        "startup_s": summary["startup_seconds"],
        "images": tp["images"],
        "metrics": summary["metrics"],
    }


def run(src: Path, out: Path, rounds: int, model_spec: str | None) -> dict[str, Any]:
    model = resolve_model(model_spec)
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp_name:
        tmp = Path(tmp_name)
        server = start_s3(tmp / "moto.log")
        os.environ.update(server.env)
        env = {**os.environ}
        try:
            bucket = server.make_bucket("bench")
            local_ds = tmp / "dataset"
            ingest(src, local_ds)
            s3_ds = f"{bucket}/dataset"
            for path in sorted(p for p in local_ds.rglob("*") if p.is_file()):
                UriPath(f"{s3_ds}/{path.relative_to(local_ds).as_posix()}").upload(path)
            results: dict[str, list[dict[str, Any]]] = {"local": [], "s3": []}
            for r in range(rounds):
                order = ("local", "s3") if r % 2 == 0 else ("s3", "local")
                for mode in order:
                    if mode == "local":
                        res = _submit(str(local_ds), str(tmp / f"run-local-{r}"), model, env)
                    else:
                        res = _submit(s3_ds, f"{bucket}/run-{r}", model, env)
                    res["round"] = r
                    results[mode].append(res)
                    print(
                        f"round {r} {mode}: {res['images_per_s']:.2f} img/s, "
                        f"command {res['command_s']:.1f} s",
                        flush=True,
                    )
        finally:
            server.stop()
    same = all(r["metrics"] == results["local"][0]["metrics"] for m in results.values() for r in m)

    def median(mode: str, key: str) -> float:
        return float(statistics.median(r[key] for r in results[mode]))

    doc = {
        "what": "submit on the same dataset and model: local disk -> local disk vs S3 -> S3 "
        "(moto on 127.0.0.1), rounds alternating",
        "dataset": str(src),
        "model": str(model),
        "rounds": rounds,
        "median": {
            mode: {k: median(mode, k) for k in ("images_per_s", "processing_s", "command_s")}
            for mode in results
        },
        "metrics_equal": same,
        "runs": results,
    }
    write_results(out, doc)
    return doc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.storage", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("src", type=Path, help="source folder (image/ + matte/)")
    parser.add_argument("--out", type=Path, default=Path("bench/storage.json"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default=None, help="model (default: the reference)")
    args = parser.parse_args(argv)
    try:
        doc = run(args.src, args.out, args.rounds, args.model)
    except ModnetBatchError as exc:
        sys.exit(f"error: {exc}")
    for mode, m in doc["median"].items():
        print(
            f"{mode}: {m['images_per_s']:.2f} img/s (median), command {m['command_s']:.1f} s, "
            f"processing {m['processing_s']:.1f} s"
        )
    print(f"metrics equal: {doc['metrics_equal']}; wrote {args.out}")


if __name__ == "__main__":
    main()
