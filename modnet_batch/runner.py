"""Run a job and tell the user how it went: here (embedded Ray, inline, or joined to the cluster
the job runs on) or sent to a cluster's Jobs API, with live progress and the closing lines.

The command line (`submit`, `matte`) and the entrypoint of a job on a cluster share it, so a job
prints the same lines wherever it runs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape

from modnet_batch.errors import JobInterrupted
from modnet_batch.execution.driver import EXIT_INCOMPLETE, JobOutcome, run_job
from modnet_batch.execution.matte_job import MattePlan
from modnet_batch.execution.plan import JobPlan
from modnet_batch.options import JobConfig
from modnet_batch.reporting.live import LiveProgress
from modnet_batch.reporting.table import print_failures, print_summary
from modnet_batch.results import RunDir, UnitResult
from modnet_batch.storage import redact

# What a job prints at its end: the summary table by default (`matte` prints its own lines).
Ending = Callable[[JobOutcome, "Terminal"], None]


@dataclass(frozen=True)
class Terminal:
    """Where a command writes: `out` its results (stdout), `err` its progress and notes."""

    out: Console
    err: Console

    @classmethod
    def for_commands(cls) -> Terminal:
        # Lines are never wrapped (an error stays one line, a path stays copyable); tables get
        # room when the output is a file or a pipe rather than a terminal.
        width = None if sys.stdout.isatty() else 160
        return cls(
            out=Console(soft_wrap=True, width=width), err=Console(stderr=True, soft_wrap=True)
        )

    @classmethod
    def for_job_logs(cls) -> Terminal:
        """A job on a cluster: its logs are read later in a terminal of any width."""
        console = Console(width=160, soft_wrap=True)
        return cls(out=console, err=console)

    def note(self, text: str, style: str = "") -> None:
        """One line to stderr, printed as given (a path with brackets stays a path)."""
        shown = f"[{style}]{escape(text)}[/{style}]" if style else escape(text)
        self.err.print(shown, highlight=False)

    def error(self, exc: Exception) -> None:
        """A library error as the command's one line, without credentials, and the notes
        added to it on the way (where the logs are)."""
        self.err.print(f"[red]error:[/red] {escape(redact(str(exc)))}", highlight=False)
        for note in getattr(exc, "__notes__", []):
            self.err.print(escape(redact(str(note))), highlight=False)


def run_and_report(
    job: JobConfig,
    term: Terminal,
    *,
    what: str = "submit",
    remote: bool = False,
    follow: bool = False,
    ending: Ending | None = None,
) -> int:
    """Run `job` and return its exit status (driver.EXIT_*, 128+N when stopped by signal N).

    `remote`: send it to the Jobs API at `job.address` and print its id (`follow`: stream its
    logs until it ends). Else run it from this process with live progress, then `ending` (the
    summary table by default). Library errors propagate as ModnetBatchError."""
    if remote:
        return _submit_remote(job, term, follow)
    try:
        outcome = _run_here(job, term, what)
    except JobInterrupted as exc:
        term.note(str(exc), "yellow")
        return 128 + exc.signum
    (ending or _summary_ending)(outcome, term)
    if outcome.exit_status == EXIT_INCOMPLETE:
        term.err.print(
            "[red]job incomplete:[/red] some work units failed every retry (see summary.json); "
            "run the same command again to resume",
            highlight=False,
        )
    return outcome.exit_status


def _run_here(job: JobConfig, term: Terminal, what: str) -> JobOutcome:
    from modnet_batch.execution.signals import stop_on_signals

    live = LiveProgress(
        term.err, what, first_step="checking the job (dataset, model, run directory)"
    )
    shown: list[str] = []

    def on_plan(plan: JobPlan) -> None:
        for warning in plan.warnings:
            term.note(f"warning: {warning}", "yellow")
        shown.extend(plan.warnings)
        total = sum(t.rows for t in plan.tasks)
        live.begin(total, f"{what} (resumed)" if plan.resumed else what)
        if not plan.tasks:
            live.phase("nothing left to run: every work unit is finished")

    def on_unit(result: UnitResult) -> None:
        live.failed(result.failed)

    try:
        with stop_on_signals():  # `modnet-batch stop` sends SIGTERM; Ctrl-C sends SIGINT
            outcome = run_job(
                job, on_images=live.images, on_plan=on_plan, on_phase=live.phase, on_unit=on_unit
            )
    except BaseException:
        live.close()
        raise
    live.close(outcome.summary.throughput)  # the last line shows the figures the summary records
    for warning in outcome.warnings[len(shown) :]:  # found while running (the decode check)
        term.note(f"warning: {warning}", "yellow")
    startup = live.startup_text()
    if startup:
        term.note(startup)
    if outcome.logs:
        term.note(outcome.logs)
    return outcome


def _summary_ending(outcome: JobOutcome, term: Terminal) -> None:
    """`submit`'s closing lines: the summary table, and images per node on a cluster."""
    print_summary(outcome.summary, outcome.run_dir, term.out)
    if outcome.summary.job.address:
        for node, share in outcome.summary.throughput.per_node.items():
            term.out.print(f"node {node}: {share.images} images", highlight=False)


def _submit_remote(job: JobConfig, term: Terminal, follow: bool) -> int:
    from modnet_batch.execution.jobs import follow_logs, job_exit_code, submit_job

    job_id = submit_job(job)  # a job without an address is refused there
    address = str(job.address)
    term.out.print(job_id, highlight=False, markup=False)
    term.note(f"submitted to {address}; `modnet-batch status {job_id}` / `logs` / `stop`")
    if not follow:
        return 0
    status = follow_logs(address, job_id)
    code = job_exit_code(address, job_id) if status in ("SUCCEEDED", "FAILED") else None
    term.note(f"job {job_id}: {status}" + (f" (exit {code})" if code else ""))
    if status == "SUCCEEDED":
        return 0
    # the job's own status (3 units failed, 4 images failed, 1 could not run ...)
    return code if code else (EXIT_INCOMPLETE if status == "FAILED" else 1)


def matte_ending(plan: MattePlan) -> Ending:
    """`matte`'s closing lines (print_matte_summary) for the job `plan` made."""

    def ending(outcome: JobOutcome, term: Terminal) -> None:
        print_matte_summary(outcome, plan, term)

    return ending


def print_matte_summary(outcome: JobOutcome, plan: MattePlan, term: Terminal) -> None:
    """What a matting user wants to know: how many mattes, where, how fast, what was skipped
    or failed and why. The throughput terms are the summary's (results.summary)."""
    summary, out = outcome.summary, term.out
    images = summary.images
    kinds = RunDir(outcome.run_dir).output_spec().files
    where = f"into {plan.job.output_dir}" if kinds else f"as npz in {outcome.run_dir}/alpha"
    what = ", ".join(k.value for k in kinds) + (": a folder per kind" if len(kinds) > 1 else "")
    done = images.total - images.failed
    out.print(
        f"{done} of {images.total} images matted {where}" + (f" ({what})" if what else ""),
        markup=False,
    )
    rate = summary.throughput
    if summary.units.processed:
        steady = rate.steady_images_per_s
        out.print(
            f"{rate.images} images in {rate.wall_s:.1f} s: "
            f"{rate.overall_images_per_s:.2f} overall img/s (start-up included)"
            + (f", {steady:.2f} steady img/s" if steady else ""),
            markup=False,
        )
    else:
        out.print("nothing was left to matte: an earlier run did it all", markup=False)
    if plan.skipped:
        out.print(
            f"{plan.skipped} file(s) skipped: listed above, and in {plan.listing}/dataset.json",
            markup=False,
        )
    if images.failed:
        print_failures(summary, outcome.run_dir, out)
    out.print(
        f"details: {outcome.run_dir}/summary.json; the report: modnet-batch report "
        f"{plan.job.output_dir}",
        markup=False,
    )
