"""Summary statistics of a benchmark: latency percentiles, throughput windows, stability verdict."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 95, 99)
WINDOWS = 5  # the timed span is cut into this many equal windows
STABLE_LAST = 3  # the verdict looks at the last windows
STABLE_MARGIN = 0.05  # ... which must agree within +-5% of their median


def latency_summary(seconds: Sequence[float]) -> dict[str, Any]:
    """p50/p90/p95/p99/mean/min/max of per-batch latencies, in milliseconds."""
    if not seconds:
        return {"n": 0}
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    out: dict[str, Any] = {"n": int(ms.size)}
    out.update({f"p{p}_ms": float(np.percentile(ms, p)) for p in PERCENTILES})
    out.update({"mean_ms": float(ms.mean()), "min_ms": float(ms.min()), "max_ms": float(ms.max())})
    return out


def window_rates(
    events: Sequence[tuple[float, int]], start: float, end: float, windows: int = WINDOWS
) -> list[float]:
    """Images/s in `windows` equal slices of [start, end]; `events` are (finish time, images)."""
    if end <= start or windows < 1:
        return []
    width = (end - start) / windows
    counts = [0.0] * windows
    for t, n in events:
        if start <= t <= end:
            counts[min(int((t - start) / width), windows - 1)] += n
    return [c / width for c in counts]


def stability(
    rates: Sequence[float], last: int = STABLE_LAST, margin: float = STABLE_MARGIN
) -> dict[str, Any]:
    """Whether the last `last` window rates agree within +-`margin` of their median."""
    tail = [float(r) for r in rates[-last:]]
    if len(tail) < last:
        return {
            "stable": False,
            "reason": f"only {len(tail)} window(s); need {last}",
            "windows_images_per_s": [float(r) for r in rates],
            "margin": margin,
        }
    mid = float(np.median(tail))
    spread = max(abs(r - mid) for r in tail) / mid if mid > 0 else float("inf")
    return {
        "stable": spread <= margin,
        "max_deviation": spread,
        "margin": margin,
        "last_windows": last,
        "windows_images_per_s": [float(r) for r in rates],
        "reason": (
            f"last {last} windows within {100 * spread:.1f}% of their median "
            f"({'<=' if spread <= margin else '>'} {100 * margin:.0f}%)"
        ),
    }


def steady_rate(finishes: Sequence[float], trim: float = 0.1) -> float | None:
    """Images/s between the results at the `trim` and `1 - trim` fractions of a job's sorted
    finish times: its pace once every worker is busy, without the start (first reads and
    decodes) and the tail (the last worker finishing alone). None with too few results."""
    times = sorted(finishes)
    skip = int(len(times) * trim)
    first, last = skip, len(times) - 1 - skip
    if last - first < 2 or times[last] <= times[first]:
        return None
    return (last - first) / (times[last] - times[first])


def median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64))) if values else float("nan")
