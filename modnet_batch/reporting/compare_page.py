"""The HTML page comparing runs: the first run is A, each other one is set against it (jobs side
by side, the metric deltas, run-against-run scatters, the images that changed most)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from modnet_batch.metrics import DATASET
from modnet_batch.reporting import plots
from modnet_batch.reporting.facts import METRICS, RATES, RunView
from modnet_batch.reporting.markup import (
    _check_metric,
    _e,
    _failed_section,
    _figures,
    _page,
    _plot,
    _timeline_section,
    _warnings,
)
from modnet_batch.reporting.panels import ImagePictures, pictures
from modnet_batch.reporting.table import COMPARE_DIGITS, TITLES, fmt


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
