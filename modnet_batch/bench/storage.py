"""Storage throughput, side by side in one run: `submit` of the same dataset with the same model
from local disk to local disk, and from S3 to S3 (moto's S3 server on 127.0.0.1, in its own
process), rounds alternating, images/s as each job measured it (its processing span) and the
whole command's wall time; medians over the rounds.

    python -m modnet_batch.bench.storage SRC --out bench/storage.json [--rounds 3] [--model M]

SRC is ingested once locally; the S3 copy is that dataset's files uploaded unchanged (the same
shards). The model is local in both cases (only the dataset and run directory move). Needs
`moto[server]` (the dev extra). Loopback S3 measures the cost of the S3 API and of modnet-batch's
requests, not a network: a real bucket adds its latency and bandwidth.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from modnet_batch.bench.environment import environment
from modnet_batch.data.ingest import ingest
from modnet_batch.errors import ModnetBatchError
from modnet_batch.model.variants import resolve_model
from modnet_batch.storage import UriPath

ACCESS_KEY, SECRET_KEY, REGION = "bench-key", "bench-secret", "us-east-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """moto's S3 server on a free loopback port; (process, endpoint)."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        raise ModnetBatchError(
            "the storage bench needs moto's S3 server: pip install 'moto[server]' (in the dev "
            "extra, `make install`)"
        ) from None
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
            return proc, endpoint
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise ModnetBatchError(f"moto's S3 server did not start (see {log})") from None
            time.sleep(0.2)


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
        proc, endpoint = start_moto(tmp / "moto.log")
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        os.environ.update({k: env[k] for k in env if k.startswith("AWS_")})
        try:
            import pyarrow.fs as pafs

            pafs.S3FileSystem(
                access_key=ACCESS_KEY,
                secret_key=SECRET_KEY,
                region=REGION,
                endpoint_override=endpoint.removeprefix("http://"),
                scheme="http",
                allow_bucket_creation=True,
            ).create_dir("bench")
            local_ds = tmp / "dataset"
            ingest(src, local_ds)
            s3_ds = "s3://bench/dataset"
            for path in sorted(p for p in local_ds.rglob("*") if p.is_file()):
                UriPath(f"{s3_ds}/{path.relative_to(local_ds).as_posix()}").upload(path)
            results: dict[str, list[dict[str, Any]]] = {"local": [], "s3": []}
            for r in range(rounds):
                order = ("local", "s3") if r % 2 == 0 else ("s3", "local")
                for mode in order:
                    if mode == "local":
                        res = _submit(str(local_ds), str(tmp / f"run-local-{r}"), model, env)
                    else:
                        res = _submit(s3_ds, f"s3://bench/run-{r}", model, env)
                    res["round"] = r
                    results[mode].append(res)
                    print(
                        f"round {r} {mode}: {res['images_per_s']:.2f} img/s, "
                        f"command {res['command_s']:.1f} s",
                        flush=True,
                    )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
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
        "environment": environment(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="source folder (image/ + matte/)")
    parser.add_argument("--out", type=Path, default=Path("bench/storage.json"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default=None, help="model (default: the reference)")
    args = parser.parse_args()
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
