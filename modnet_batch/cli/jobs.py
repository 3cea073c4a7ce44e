"""`modnet-batch submit`, `matte`, and `status` / `logs` / `stop` of a job on a cluster."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from modnet_batch.cli.common import argument_help, note_skipped, one_line_errors, term
from modnet_batch.cli.params import parse, with_options
from modnet_batch.errors import ModnetBatchError
from modnet_batch.options import ClusterConfig, JobConfig


@with_options(JobConfig, ClusterConfig, command="submit")
def submit(
    job_file: Annotated[
        Path | None,
        typer.Argument(
            metavar="JOB.yaml",
            exists=True,
            dir_okay=False,
            help=argument_help("Job YAML; options given here override it.", "none"),
            show_default=False,
        ),
    ] = None,
    *,
    options: dict[str, Any],
) -> None:
    """Run a matting/evaluation job: embedded local Ray, or a Ray cluster with --address.

    Exit status: 0 every image has its result; 3 some work units failed every retry (run it
    again to resume); 4 some images failed (error rows in metrics.parquet); 1 the job could not
    run or stopped (a full or read-only --out); 128+N stopped by signal N (143 SIGTERM, 130
    Ctrl-C). A stopped job keeps its finished work: the same command resumes it.
    """
    from modnet_batch.options import load_job
    from modnet_batch.runner import run_and_report

    with one_line_errors():
        follow = parse(ClusterConfig, options).follow
        job = load_job(job_file, {k: v for k, v in options.items() if k != "follow"}, cli=True)
        status = run_and_report(job, term, remote=bool(job.address), follow=follow)
    if status:
        raise typer.Exit(status)


@with_options(JobConfig, command="matte")
def matte(
    src: Annotated[
        Path,
        typer.Argument(
            metavar="SRC",
            help=argument_help(
                "An image folder (searched recursively), a list file (one path per line), a "
                "dataset directory, or Parquet read in place (a .parquet file, or a folder of "
                "them and no images)."
            ),
        ),
    ],
    dst: Annotated[
        Path,
        typer.Argument(
            metavar="OUT", help=argument_help("Folder for the mattes, mirroring SRC's paths.")
        ),
    ],
    *,
    options: dict[str, Any],
) -> None:
    """Matte a folder: a source-size alpha PNG per image (or --output cutout, ...) under OUT.

    Runs like `submit` (Ray, devices, progress, resume, error rows) with no ingest step; on a
    machine of 2 cores or fewer, with no --backend, --address or --workers, it runs in this
    process (no Ray start-up). The job's state lives in OUT/.modnet-batch, so the same command
    resumes. The network sees each
    photo at MODNet's own inference size (--protocol paper) unless --protocol says otherwise.
    Exit status as `submit`, and 4 when some files could not be read.
    """
    from modnet_batch.execution.driver import EXIT_IMAGES_FAILED
    from modnet_batch.execution.matte_job import plan_matte
    from modnet_batch.runner import matte_ending, run_and_report

    with one_line_errors():
        plan = plan_matte(src, dst, options)
        if plan.resumed:
            term.note(f"resuming the files listed by the first run in {plan.listing}")
        note_skipped(plan.skipped_files, plan.ignored)
        ending = matte_ending(plan)
        status = run_and_report(plan.job, term, what="matte", ending=ending)
    if status or plan.skipped:
        raise typer.Exit(status or EXIT_IMAGES_FAILED)


JobId = Annotated[str, typer.Argument(metavar="JOB_ID", help="The id `submit` printed.")]


@with_options(ClusterConfig, command="status")
def status(job_id: JobId, *, options: dict[str, Any]) -> None:
    """Print the status of a job submitted with --address."""
    from modnet_batch.execution.jobs import job_status

    with one_line_errors():
        address = _address(options)
        term.out.print(job_status(address, job_id), markup=False)


@with_options(ClusterConfig, command="logs")
def logs(job_id: JobId, *, options: dict[str, Any]) -> None:
    """Print the logs of a job submitted with --address."""
    from modnet_batch.execution.jobs import follow_logs, job_logs

    with one_line_errors():
        address = _address(options)
        if parse(ClusterConfig, options).follow:
            follow_logs(address, job_id)
        else:
            sys.stdout.write(job_logs(address, job_id))


@with_options(ClusterConfig, command="stop")
def stop(job_id: JobId, *, options: dict[str, Any]) -> None:
    """Stop a job submitted with --address."""
    from modnet_batch.execution.jobs import stop_job

    with one_line_errors():
        stopped = stop_job(_address(options), job_id)
    term.out.print(f"{job_id}: {'stop requested' if stopped else 'already finished'}")


def _address(options: dict[str, Any]) -> str:
    address = parse(ClusterConfig, options).address
    if not address:
        raise ModnetBatchError(
            "no cluster address; pass --address http://HEAD:8265 or set RAY_ADDRESS"
        )
    return address
