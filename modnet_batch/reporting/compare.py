"""Compare runs side by side: precision, the metrics, steady and overall img/s."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from modnet_batch.metrics import DATASET
from modnet_batch.reporting.table import COMPARE_DIGITS, TITLES, fmt
from modnet_batch.results import RunDir
from modnet_batch.results.throughput import OVERALL, STEADY
from modnet_batch.storage import AnyPath, location


def compare_runs(runs: Sequence[str | AnyPath], console: Console) -> Table:
    table = Table(title="runs")
    titles = (*(TITLES[k] for k in DATASET), STEADY, OVERALL)
    for col in ("run", "precision", "protocol", "images", *titles):
        table.add_column(col, justify="right")
    for run in runs:
        s = RunDir.find(run).read_summary()
        table.add_row(
            location(run).name,
            str(s.job.variant.get("precision", "?")),
            s.job.protocol,
            str(s.images.scored),
            *[fmt(s.metrics.get(k), COMPARE_DIGITS[k]) for k in DATASET],
            fmt(s.throughput.steady_images_per_s, 2),
            fmt(s.throughput.overall_images_per_s, 2),
        )
    console.print(table)
    return table
