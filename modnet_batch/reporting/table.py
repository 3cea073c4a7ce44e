"""The summary table a run prints, and a short line per device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

METRICS = ("mse", "mad", "sad", "grad", "conn", "miou")


def _fmt(value: Any, digits: int = 5) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def summary_table(summary: dict[str, Any], title: str = "") -> Table:
    images = summary["images"]
    thr = summary["throughput"]
    job = summary.get("job", {})
    table = Table(
        title=title or f"{job.get('protocol', '')} on {Path(job.get('dataset', '')).name}"
    )
    for col in (
        "images",
        "scored",
        "failed",
        *("MSE", "MAD", "SAD", "Grad", "Conn", "mIoU"),
        "img/s",
    ):
        table.add_column(col, justify="right")
    m = summary["metrics"]
    table.add_row(
        str(images["total"]),
        str(images["scored"]),
        str(images["failed"]),
        *[_fmt(m.get(k), 6 if k in {"mse", "mad"} else 4) for k in METRICS],
        _fmt(thr.get("images_per_s"), 2),
    )
    return table


def device_table(summary: dict[str, Any]) -> Table:
    table = Table(title="per device")
    for col in ("device", "images", "busy s", "img/s"):
        table.add_column(col, justify="right")
    for label, entry in summary["throughput"]["per_device"].items():
        table.add_row(
            label, str(entry["images"]), _fmt(entry["seconds"], 1), _fmt(entry["images_per_s"], 2)
        )
    return table


def print_summary(summary: dict[str, Any], run_dir: Path, console: Console | None = None) -> None:
    console = console or Console()
    console.print(summary_table(summary))
    if summary["throughput"]["per_device"]:
        console.print(device_table(summary))
    shards = summary["shards"]
    console.print(
        f"run dir {run_dir}: {shards['processed']} shard(s) processed, "
        f"{shards['skipped_done']} already done, {len(shards['failed'])} failed; "
        f"wall {summary['throughput']['wall_s']:.1f} s"
    )
    job = summary.get("job", {})
    if "decode" in job:  # how the numbers were made: exact or reduced decode
        console.print(f"decode: {job['decode']}; batch size {job.get('batch_size')}")


def worst_table(rows: list[dict[str, Any]], metric: str) -> Table:
    table = Table(title=f"worst {len(rows)} by {metric}")
    for col in ("image", "MSE", "MAD", "SAD", "Grad", "Conn"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["image_id"],
            _fmt(r["mse"], 6),
            _fmt(r["mad"], 6),
            _fmt(r["sad"], 3),
            _fmt(r["grad"], 3),
            _fmt(r["conn"], 3),
        )
    return table
