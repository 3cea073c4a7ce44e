"""The HTML building blocks the report pages share: the style sheet, escaping, tables,
charts, picture panels, warnings, the failed images and the timelines, and the page itself."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from modnet_batch.errors import ModnetBatchError
from modnet_batch.metrics import PER_IMAGE
from modnet_batch.reporting import plots
from modnet_batch.reporting.facts import RunView
from modnet_batch.reporting.panels import ImagePictures
from modnet_batch.storage import atomic_write_bytes

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


def _check_metric(metric: str) -> None:
    if metric not in PER_IMAGE:
        raise ModnetBatchError(
            f"metrics.parquet has no column {metric!r}; use {', '.join(PER_IMAGE)}"
        )


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
