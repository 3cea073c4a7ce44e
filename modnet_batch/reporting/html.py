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

import html
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from modnet_batch.errors import ModnetBatchError
from modnet_batch.metrics import DATASET, PER_IMAGE, ImageRow
from modnet_batch.reporting import plots
from modnet_batch.reporting.facts import (
    METRICS,
    RATES,
    RunView,
    job_facts,
    model_facts,
    worker_rows,
)
from modnet_batch.reporting.panels import ImagePictures, pictures
from modnet_batch.reporting.table import COMPARE_DIGITS, ROW_DIGITS, TITLES, fmt
from modnet_batch.results import RunDir, atomic_write_bytes
from modnet_batch.storage import AnyPath

# Panels per page: the worst and the best this many images of a run (41 images would otherwise
# make a page of ~8 MB); a comparison shows this many per direction of change.
DEFAULT_PANELS = 6
FAILED_SHOWN = 500  # failed images listed with their reasons; the rest are counted

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em 2em;color:#222;max-width:2200px}
h1{font-size:1.5em;margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:1px solid #ccc}
h3{font-size:1em;margin:1.2em 0 .3em}
table{border-collapse:collapse;margin:.4em 0}
td,th{padding:3px 10px;border-bottom:1px solid #e4e4e4;vertical-align:top}
th{text-align:left;background:#f4f4f4} td.num{text-align:right;
font-variant-numeric:tabular-nums} .muted{color:#777} .path{font-family:monospace;font-size:.9em}
.warn{background:#fff3cd;border:2px solid #d39e00;padding:.6em 1em;margin:1em 0;border-radius:4px}
.warn b{color:#8a5a00} .better{color:#17751d} .worse{color:#b3261e}
.row{display:flex;flex-wrap:wrap;gap:10px 28px;align-items:flex-end}
.group{display:flex;gap:8px;align-items:flex-end}
figure{margin:0} figcaption{font-size:.8em;color:#555;max-width:480px}
figure img{display:block;border:1px solid #ccc;max-width:100%;height:auto}
.cbar{display:flex;gap:2px;align-items:flex-end} .cbar img.bar{border:none}
img.plot{display:block;max-width:100%;height:auto;margin:.5em 0}
.differs td.v{background:#fdecea} code{font-size:.9em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _kv_table(facts: Iterable[tuple[str, Any]]) -> str:
    rows = []
    for key, value in facts:
        if isinstance(value, dict):
            shown = "<br>".join(f"{_e(k)}: {_e(v)}" for k, v in value.items())
        elif isinstance(value, list):
            shown = "<br>".join(_e(v) for v in value) if value else "[]"
        else:
            shown = _e(value)
        rows.append(f"<tr><th>{_e(key)}</th><td class='path'>{shown}</td></tr>")
    return f"<table>{''.join(rows)}</table>"


def _table(rows: Sequence[dict[str, Any]], numeric: Iterable[str] = ()) -> str:
    if not rows:
        return ""
    numeric = set(numeric)
    head = "".join(f"<th>{_e(k)}</th>" for k in rows[0])
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if k in numeric else ''}>{_e(v)}</td>" for k, v in r.items())
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _plot(uri: str, alt: str) -> str:
    return f"<img class='plot' src='{uri}' alt='{_e(alt)}'>"


def _warnings(lines: Sequence[str]) -> str:
    if not lines:
        return ""
    items = "".join(f"<li>{_e(w)}</li>" for w in lines)
    return f"<div class='warn' id='warnings'><b>Warning</b><ul>{items}</ul></div>"


def _page(title: str, body: list[str]) -> str:
    from modnet_batch import __version__

    return "\n".join(
        [
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
            *body,
            f"<p class='muted'>modnet-batch {_e(__version__)}; this page is self-contained "
            "(pictures and charts are inline).</p></body></html>",
        ]
    )


def _write(path: Path, text: str) -> Path:
    try:
        atomic_write_bytes(path, text.encode())
    except OSError as exc:
        raise ModnetBatchError(f"could not write {path}: {exc.strerror or exc}") from None
    return path


# --- one run ----------------------------------------------------------------------------------
def worst_images(run: AnyPath, metric: str = "mse", count: int = 10) -> list[ImageRow]:
    """The `count` scored rows with the largest `metric`, largest first."""
    _check_metric(metric)
    return _ranked(RunDir.find(run).read_rows(), metric)[:count]


def _check_metric(metric: str) -> None:
    if metric not in PER_IMAGE:
        raise ModnetBatchError(
            f"metrics.parquet has no column {metric!r}; use {', '.join(PER_IMAGE)}"
        )


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


def _figure(item: ImagePictures, kind: str) -> str:
    pic = item.pictures.get(kind)
    if pic is None:
        return ""
    img = (
        f"<img src='{pic.uri}' width='{pic.width}' height='{pic.height}' "
        f"alt='{_e(item.image_id)} {_e(kind)}' data-kind='{_e(kind)}'>"
    )
    if pic.colorbar:
        bar = min(pic.height, plots.COLORBAR_HEIGHT)  # scaled as a whole, never taller
        img = (
            f"<div class='cbar'>{img}<img class='bar' src='{plots.colorbar_uri()}' "
            f"style='height:{bar}px;width:auto' alt='error colour bar' data-kind='colorbar'>"
            "</div>"
        )
    return f"<figure>{img}<figcaption>{_e(pic.caption)}</figcaption></figure>"


def _figures(item: ImagePictures, groups: Sequence[Sequence[str]]) -> str:
    """The pictures in groups kept side by side (input and GT; a prediction and its error);
    groups wrap as a whole when the page is narrow."""
    parts = []
    for group in groups:
        figures = "".join(_figure(item, kind) for kind in group)
        if figures:
            parts.append(f"<div class='group'>{figures}</div>")
    notes = "".join(f"<p class='muted'>{_e(n)}</p>" for n in item.notes)
    return f"<div class='row'>{''.join(parts)}</div>{notes}"


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


def _failed_section(view: RunView) -> str:
    failed = view.failed
    if not failed:
        return ""
    rows = [
        {
            "image": r.image_id,
            "reason": r.error,
            "may pass on a retry": "yes" if r.transient else "no",
        }
        for r in failed[:FAILED_SHOWN]
    ]
    more = (
        f"<p>... and {len(failed) - FAILED_SHOWN} more (metrics.parquet, column error)</p>"
        if len(failed) > FAILED_SHOWN
        else ""
    )
    transient = sum(r.transient for r in failed)
    again = (
        f"{transient} may pass on a retry: run the same command again"
        if transient
        else "none would pass on a retry"
    )
    return (
        f"<h2 id='failed'>Failed images: {len(failed)} of {view.summary.images.total}</h2>"
        f"<p>{_e(again)}.</p><div id='failed-list'>{_table(rows)}</div>{more}"
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


def _timeline_section(views: Sequence[RunView]) -> str:
    parts = ["<h2 id='throughput'>Throughput over time</h2>"]
    for view in views:
        title = view.name if len(views) > 1 else ""
        uri = plots.timeline(view.summary, title)
        if uri is None:
            parts.append(
                f"<p class='muted'>{_e(view.name)}: no per-shard times recorded (a run made "
                "before modnet-batch recorded them; run it again to see its timeline); "
                "steady img/s per device:</p>"
            )
            parts.append(_plot(plots.throughput_bars(view.summary), f"{view.name} throughput"))
        else:
            parts.append(_plot(uri, f"{view.name} timeline"))
    parts.append(
        "<p class='muted'>Times are each worker node's clock. A resumed job shows its last "
        "attempt.</p>"
    )
    return "\n".join(parts)


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


# --- several runs -----------------------------------------------------------------------------
def comparison_warnings(views: Sequence[RunView]) -> list[str]:
    """Why the runs' numbers may not be comparable: other datasets, images, protocols, decodes."""
    a = views[0]
    lines = []
    for b in views[1:]:
        pair = f"{a.name} vs {b.name}"
        if a.summary.job.dataset != b.summary.job.dataset:
            lines.append(
                f"{pair}: the runs scored different datasets ({a.summary.job.dataset} vs "
                f"{b.summary.job.dataset})"
            )
        ids_a = {r.image_id for r in a.rows}
        ids_b = {r.image_id for r in b.rows}
        if ids_a != ids_b:
            lines.append(
                f"{pair}: different images ({len(ids_a - ids_b)} only in {a.name}, "
                f"{len(ids_b - ids_a)} only in {b.name})"
            )
        scored_a = {r.image_id for r in a.scored}
        scored_b = {r.image_id for r in b.scored}
        if ids_a == ids_b and scored_a != scored_b:
            lines.append(
                f"{pair}: the means are over different images ({a.name} scored "
                f"{len(scored_a)}, {b.name} {len(scored_b)})"
            )
        if a.summary.job.protocol != b.summary.job.protocol:
            lines.append(
                f"{pair}: the runs scored different protocols ({a.summary.job.protocol} vs "
                f"{b.summary.job.protocol}); their metrics are not comparable"
            )
        if a.summary.job.decode != b.summary.job.decode:
            lines.append(
                f"{pair}: different decodes ({a.summary.job.decode} vs {b.summary.job.decode})"
            )
        if a.has_ground_truth != b.has_ground_truth:
            lines.append(f"{pair}: only one of the runs has ground truth")
    return lines


def _jobs_side_by_side(views: Sequence[RunView]) -> str:
    def row(v: RunView) -> dict[str, str]:
        s = v.summary
        return {
            "dataset": s.job.dataset,
            "images": f"{s.images.total} ({s.images.scored} scored, {s.images.failed} failed)",
            "protocol": s.job.protocol,
            "model": str(s.job.variant.get("name", Path(s.job.model).stem)),
            "precision": str(s.job.variant.get("precision", "?")),
            "sha256": str(s.job.variant.get("sha256", "?"))[:16],
            "decode": s.job.decode,
            "backend": s.job.backend,
            "device": str(v.job.get("device", "?")),
            "workers": str(len(s.workers)),
            "batch size": str(s.job.batch_size),
            "start-up s": f"{s.startup_seconds:.1f}",
            "wall s": f"{s.throughput.wall_s:.1f}",
        }

    cols = [row(v) for v in views]
    head = "<tr><th></th>" + "".join(f"<th>{_e(v.name)}</th>" for v in views) + "</tr>"
    body = []
    for key in cols[0]:
        values = [c[key] for c in cols]
        differs = len(set(values)) > 1
        cells = "".join(f"<td class='v path'>{_e(v)}</td>" for v in values)
        body.append(f"<tr{' class=differs' if differs else ''}><th>{_e(key)}</th>{cells}</tr>")
    return f"<table id='jobs'>{head}{''.join(body)}</table>"


def _delta_cell(a: float | None, b: float | None, lower_is_better: bool, digits: int) -> str:
    if a is None or b is None:
        return "<td class='num'>-</td>"
    d = b - a
    rel = f" ({d / a:+.1%})" if a else ""
    better = (d < 0) == lower_is_better
    cls = "" if d == 0 else (" better" if better else " worse")
    return f"<td class='num{cls}'>{d:+.{digits}f}{rel}</td>"


def _compare_table(views: Sequence[RunView]) -> str:
    head = (
        "<tr><th>run</th><th>precision</th><th>protocol</th><th>scored</th>"
        + "".join(f"<th>{TITLES[k]}</th>" for k in DATASET)
        + "".join(f"<th>{r.title}</th>" for r in RATES)
        + "</tr>"
    )
    rows = []
    a = views[0]
    for v in views:
        s = v.summary
        cells = "".join(
            f"<td class='num'>{fmt(s.metrics.get(k), COMPARE_DIGITS[k])}</td>" for k in DATASET
        )
        rows.append(
            f"<tr><th>{_e(v.name)}</th><td>{_e(s.job.variant.get('precision', '?'))}</td>"
            f"<td>{_e(s.job.protocol)}</td><td class='num'>{s.images.scored}</td>{cells}"
            + "".join(f"<td class='num'>{fmt(r, 2)}</td>" for r in v.rates)
            + "</tr>"
        )
    for v in views[1:]:
        cells = "".join(
            _delta_cell(
                a.summary.metrics.get(k),
                v.summary.metrics.get(k),
                METRICS[k].lower_is_better,
                COMPARE_DIGITS[k],
            )
            for k in DATASET
        )
        rate = "".join(_delta_cell(x, y, False, 2) for x, y in zip(a.rates, v.rates, strict=True))
        rows.append(
            f"<tr class='delta'><th>{_e(v.name)} &minus; {_e(a.name)}</th><td></td><td></td>"
            f"<td></td>{cells}{rate}</tr>"
        )
    legend = "".join(
        f"<tr><th>{_e(i.title)}</th><td>{_e(i.meaning)}</td><td>{_e(i.direction)}</td></tr>"
        for i in [*METRICS.values(), *RATES]
    )
    return (
        f"<table id='metrics'>{head}{''.join(rows)}</table>"
        "<p class='muted'>Deltas: green better, red worse, by each metric's direction.</p>"
        f"<h3>What the metrics mean</h3><table>{legend}</table>"
    )


def _changed(a: RunView, b: RunView, metric: str, count: int) -> tuple[list[str], list[str]]:
    """The images whose `metric` grew most from a to b, and those that shrank most."""
    ma = {r.image_id: getattr(r.metrics, metric) for r in a.scored}
    mb = {r.image_id: getattr(r.metrics, metric) for r in b.scored}
    deltas = sorted((mb[i] - ma[i], i) for i in ma.keys() & mb.keys())
    worse = [i for d, i in reversed(deltas) if d > 0][:count]
    better = [i for d, i in deltas if d < 0][:count]
    return worse, better


def _pair_panels(a: RunView, b: RunView, metric: str, count: int) -> str:
    worse, better = _changed(a, b, metric, count)
    ids = worse + better
    pa, notes_a = pictures(a.run, a.summary.job.dataset, a.summary.job.protocol, ids, label=a.name)
    pb, notes_b = pictures(b.run, b.summary.job.dataset, b.summary.job.protocol, ids, label=b.name)
    rows_a = {r.image_id: r for r in a.rows}
    rows_b = {r.image_id: r for r in b.rows}
    parts = [f"<p class='warn'>{_e(n)}</p>" for n in notes_a + notes_b]
    for title, chosen in (
        (f"{b.name} worse than {a.name} by {TITLES[metric]}", worse),
        (f"{b.name} better than {a.name} by {TITLES[metric]}", better),
    ):
        parts.append(f"<h3>{_e(title)}: {len(chosen)} image(s)</h3>")
        for image_id in chosen:
            ra, rb = rows_a[image_id], rows_b[image_id]
            va = getattr(ra.metrics, metric)
            vb = getattr(rb.metrics, metric)
            parts.append(
                f"<h3 class='image' data-id='{_e(image_id)}'>{_e(image_id)} <span class='muted'>"
                f"{TITLES[metric]} {va:.6g} &rarr; {vb:.6g}</span></h3>"
            )
            item_a, item_b = pa.get(image_id), pb.get(image_id)
            if item_a is None or item_b is None:
                parts.append("<p class='muted'>not in the datasets</p>")
                continue
            merged = ImagePictures(image_id, item_a.width, item_a.height)
            for kind in ("input", "gt"):
                if kind in item_a.pictures:
                    merged.pictures[kind] = item_a.pictures[kind]
            for key, kind, item in (
                ("pa", "prediction", item_a),
                ("ea", "error", item_a),
                ("pb", "prediction", item_b),
                ("eb", "error", item_b),
            ):
                if kind in item.pictures:
                    merged.pictures[key] = item.pictures[kind]
            merged.notes = item_a.notes + item_b.notes
            parts.append(_figures(merged, (("input", "gt"), ("pa", "ea"), ("pb", "eb"))))
    return "\n".join(parts)


def compare_page(views: Sequence[RunView], metric: str = "mse", panels: int = 3) -> str:
    """The HTML comparing runs: the first run is A, each other one is set against it."""
    _check_metric(metric)
    names = " vs ".join(v.name for v in views)
    body = [
        f"<h1>modnet-batch comparison: {_e(names)}</h1>",
        "".join(f"<p class='path'>{_e(v.name)}: {_e(v.run.root)}</p>" for v in views),
        _warnings(comparison_warnings(views)),
        f"<h2 id='job'>Jobs</h2>{_jobs_side_by_side(views)}",
        f"<h2 id='metric-section'>Metrics</h2>{_compare_table(views)}",
    ]
    for v in views:
        if v.failed:
            body.append(_failed_section(v).replace("<h2 id='failed'>", f"<h2>{_e(v.name)}: ", 1))
    scored = [v for v in views if v.has_ground_truth]
    if len(scored) > 1:
        body.append("<h2 id='scatter'>Per image, run against run</h2>")
        a = scored[0]
        for b in scored[1:]:
            body.append(_plot(plots.scatter((a.name, a.rows), (b.name, b.rows)), "scatter"))
    if scored:
        body.append("<h2 id='distributions'>Per-image distributions</h2>")
        runs = [(v.name, v.rows, v.summary.metrics) for v in scored]
        body.append(_plot(plots.distributions(runs), "distributions"))
    body.append(_timeline_section(views))
    if len(scored) > 1 and panels > 0:
        body.append(f"<h2 id='changed'>Images that changed most by {TITLES[metric]}</h2>")
        for b in scored[1:]:
            body.append(_pair_panels(scored[0], b, metric, panels))
    return _page(f"modnet-batch comparison: {names}", body)


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
