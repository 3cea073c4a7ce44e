"""`modnet-batch ingest` and `verify`: make a dataset from an image folder, check one."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from modnet_batch.cli.common import argument_help, note_skipped, one_line_errors, term
from modnet_batch.cli.params import parse, with_options
from modnet_batch.options import IngestConfig
from modnet_batch.storage import redact

if TYPE_CHECKING:
    from modnet_batch.data.ingest import IngestReport


@with_options(IngestConfig, command="ingest")
def ingest(
    src: Annotated[
        Path,
        typer.Argument(
            metavar="SRC",
            help=argument_help(
                "image/ + matte/ folder (PPM-100 layout) or a flat folder of images."
            ),
        ),
    ],
    dst: Annotated[
        str,
        typer.Argument(
            metavar="OUT",
            help=argument_help("New dataset directory: a path, or a URI (s3://...)."),
        ),
    ],
    *,
    options: dict[str, Any],
) -> None:
    """Turn an image folder into a dataset of Parquet shards.

    An interrupted ingest (Ctrl-C, a killed process) keeps its finished shards beside OUT; the
    same command continues after them.
    """
    from modnet_batch.execution.ingest_job import resume_hint, run_ingest
    from modnet_batch.reporting.live import LiveProgress

    with one_line_errors():
        config = parse(IngestConfig, options)
        live = LiveProgress(term.err, "ingest")
        seen = [0]

        def progress(done: int, total: int) -> None:
            if live.total is None:
                live.begin(total)
            live.images("ingest", done - seen[0])
            seen[0] = done

        try:
            report = run_ingest(config, src, dst, progress=progress, on_phase=live.phase)
        except KeyboardInterrupt:
            term.note(f"interrupted{resume_hint(dst)}", "red")
            raise typer.Exit(130) from None
        finally:
            live.close()
    _print_ingest(report, dst)


def _print_ingest(report: IngestReport, dst: str) -> None:
    note_skipped(report.skipped, report.ignored)
    resumed = (
        f", {report.resumed_shards} shard(s) kept from before" if report.resumed_shards else ""
    )
    term.out.print(
        f"{redact(dst)}: {report.images} images ({report.with_matte} with matte) in "
        f"{report.shards} shard(s), {len(report.skipped)} skipped, {report.seconds:.1f} s{resumed}",
        highlight=False,
        markup=False,
    )
    if report.prepared:
        term.out.print(
            f"prepared for {report.prepared}: {report.prepared_bytes / 2**20:.1f} MiB added, "
            f"{report.prepare_cpu_seconds:.1f} CPU s",
            highlight=False,
            markup=False,
        )


def verify(
    dataset: Annotated[
        str,
        typer.Argument(
            metavar="DATASET",
            help=argument_help("Dataset directory (from `ingest`): a path or a URI."),
        ),
    ],
) -> None:
    """Check a dataset fully: every shard file against the SHA-256 in dataset.json."""
    from modnet_batch.data.dataset import Dataset

    with one_line_errors():
        ds = Dataset.open(dataset)
        ds.verify()
    term.out.print(f"{ds.root}: {len(ds.shards)} shard(s), {ds.num_images} images, all intact")
