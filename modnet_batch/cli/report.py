"""`modnet-batch runs` and `report`: list run directories, report one run or compare several."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from modnet_batch.cli.common import argument_help, one_line_errors, term
from modnet_batch.cli.params import parse, with_options
from modnet_batch.errors import ModnetBatchError
from modnet_batch.options import ReportConfig
from modnet_batch.storage import location, redact

if TYPE_CHECKING:
    from modnet_batch.results.listing import RunState


def runs(
    folder: Annotated[
        str,
        typer.Argument(
            metavar="DIR",
            help=argument_help(
                "Where to look for run directories and `matte` OUT folders (3 levels down): a "
                "path or a URI.",
                ".",
            ),
            show_default=False,
        ),
    ] = ".",
) -> None:
    """List the runs under DIR: state (complete, failed, partial) and headline metrics."""
    from modnet_batch.results.listing import list_runs

    top = location(folder)
    with one_line_errors():
        if not top.is_dir():
            raise ModnetBatchError(f"{top} is not a folder; pass the folder holding runs")
        found = list_runs(top)
    if not found:
        term.note(f"no runs under {top} (a run directory holds job.yaml and state/)")
        return
    term.out.print(runs_table(found))
    for r in found:
        if r.detail:
            term.note(f"{r.path}: {r.detail}")


def runs_table(found: list[RunState]) -> Table:
    """One row per run: its state and headline figures."""
    table = Table(
        "run",
        "state",
        "protocol",
        "model",
        "images",
        "MSE",
        "MAD",
        "mIoU",
        "img/s",
        caption="img/s: overall img/s, start-up included",
    )
    colour = {"complete": "green", "failed": "red", "partial": "yellow"}
    for r in found:
        metric = r.metrics.get
        table.add_row(
            escape(str(r.path)),
            f"[{colour[r.state]}]{r.state}[/]",
            escape(r.protocol),
            escape(Path(r.model).name if "/" in r.model else r.model),
            _images(r),
            f"{metric('mse'):.6f}" if metric("mse") is not None else "",
            f"{metric('mad'):.6f}" if metric("mad") is not None else "",
            f"{metric('miou'):.4f}" if metric("miou") is not None else "",
            f"{r.images_per_s:.2f}" if r.images_per_s else "",
        )
    return table


def _images(r: RunState) -> str:
    if r.images is None:
        return ""
    text = f"{r.scored}/{r.images} scored" if r.scored else f"{r.images} unscored"
    return text + (f", {r.failed} failed" if r.failed else "")


@with_options(ReportConfig, command="report")
def report(
    paths: Annotated[
        list[str],
        typer.Argument(
            metavar="RUN",
            help=argument_help("Run directories or `matte` OUT folders: paths or URIs (s3://...)."),
        ),
    ],
    *,
    options: dict[str, Any],
) -> None:
    """Summary of one run (worst images, optional HTML), or the comparison table of several."""
    from modnet_batch.reporting.compare import compare_runs
    from modnet_batch.reporting.html import worst_images, write_html
    from modnet_batch.reporting.table import print_summary, worst_table
    from modnet_batch.results import RunDir

    with one_line_errors():
        config = parse(ReportConfig, options)
        if config.html is not None and Path(config.html).is_dir():
            raise ModnetBatchError(f"--html {config.html} is a folder; pass a file name")
        for run_path in paths:
            if not location(run_path).is_dir():
                raise ModnetBatchError(
                    f"{redact(run_path)} is not a folder; pass a run directory or a `matte` OUT "
                    "folder"
                )
        if len(paths) > 1:
            compare_runs(paths, term.out)
        else:
            run = RunDir.find(paths[0])
            summary = run.read_summary()
            print_summary(summary, run.root, term.out)
            if summary.images.scored:
                worst = worst_images(run.root, config.metric, config.worst)
                term.out.print(worst_table(worst, config.metric))
        if config.html is not None:
            page = write_html(paths, Path(config.html), config.metric, config.panels)
            size = page.stat().st_size / 2**20
            term.out.print(f"wrote {page} ({size:.1f} MiB)", highlight=False, markup=False)
