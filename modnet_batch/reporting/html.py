"""The HTML report: one self-contained page (no network: pictures and charts are data URIs) of a
run, or of several runs compared.

A run's page: the job (dataset, model and its build, protocol, decode, devices and workers), the
metric table with what each metric means, the failed images and why, per-image distributions,
each device's timeline, and the worst and best images as panels (input, ground truth,
prediction, error map with its colour bar, cutout). A run without ground truth shows its
predictions and cutouts. A comparison adds the deltas, run-against-run scatters, and a warning
when the runs scored different datasets, images or protocols.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from modnet_batch.errors import ModnetBatchError
from modnet_batch.metrics import PER_IMAGE, ImageRow
from modnet_batch.reporting import plots
from modnet_batch.reporting.compare_page import compare_page
from modnet_batch.reporting.facts import (
    METRICS,
    RATES,
    RunView,
    job_facts,
    model_facts,
    worker_rows,
)
from modnet_batch.reporting.markup import (
    _check_metric,
    _e,
    _failed_section,
    _figures,
    _kv_table,
    _page,
    _plot,
    _table,
    _timeline_section,
    _warnings,
    _write,
)
from modnet_batch.reporting.panels import ImagePictures, pictures
from modnet_batch.reporting.table import ROW_DIGITS, TITLES, fmt
from modnet_batch.results import RunDir
from modnet_batch.storage import AnyPath

# Panels per page: the worst and the best this many images of a run (41 images would otherwise
# make a page of ~8 MB); a comparison shows this many per direction of change.
DEFAULT_PANELS = 6


def worst_images(run: AnyPath, metric: str = "mse", count: int = 10) -> list[ImageRow]:
    """The `count` scored rows with the largest `metric`, largest first."""
    _check_metric(metric)
    return _ranked(RunDir.find(run).read_rows(), metric)[:count]


def _ranked(rows: Iterable[ImageRow], metric: str) -> list[ImageRow]:
    scored = [r for r in rows if r.scored and r.metrics is not None]
    return sorted(scored, key=lambda r: (-getattr(r.metrics, metric), r.image_id))


def _metric_line(row: ImageRow) -> str:
    if row.metrics is None:
        return f"{row.width}x{row.height}" if row.width else ""
    values = ", ".join(
        f"{TITLES[k]} {fmt(getattr(row.metrics, k), ROW_DIGITS[k])}" for k in PER_IMAGE
    )
    return f"{values}; {row.width}x{row.height}"


_SINGLE = (("input", "gt"), ("prediction", "error"), ("cutout",))


def _image_section(
    title: str, rows: Sequence[ImageRow], pics: dict[str, ImagePictures], section: str
) -> str:
    parts = [f"<h2 id='{section}'>{_e(title)}</h2>"]
    if not rows:
        parts.append("<p class='muted'>none</p>")
    for row in rows:
        parts.append(
            f"<h3 class='image' data-id='{_e(row.image_id)}'>{_e(row.image_id)} "
            f"<span class='muted'>{_e(_metric_line(row))}</span></h3>"
        )
        item = pics.get(row.image_id)
        parts.append(_figures(item, _SINGLE) if item else "<p class='muted'>not in the dataset</p>")
    return "\n".join(parts)


def _metric_table(view: RunView) -> str:
    rows = [
        f"<tr><th>{_e(info.title)}</th><td class='num'>{_e(view.metric_value(key))}</td>"
        f"<td>{_e(info.meaning)}</td><td>{_e(info.direction)}</td></tr>"
        for key, info in METRICS.items()
    ]
    rows.extend(
        f"<tr><th>{info.title}</th><td class='num'>{fmt(rate, 2)}</td>"
        f"<td>{_e(info.meaning)}</td><td>{_e(info.direction)}</td></tr>"
        for info, rate in zip(RATES, view.rates, strict=True)
    )
    head = "<tr><th>metric</th><th>value</th><th>meaning</th><th>direction</th></tr>"
    return (
        f"<p id='metric-title'>{_e(view.metric_title())}</p>"
        f"<table id='metrics'>{head}{''.join(rows)}</table>"
    )


def _run_warnings(view: RunView) -> list[str]:
    s = view.summary
    lines = list(s.warnings)
    if not s.complete:
        lines.append("the job is incomplete: some shards failed every retry (see summary.json)")
    if s.images.failed:
        lines.append(
            f"{s.images.failed} of {s.images.total} images failed: the metrics are over the "
            f"{s.images.scored} scored images only"
        )
    return lines


RATE_TITLES = tuple(r.title for r in RATES)


def _job_section(view: RunView) -> str:
    workers = worker_rows(view.summary)
    return (
        f"<h2 id='job'>Job</h2>{_kv_table(job_facts(view))}"
        f"<h3>Model</h3>{_kv_table(model_facts(view.summary))}"
        f"<h3>Workers</h3>{_table(workers, numeric=('images', 'steady s', *RATE_TITLES))}"
    )


def run_page(view: RunView, metric: str = "mse", panels: int = DEFAULT_PANELS) -> str:
    """The HTML of one run's page."""
    _check_metric(metric)
    s = view.summary
    body = [
        f"<h1>modnet-batch report: {_e(view.name)}</h1>",
        f"<p class='path'>{_e(view.run.root)}</p>",
        _warnings(_run_warnings(view)),
        _job_section(view),
    ]
    if view.has_ground_truth:
        body.append(f"<h2 id='metric-section'>Metrics</h2>{_metric_table(view)}")
    else:
        body.append(
            "<h2 id='metric-section'>Metrics</h2><p id='no-gt'>No ground truth: this run "
            f"matted {s.images.unscored} image(s) without scoring them. Throughput "
            f"{view.rates_text()}.</p>"
        )
    body.append(_failed_section(view))
    if view.has_ground_truth:
        body.append("<h2 id='distributions'>Per-image distributions</h2>")
        body.append(
            _plot(plots.distributions([(view.name, view.rows, s.metrics)]), "distributions")
        )
    body.append(_timeline_section([view]))
    if view.has_ground_truth:
        ranked = _ranked(view.rows, metric)
        worst = ranked[:panels]
        taken = {r.image_id for r in worst}
        best = [r for r in reversed(ranked) if r.image_id not in taken][:panels]
        pics, notes = pictures(
            view.run, s.job.dataset, s.job.protocol, [r.image_id for r in worst + best]
        )
        body.extend(f"<p class='warn'>{_e(n)}</p>" for n in notes)
        body.append(_image_section(f"Worst {len(worst)} by {TITLES[metric]}", worst, pics, "worst"))
        body.append(_image_section(f"Best {len(best)} by {TITLES[metric]}", best, pics, "best"))
    else:
        shown = [r for r in view.rows if r.error is None][: 2 * panels]
        pics, notes = pictures(
            view.run,
            s.job.dataset,
            s.job.protocol,
            [r.image_id for r in shown],
            ground_truth=False,
        )
        body.extend(f"<p class='warn'>{_e(n)}</p>" for n in notes)
        body.append(
            _image_section(
                f"Predictions: {len(shown)} of {len(view.rows)} images", shown, pics, "predictions"
            )
        )
    return _page(f"modnet-batch report: {view.name}", body)


def write_html(
    runs: Sequence[str | AnyPath], path: Path, metric: str = "mse", panels: int = DEFAULT_PANELS
) -> Path:
    """Write the report of one run, or the comparison of several, to `path`."""
    if not runs:
        raise ModnetBatchError("no run to report on")
    views = [RunView.open(r) for r in runs]
    if len(views) == 1:
        return _write(path, run_page(views[0], metric, panels))
    return _write(path, compare_page(views, metric, max(1, panels // 2)))
