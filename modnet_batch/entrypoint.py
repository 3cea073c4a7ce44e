"""The entrypoint of a job submitted through the Ray Jobs API: run the driver on this cluster.

`python -m modnet_batch.entrypoint job.yaml`; exit 0 = complete, 3 = some shards failed,
1 = the job could not run (the reason is the last line of the job's logs).
"""

from __future__ import annotations

import sys

from rich.console import Console

from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution.driver import run_job
from modnet_batch.options import load_job
from modnet_batch.reporting.table import print_summary


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m modnet_batch.entrypoint JOB.yaml", file=sys.stderr)
        return 2
    # job logs are read later in a terminal of any width; rich would cut the tables at 80 columns
    console = Console(width=160, soft_wrap=True)
    try:
        job = load_job(argv[0])
        outcome = run_job(job)
    except ModnetBatchError as exc:
        console.print(f"error: {exc}", highlight=False, markup=False)
        return 1
    print_summary(outcome.summary, outcome.run_dir, console)
    for node, entry in outcome.summary.throughput["per_node"].items():
        console.print(f"node {node}: {entry['images']} images", highlight=False)
    for warning in outcome.warnings:
        console.print(f"warning: {warning}", highlight=False, markup=False)
    return 0 if outcome.complete else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
