"""The entrypoint of a job submitted through the Ray Jobs API: run the driver on this cluster.

`python -m modnet_batch.entrypoint job.yaml`; exit 0 = every image has its result, 3 = some
work units failed every retry, 4 = some images failed (error rows), 1 = the job could not run
(the reason is the last line of the job's logs), 128+N = stopped by signal N (finished work
kept).
"""

from __future__ import annotations

import sys

from modnet_batch.errors import ModnetBatchError
from modnet_batch.options import load_job
from modnet_batch.runner import Terminal, run_and_report


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m modnet_batch.entrypoint JOB.yaml", file=sys.stderr)
        return 2
    term = Terminal.for_job_logs()
    try:
        return run_and_report(load_job(argv[0]), term)
    except ModnetBatchError as exc:
        term.error(exc)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
