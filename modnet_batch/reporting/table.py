"""The summary table a run prints, and a short line per device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from modnet_batch.errors import ModnetBatchError
from modnet_batch.metrics import DATASET, PER_IMAGE, ImageRow
from modnet_batch.results import RunDir, Summary
from modnet_batch.results.throughput import OVERALL, STEADY
from modnet_batch.storage import AnyPath

# How each metric is titled in every table.
TITLES = {"mse": "MSE", "mad": "MAD", "sad": "SAD", "grad": "Grad", "conn": "Conn", "miou": "mIoU"}
# Digits shown in the summary table (dataset means) and in per-image tables.
DIGITS = {"mse": 6, "mad": 6, "sad": 4, "grad": 4, "conn": 4, "miou": 4}
ROW_DIGITS = {"mse": 6, "mad": 6, "sad": 3, "grad": 3, "conn": 3}
COMPARE_DIGITS = {
    "mse": 5,
    "mad": 5,
    "sad": 3,
    "grad": 3,
    "conn": 3,
    "miou": 4,
}  # runs side by side


def fmt(value: Any, digits: int = 5) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def summary_table(summary: Summary, title: str = "") -> Table:
    images = summary.images
    job = summary.job
    if not title:
        title = f"{job.protocol} on {Path(job.dataset).name}"
        if images.failed:  # a mean over the survivors must never pass for the dataset's
            title += (
                f": metrics over {images.scored} of {images.total} images, {images.failed} failed"
            )
    table = Table(title=title)
    columns = ("images", "scored", "failed", *(TITLES[k] for k in DATASET), STEADY, OVERALL)
    for col in columns:
        table.add_column(col, justify="right")
    m = summary.metrics
    rates = summary.throughput
    table.add_row(
        str(images.total),
        str(images.scored),
        str(images.failed),
        *[fmt(m.get(k), DIGITS[k]) for k in DATASET],
        fmt(rates.steady_images_per_s, 2),
        fmt(rates.overall_images_per_s, 2),
    )
    return table


def device_table(summary: Summary) -> Table:
    """Each device's images, steady seconds and both rates (results.throughput)."""
    table = Table(title="per device")
    for col in ("device", "images", "steady s", STEADY, OVERALL):
        table.add_column(col, justify="right")
    rates = summary.throughput
    for label, share in rates.per_device.items():
        table.add_row(
            label,
            str(share.images),
            fmt(share.steady_s, 1),
            fmt(share.steady_images_per_s, 2),
            fmt(rates.overall_of(share), 2),
        )
    return table


def print_summary(summary: Summary, run_dir: AnyPath, console: Console | None = None) -> None:
    console = console or Console()
    console.print(summary_table(summary))
    if summary.throughput.per_device:
        console.print(device_table(summary))
    units = summary.units
    console.print(
        f"run dir {run_dir}: {units.processed} work unit(s) processed, "
        f"{units.skipped_done} already done, {len(units.failed)} failed; "
        f"wall {summary.throughput.wall_s:.1f} s (start-up included)"
    )
    # how the numbers were made: exact or reduced decode
    batch = str(summary.job.batch_size)
    if not summary.job.batch_size:  # measured by each device's actor
        sizes = sorted({int(w["batch_size"]) for w in summary.workers if w.get("batch_size")})
        batch = "measured per device: " + (", ".join(map(str, sizes)) or "none")
    console.print(f"decode: {summary.job.decode}; batch size {batch}")
    if summary.decoding:  # --decoding device: what decoded where
        d = summary.decoding
        why = ", ".join(f"{n} {reason}" for reason, n in d["fallback"].items())
        console.print(
            f"decoded on the device: {d['device']} ({', '.join(d['decoders']) or 'no decoder'}); "
            f"on the CPU: {d['cpu']}" + (f" ({why})" if why else "")
        )
    if summary.images.retried:
        console.print(f"retried {summary.images.retried} image(s) that an earlier attempt lost")
    if summary.images.failed:
        print_failures(summary, run_dir, console)


def print_failures(summary: Summary, run_dir: AnyPath, console: Console, shown: int = 5) -> None:
    """How many images failed, whether a resume can help, and the first few reasons."""
    images = summary.images
    again = (
        f"{images.transient} may pass on a retry (I/O, a lost worker): run the same "
        "command again to retry them"
        if images.transient
        else "none would pass on a retry"
    )
    console.print(
        f"[red]{images.failed} of {images.total} images failed[/red]; {again}", highlight=False
    )
    try:
        failed = [r for r in RunDir(run_dir).read_rows() if r.error is not None]
    except (OSError, ModnetBatchError):
        return  # the counts above stand; the table could not be read back
    for row in failed[:shown]:
        console.print(f"  {row.image_id}: {row.error}", highlight=False, markup=False)
    if len(failed) > shown:
        console.print(
            f"  ... and {len(failed) - shown} more: {RunDir(run_dir).metrics} (column `error`)",
            highlight=False,
            markup=False,
        )


def worst_table(rows: list[ImageRow], metric: str) -> Table:
    table = Table(title=f"worst {len(rows)} by {metric}")
    for col in ("image", *(TITLES[k] for k in PER_IMAGE)):
        table.add_column(col, justify="right")
    for r in rows:
        m = r.metrics
        table.add_row(
            r.image_id,
            *[fmt(None if m is None else getattr(m, k), ROW_DIGITS[k]) for k in PER_IMAGE],
        )
    return table
