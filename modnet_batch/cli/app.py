"""The `modnet-batch` app: its commands, in the order `--help` lists them."""

from __future__ import annotations

import gc
import os
import sys
from typing import Annotated

import typer

from modnet_batch.cli import bench, data, jobs, model, report
from modnet_batch.cli.params import LiteralCommand, LiteralGroup

app = typer.Typer(
    help="Batch, distributed evaluation and matting for the MODNet portrait-matting model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=LiteralGroup,
)


def _print_version(value: bool) -> None:
    if value:
        from modnet_batch import __version__

        print(f"modnet-batch {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Batch, distributed evaluation and matting for the MODNet portrait-matting model."""


app.add_typer(model.model_app, name="model")
app.command(cls=LiteralCommand)(data.ingest)
app.command(cls=LiteralCommand)(data.verify)
app.command(cls=LiteralCommand)(model.build)
app.command(cls=LiteralCommand)(jobs.submit)
app.command(cls=LiteralCommand)(jobs.matte)
app.command(cls=LiteralCommand)(report.runs)
app.command(cls=LiteralCommand)(jobs.status)
app.command(cls=LiteralCommand)(jobs.logs)
app.command(cls=LiteralCommand)(jobs.stop)
app.command(cls=LiteralCommand)(bench.bench)
app.command(cls=LiteralCommand)(report.report)


def main() -> None:
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    _pyarrow_without_pandas()
    try:
        app()
    finally:
        # what is alive now lives until the process exits: frozen, it is spared the
        # interpreter's last garbage collections (0.1-0.2 s of every command's exit)
        gc.freeze()


class _NoPandas:
    """An import finder under which `import pandas` fails."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "pandas":
            raise ModuleNotFoundError("hidden from pyarrow's first look", name=name)


def _pyarrow_without_pandas() -> None:
    """pyarrow looks for pandas at its first conversion of Python values, and imports it when
    it is installed (0.3-0.4 s of start-up). No command hands pyarrow a pandas object (the
    package never imports pandas: an import contract), so that first look is made with pandas
    hidden. In this process pyarrow then takes a pandas object for a plain sequence until
    something asks it for pandas (`Table.to_pandas` imports pandas as ever, and pyarrow sees it
    from then on)."""
    if "pandas" in sys.modules:
        return
    import pyarrow as pa

    hide = _NoPandas()
    sys.meta_path.insert(0, hide)
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(hide)
