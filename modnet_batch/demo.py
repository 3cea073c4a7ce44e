"""`make demo`: fetch the model, make (or take) a dataset, ingest it, submit it on embedded Ray.

The demo data is synthetic (exact alpha, so the metrics are meaningful); pass `--src DIR` to run
the same steps on a real PPM-100-style folder.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
from pathlib import Path


def _run(args: list[str]) -> None:
    print("$ modnet-batch " + " ".join(args), flush=True)
    code = subprocess.call([sys.executable, "-m", "modnet_batch", *args])
    if code != 0:
        sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo"))
    parser.add_argument(
        "--src", type=Path, default=None, help="a PPM-100-style folder to use instead"
    )
    parser.add_argument("--images", type=int, default=16)
    args = parser.parse_args(argv)

    from modnet_batch.data.synthetic import make_synthetic

    args.out.mkdir(parents=True, exist_ok=True)
    _run(["model", "fetch"])
    if args.src is None:
        src = args.out / "synthetic-src"
        if not src.exists():
            print(f"making {args.images} synthetic portraits with exact alpha in {src}", flush=True)
            make_synthetic(src, n=args.images)
        dataset = args.out / "synthetic-dataset"
    else:
        src = args.src
        dataset = args.out / f"{src.resolve().name}-dataset"
    if not (dataset / "dataset.json").exists():
        _run(["ingest", str(src), str(dataset), "--shard-size", "4"])
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run = args.out / "runs" / stamp
    _run(["submit", "--dataset", str(dataset), "--out", str(run)])
    cli = Path(sys.executable).parent / "modnet-batch"
    print(
        f"\nresults: {run}/ (summary.json, metrics.parquet, alpha/*.npz)\n"
        f"the report, one HTML page: {cli} report {run} --html {run}/report.html\n"
        f"every run so far: {cli} runs {args.out}",
        flush=True,
    )


if __name__ == "__main__":
    main()
