"""The run report: the worst images by a metric, with visual panels, in one self-contained page.

Each panel shows the input at the scoring resolution, the ground truth, the prediction and the
absolute error, read back from the dataset and `alpha/<image_id>.npz`; nothing is recomputed.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from modnet_batch.data.dataset import Dataset
from modnet_batch.errors import ModnetBatchError
from modnet_batch.metrics import PER_IMAGE, ImageRow
from modnet_batch.pipeline import ImagePipeline
from modnet_batch.results import RunDir, Summary

PANEL_HEIGHT = 240


def worst_images(run: Path, metric: str = "mse", count: int = 10) -> list[ImageRow]:
    """The `count` scored rows with the largest `metric`, largest first."""
    if metric not in PER_IMAGE:
        raise ModnetBatchError(
            f"metrics.parquet has no column {metric!r}; use {', '.join(PER_IMAGE)}"
        )
    scored = [r for r in RunDir(run).read_rows() if r.metrics is not None]
    return sorted(scored, key=lambda r: (-getattr(r.metrics, metric), r.image_id))[:count]


def _png(image: npt.NDArray[np.uint8]) -> str:
    scale = PANEL_HEIGHT / image.shape[0]
    small = cv2.resize(
        image, (max(1, round(image.shape[1] * scale)), PANEL_HEIGHT), interpolation=cv2.INTER_AREA
    )
    if small.ndim == 3:
        small = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", small)
    if not ok:
        raise ModnetBatchError("could not encode a report panel as PNG")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()


def _panels(
    run: RunDir, dataset: Dataset, protocol_name: str, ids: set[str]
) -> dict[str, list[str]]:
    pipeline = ImagePipeline(protocol_name)  # exact decode: what the eye should judge
    panels: dict[str, list[str]] = {}
    for record in dataset.records():
        if record.image_id not in ids or record.matte is None:
            continue
        if not run.alpha_path(record.image_id).is_file():
            continue  # the job wrote no npz (--output without it): the table still shows it
        pred: npt.NDArray[np.uint8] = run.read_alpha(record.image_id)
        decoded = pipeline.decode(record)
        assert decoded.matte is not None  # the record has a matte
        gt8 = np.rint(pipeline.ground_truth(decoded.matte) * 255).astype(np.uint8)
        h, w = pred.shape
        shown = cv2.resize(decoded.rgb, (w, h), interpolation=cv2.INTER_AREA).astype(np.uint8)
        error = np.abs(pred.astype(np.int16) - gt8.astype(np.int16)).astype(np.uint8)
        heat = np.asarray(
            cv2.cvtColor(cv2.applyColorMap(error, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB),
            dtype=np.uint8,
        )
        panels[record.image_id] = [_png(shown), _png(gt8), _png(pred), _png(heat)]
    return panels


def write_html(run: Path, summary: Summary, metric: str = "mse", count: int = 10) -> Path:
    """Write `run/report.html`: the summary numbers and the `count` worst images by `metric`."""
    worst = worst_images(run, metric, count)
    dataset = Dataset.open(summary.job.dataset)
    panels = _panels(RunDir(run), dataset, summary.job.protocol, {r.image_id for r in worst})
    metrics = summary.metrics
    head = "".join(f"<th>{html.escape(k)}</th>" for k in metrics)
    vals = "".join(f"<td>{'-' if v is None else f'{v:.6g}'}</td>" for v in metrics.values())
    parts = [
        "<!doctype html><meta charset='utf-8'><title>modnet-batch report</title>",
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;text-align:right}"
        "img{margin:2px;border:1px solid #ccc}</style>",
        f"<h1>{html.escape(run.name)}</h1>",
        f"<p>{html.escape(summary.job.protocol)} on {html.escape(summary.job.dataset)}"
        f" &mdash; {summary.images.scored} scored, {summary.images.failed} failed,"
        f" {summary.throughput['images_per_s']:.2f} images/s</p>",
        f"<table><tr>{head}</tr><tr>{vals}</tr></table>",
        f"<h2>Worst {len(worst)} by {html.escape(metric)}</h2>",
        "<p>input &middot; ground truth &middot; prediction &middot; |error|</p>",
    ]
    for row in worst:
        images = "".join(f"<img src='{src}'>" for src in panels.get(row.image_id, []))
        value = getattr(row.metrics, metric)
        title = f"{html.escape(row.image_id)}: {metric} {value:.6g}"
        parts.append(f"<h3>{title}</h3><div>{images}</div>")
    path = run / "report.html"
    path.write_text("\n".join(parts))
    return path
