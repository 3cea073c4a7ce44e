"""Compare runs side by side: precision, MSE, MAD, SAD, Grad, Conn, mIoU, images/s."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from modnet_batch.errors import ModnetBatchError


def load_summary(run: Path) -> dict[str, Any]:
    path = run / "summary.json"
    if not path.exists():
        raise ModnetBatchError(f"{run} has no summary.json; is it a finished run directory?")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def compare_runs(runs: list[Path], console: Console) -> Table:
    table = Table(title="runs")
    for col in (
        "run",
        "precision",
        "protocol",
        "images",
        "MSE",
        "MAD",
        "SAD",
        "Grad",
        "Conn",
        "mIoU",
        "img/s",
    ):
        table.add_column(col, justify="right")
    for run in runs:
        s = load_summary(run)
        m = s["metrics"]
        variant = s["job"].get("variant") or {}

        def f(key: str, digits: int, m: dict[str, Any] = m) -> str:
            v = m.get(key)
            return "-" if v is None else f"{v:.{digits}f}"

        table.add_row(
            run.name,
            str(variant.get("precision", "?")),
            s["job"]["protocol"],
            str(s["images"]["scored"]),
            f("mse", 5),
            f("mad", 5),
            f("sad", 3),
            f("grad", 3),
            f("conn", 3),
            f("miou", 4),
            f"{s['throughput']['images_per_s']:.2f}",
        )
    console.print(table)
    return table
