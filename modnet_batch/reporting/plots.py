"""The report's charts, drawn with matplotlib (Agg, imported only when a report is written) and
returned as PNG data URIs: per-image metric distributions, run-against-run scatters, each
device's timeline, the colour bar of the error maps.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from modnet_batch.metrics import ImageRow
from modnet_batch.reporting.table import TITLES
from modnet_batch.results import Summary

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 100
COLORBAR_HEIGHT = 320  # pixels
ERROR_CMAP = "inferno"  # the error maps' colours, 0 (black) .. 1 (pale yellow)
# The shard loop's stages in a timeline entry, as drawn in "where each device's time went".
_STAGE_COLOURS = {
    "infer": "#2b7bba",
    "wait_decode": "#f0a030",
    "device_decode": "#e6c229",
    "read": "#8fbc8f",
    "wait_write": "#c77dba",
    "other": "#b0b0b0",
}
_IDLE = "#e05050"
_STARTUP = "#9e9e9e"


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # Agg, whatever backend pyplot would pick: no display needed
    return fig


def _uri(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@lru_cache(maxsize=1)
def error_lut() -> npt.NDArray[np.uint8]:
    """256x3 uint8 RGB: the error maps' colour of each 8-bit |error| (the colour bar's map)."""
    import matplotlib as mpl

    colours = mpl.colormaps[ERROR_CMAP](np.linspace(0.0, 1.0, 256))[:, :3]
    return np.asarray(np.rint(colours * 255), dtype=np.uint8)


@lru_cache(maxsize=1)
def colorbar_uri() -> str:
    """The error maps' colour bar: |prediction - ground truth| in alpha units, 0 .. 1."""
    import matplotlib as mpl
    from matplotlib.cm import ScalarMappable

    fig = _figure(0.95, COLORBAR_HEIGHT / DPI)
    ax = fig.add_subplot()
    fig.colorbar(
        ScalarMappable(norm=mpl.colors.Normalize(0.0, 1.0), cmap=ERROR_CMAP),
        cax=ax,
        ticks=[0, 0.25, 0.5, 0.75, 1.0],
    )
    ax.set_ylabel("|alpha error|", fontsize=9)
    ax.tick_params(labelsize=8)
    return _uri(fig)


def _log_axis(ax: Axes, which: str, lo: float, hi: float) -> None:
    """A log axis over [lo, hi] labelled 1-2-5 per decade on short ranges, at decades on long
    ones, as plain numbers (matplotlib's minor labels overlap on short ranges)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    subs = (1.0, 2.0, 5.0) if hi / lo <= 1e3 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _values(rows: Sequence[ImageRow], metric: str) -> npt.NDArray[np.float64]:
    return np.asarray(
        [getattr(r.metrics, metric) for r in rows if r.scored and r.metrics], dtype=np.float64
    )


def _bins(values: Sequence[npt.NDArray[np.float64]], count: int = 30) -> tuple[Any, bool]:
    """Log-spaced bins when every value is positive and they span over a decade."""
    every = np.concatenate([v for v in values if v.size]) if values else np.zeros(0)
    if every.size == 0:
        return 10, False
    lo, hi = float(every.min()), float(every.max())
    if lo > 0 and hi / lo > 10:
        return np.geomspace(lo, hi * 1.0001, count + 1), True
    return count, False


def distributions(
    runs: Sequence[tuple[str, Sequence[ImageRow], dict[str, float | None]]],
    metrics: Sequence[str] = ("mse", "sad"),
) -> str:
    """Histograms of the per-image metrics, one panel per metric, one outline per run; a dashed
    line marks each run's dataset mean."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(5.0 * len(metrics), 3.4)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    colours = [f"C{i}" for i in range(len(runs))]
    for ax, metric in zip(axes, metrics, strict=True):
        values = [_values(rows, metric) for _, rows, _ in runs]
        bins, log = _bins(values)
        for (name, _, means), v, colour in zip(runs, values, colours, strict=True):
            if not v.size:
                continue
            ax.hist(
                v,
                bins=bins,
                histtype="step" if len(runs) > 1 else "bar",
                color=colour,
                alpha=1.0 if len(runs) > 1 else 0.75,
                linewidth=1.6,
                label=f"{name} (n={v.size})",
            )
            mean = means.get(metric)
            if mean is not None:
                ax.axvline(mean, color=colour, linestyle="--", linewidth=1.2)
        if log:
            _log_axis(ax, "x", float(bins[0]), float(bins[-1]))
        ax.set_xlabel(f"per-image {TITLES[metric]} (lower is better; dashed: mean)")
        ax.set_ylabel("images")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _uri(fig)


def scatter(
    a: tuple[str, Sequence[ImageRow]],
    b: tuple[str, Sequence[ImageRow]],
    metrics: Sequence[str] = ("mse", "sad"),
    labelled: int = 3,
) -> str:
    """Per image, run B's metric against run A's (the images both scored), with y = x; points
    above the line are images B does worse on. The `labelled` farthest from it are named."""
    by_a = {r.image_id: r.metrics for r in a[1] if r.scored and r.metrics}
    by_b = {r.image_id: r.metrics for r in b[1] if r.scored and r.metrics}
    ids = sorted(by_a.keys() & by_b.keys())
    fig = _figure(4.6 * len(metrics), 4.4)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        x = np.asarray([getattr(by_a[i], metric) for i in ids], dtype=np.float64)
        y = np.asarray([getattr(by_b[i], metric) for i in ids], dtype=np.float64)
        if x.size:
            lo = float(min(x.min(), y.min()))
            hi = float(max(x.max(), y.max()))
            log = lo > 0 and hi / lo > 10
            ax.scatter(x, y, s=18, alpha=0.75, color="C0", edgecolors="none")
            ax.plot([lo, hi], [lo, hi], color="0.3", linewidth=1, linestyle="--", label="y = x")
            if log:
                _log_axis(ax, "x", lo, hi)
                _log_axis(ax, "y", lo, hi)
            # the farthest from the line, when they are far (over 10% of the larger value)
            gap = np.abs(y - x) / np.maximum(np.maximum(x, y), 1e-12)
            far = [k for k in np.argsort(-gap)[:labelled] if gap[k] > 0.1]
            # where each point lies on the axes, 0..1 both ways: labels never pile up
            placed: list[tuple[float, float]] = []
            for k in far:
                at = (_fraction(x[k], lo, hi, log), _fraction(y[k], lo, hi, log))
                if any(abs(at[0] - p[0]) + abs(at[1] - p[1]) < 0.12 for p in placed):
                    continue
                placed.append(at)
                right = at[0] > 0.5  # labels point inwards, never off the axes
                ax.annotate(
                    ids[k],
                    (x[k], y[k]),
                    fontsize=7,
                    xytext=(-4 if right else 4, 3),
                    textcoords="offset points",
                    ha="right" if right else "left",
                )
            ax.legend(fontsize=8, loc="upper left")
        ax.set_xlabel(f"{a[0]}: per-image {TITLES[metric]}")
        ax.set_ylabel(f"{b[0]}: per-image {TITLES[metric]}")
        ax.set_title(
            f"{TITLES[metric]}, {len(ids)} images (above the line: {b[0]} worse)", fontsize=9
        )
        ax.grid(alpha=0.3)
    return _uri(fig)


def _fraction(value: float, lo: float, hi: float, log: bool) -> float:
    """Where `value` lies between lo and hi on a (log) axis, 0..1."""
    if log:
        return float(np.log(value / lo) / np.log(hi / lo))
    return float((value - lo) / max(hi - lo, 1e-12))


def _timed(summary: Summary) -> list[dict[str, Any]]:
    return [
        t
        for t in summary.timeline
        if isinstance(t.get("started"), int | float) and isinstance(t.get("finished"), int | float)
    ]


def has_timeline(summary: Summary) -> bool:
    return bool(_timed(summary))


def timeline(summary: Summary, title: str = "") -> str | None:
    """Each device over the job's time: its shards as bars (gaps: it waited for work), its
    images/s while running each shard and the total, and where its time went (the shard loop's
    stages, idle); start-up (Ray, workers, model loading) shaded apart. None when the run
    recorded no per-shard times (runs made before they were recorded)."""
    entries = _timed(summary)
    if not entries:
        return None
    t0 = summary.started if summary.started is not None else min(t["started"] for t in entries)
    startup = float(summary.startup_seconds)
    end = max(
        max(t["finished"] for t in entries) - t0,
        summary.throughput.wall_s,
    )
    # every worker, those that never got a shard too (they waited the whole job)
    workers = sorted(
        {str(t["worker"]) for t in entries}
        | {str(w["label"]) for w in summary.workers if "label" in w}
    )
    row = {w: i for i, w in enumerate(workers)}
    height = 1.6 + 0.42 * len(workers)
    fig = _figure(10.5, height * 2 + 2.6)
    gantt, rates, spent = fig.subplots(3, 1, height_ratios=[height, height + 0.8, height])
    if title:
        fig.suptitle(title, fontsize=10)
    _draw_gantt(gantt, entries, workers, row, t0, startup, end)
    _draw_rates(rates, entries, workers, t0, startup, end)
    _draw_spent(spent, entries, workers, t0, startup, end)
    return _uri(fig)


def _startup_band(ax: Axes, startup: float, label: bool) -> None:
    ax.axvspan(
        0,
        startup,
        color=_STARTUP,
        alpha=0.25,
        linewidth=0,
        label=f"start-up {startup:.1f} s" if label else None,
    )


def _draw_gantt(
    ax: Axes,
    entries: list[dict[str, Any]],
    workers: list[str],
    row: dict[str, int],
    t0: float,
    startup: float,
    end: float,
) -> None:
    _startup_band(ax, startup, label=True)
    for i, w in enumerate(workers):
        mine = sorted((t for t in entries if t["worker"] == w), key=lambda t: t["started"])
        spans = [(t["started"] - t0, t["finished"] - t["started"]) for t in mine]
        ax.broken_barh(
            spans, (i - 0.35, 0.7), facecolors=f"C{i % 10}", edgecolor="white", linewidth=0.8
        )
        gaps = _gaps([(s, s + d) for s, d in spans], startup, end)
        ax.broken_barh(
            [(s, e - s) for s, e in gaps],
            (i - 0.12, 0.24),
            facecolors=_IDLE,
            alpha=0.55,
            label="idle (no shard)" if i == 0 else None,
        )
        for t, (s, d) in zip(mine, spans, strict=True):
            if d > 0.04 * end:
                ax.text(
                    s + d / 2,
                    i,
                    str(t["images"]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white",
                )
    ax.set_yticks(range(len(workers)), workers, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, end * 1.01)
    ax.set_xlabel("seconds since the job started (bars: shards, with their image counts)")
    ax.set_title("shards per device", fontsize=9, loc="left")
    ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2, frameon=False)
    ax.grid(axis="x", alpha=0.3)


def _gaps(
    spans: list[tuple[float, float]], startup: float, end: float
) -> list[tuple[float, float]]:
    """Where a device held no shard between the end of start-up and the end of the job."""
    gaps: list[tuple[float, float]] = []
    at = startup
    for s, e in sorted(spans):
        if s > at + 1e-3:
            gaps.append((at, s))
        at = max(at, e)
    if end > at + 1e-3:
        gaps.append((at, end))
    return gaps


def _draw_rates(
    ax: Axes,
    entries: list[dict[str, Any]],
    workers: list[str],
    t0: float,
    startup: float,
    end: float,
) -> None:
    _startup_band(ax, startup, label=False)
    grid = np.linspace(0.0, end, 600)
    total = np.zeros_like(grid)
    for i, w in enumerate(workers):
        rate = np.zeros_like(grid)
        for t in entries:
            if t["worker"] != w:
                continue
            s, e = t["started"] - t0, t["finished"] - t0
            if e > s:
                rate[(grid >= s) & (grid < e)] += t["images"] / (e - s)
        total += rate
        ax.plot(grid, rate, drawstyle="steps-post", color=f"C{i % 10}", linewidth=1.2, label=w)
    if len(workers) > 1:
        ax.plot(grid, total, color="black", linewidth=1.6, label="all devices")
    images = sum(int(t["images"]) for t in entries)
    ax.set_xlim(0, end * 1.01)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("seconds since the job started (grey: start-up)")
    ax.set_ylabel("images/s")
    ax.set_title(
        f"images/s per device while it runs a shard ({images} images this attempt)",
        fontsize=9,
        loc="left",
    )
    ax.legend(fontsize=7, loc="lower right", ncols=min(4, len(workers) + 1))
    ax.grid(alpha=0.3)


def _draw_spent(
    ax: Axes,
    entries: list[dict[str, Any]],
    workers: list[str],
    t0: float,
    startup: float,
    end: float,
) -> None:
    for i, w in enumerate(workers):
        mine = [t for t in entries if t["worker"] == w]
        left = 0.0
        ax.barh(
            i, startup, left=left, color=_STARTUP, alpha=0.5, label="start-up" if i == 0 else None
        )
        left += startup
        busy = 0.0
        for stage, colour in _STAGE_COLOURS.items():
            value = sum(float(t.get(f"{stage}_s", 0.0)) for t in mine)
            busy += value
            ax.barh(i, value, left=left, color=colour, label=stage if i == 0 else None)
            left += value
        idle = max(0.0, end - startup - busy)
        ax.barh(
            i, idle, left=left, color=_IDLE, alpha=0.55, label="idle (no shard)" if i == 0 else None
        )
    ax.set_yticks(range(len(workers)), workers, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(end, 1e-3) * 1.01)
    ax.set_xlabel(
        "seconds: where each device's time went (wait_decode: the network waited for decoded "
        "inputs; wait_write: for scoring/writing)"
    )
    ax.set_title("time per device", fontsize=9, loc="left")
    ax.legend(
        fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.45), ncols=len(_STAGE_COLOURS) + 2
    )
    ax.grid(axis="x", alpha=0.3)


def throughput_bars(summary: Summary) -> str:
    """A run without per-shard times: steady img/s per device as bars (no timeline recorded)."""
    per_device = summary.throughput.per_device
    labels = list(per_device)
    fig = _figure(8.0, 1.2 + 0.4 * max(1, len(labels)))
    ax = fig.add_subplot()
    ax.barh(labels, [per_device[k].steady_images_per_s for k in labels], color="C0")
    ax.invert_yaxis()
    ax.set_xlabel("steady img/s")
    ax.grid(axis="x", alpha=0.3)
    return _uri(fig)
