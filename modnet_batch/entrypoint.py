"""The entrypoint of a job submitted through the Ray Jobs API: run the driver on this cluster.

`python -m modnet_batch.entrypoint job.yaml`; exit 0 = every image has its result, 3 = some
shards failed every retry, 4 = some images failed (error rows), 1 = the job could not run (the
reason is the last line of the job's logs), 128+N = stopped by signal N (finished shards kept).
"""

from __future__ import annotations

import sys

from rich.console import Console

from modnet_batch.errors import JobInterrupted, ModnetBatchError
from modnet_batch.execution.driver import run_job
from modnet_batch.execution.signals import stop_on_signals
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
        with stop_on_signals():  # `modnet-batch stop` sends SIGTERM
            outcome = run_job(job)
    except JobInterrupted as exc:
        console.print(str(exc), highlight=False, markup=False)
        return 128 + exc.signum
    except ModnetBatchError as exc:
        console.print(f"error: {exc}", highlight=False, markup=False)
        return 1
    print_summary(outcome.summary, outcome.run_dir, console)
    for node, share in outcome.summary.throughput.per_node.items():
        console.print(f"node {node}: {share.images} images", highlight=False)
    for warning in outcome.warnings:
        console.print(f"warning: {warning}", highlight=False, markup=False)
    return outcome.exit_status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
