"""The batch size of an accelerator, chosen by measuring it: each device's actor times its own
session at growing batch sizes when it starts, so a fast GPU and a slow one each get theirs.

The sweep doubles the batch from 1 while images/s still grows by more than `GAIN`, stops at the
first batch that fails (device memory) or when its time budget is spent, and takes the smallest
batch within `NEAR` of the fastest: the same throughput at less latency and memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

CANDIDATES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
GAIN = 0.05  # a doubling that adds less than this twice in a row ends the sweep
NEAR = 0.05  # the chosen batch is the smallest within this of the fastest
BUDGET_S = 15.0  # the sweep's wall-time budget per actor
MIN_TIMED_S = 0.2  # each candidate runs at least this long (and 3 times) after its warm-up
# bytes of float32 network input one batch may hold: a 24 MP paper-protocol input is ~300 MB
MAX_BATCH_BYTES = 2 * 2**30


@dataclass
class BatchChoice:
    batch_size: int
    rates: dict[int, float] = field(default_factory=dict)  # images/s per batch size timed
    stopped: str = ""  # why the sweep ended
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "images_per_s": {str(b): round(r, 2) for b, r in self.rates.items()},
            "stopped": self.stopped,
            "seconds": round(self.seconds, 2),
        }


@dataclass(frozen=True)
class Timing:
    """Calls of one batch: each call's seconds, the clock when each ended, the timed span."""

    batch: int
    latencies: list[float]
    ends: list[float]
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.batch * len(self.latencies) / self.seconds


def time_runs(
    run: Callable[[npt.NDArray[np.float32]], Any],
    x: npt.NDArray[np.float32],
    *,
    min_s: float,
    min_runs: int = 3,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Call `run(x)` `warmup` times untimed (allocations, kernel selection), then at least
    `min_runs` times and for at least `min_s` seconds."""
    for _ in range(warmup):
        run(x)
    latencies: list[float] = []
    ends: list[float] = []
    t0 = clock()
    while len(latencies) < min_runs or clock() - t0 < min_s:
        t = clock()
        run(x)
        ends.append(clock())
        latencies.append(ends[-1] - t)
    return Timing(int(x.shape[0]), latencies, ends, max(clock() - t0, 1e-9))


def smallest_near_fastest(rates: Mapping[int, float], near: float = NEAR) -> int:
    """The smallest batch size whose images/s is within `near` of the fastest one's."""
    top = max(rates.values())
    return min(b for b, r in rates.items() if r >= (1 - near) * top)


def tune_batch(
    run: Callable[[npt.NDArray[np.float32]], Any],
    shape: tuple[int, int, int],
    *,
    candidates: Sequence[int] = CANDIDATES,
    budget_s: float = BUDGET_S,
    clock: Callable[[], float] = time.perf_counter,
) -> BatchChoice:
    """Time `run` on [B, *shape] inputs for growing B; see the module docstring."""
    start = clock()
    sample = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    rates: dict[int, float] = {}
    stopped = "every candidate timed"
    flat = 0
    for b in candidates:
        if b * sample.nbytes > MAX_BATCH_BYTES:
            stopped = f"batch {b} would hold more than {MAX_BATCH_BYTES // 2**20} MiB of input"
            break
        x = np.ascontiguousarray(np.broadcast_to(sample, (b, *shape)))
        try:
            rate = time_runs(run, x, min_s=MIN_TIMED_S, clock=clock).images_per_s
        except Exception as exc:  # out of device memory: the batches below it are the choice
            text = str(exc).splitlines()[0] if str(exc) else repr(exc)
            stopped = f"batch {b} failed: {text}"
            break
        best = max(rates.values(), default=0.0)
        rates[b] = rate
        flat = flat + 1 if best and rate < best * (1 + GAIN) else 0
        if flat >= 2:
            stopped = f"images/s grew by less than {GAIN:.0%} twice"
            break
        if clock() - start > budget_s:
            stopped = f"time budget of {budget_s:g} s spent"
            break
    if not rates:
        return BatchChoice(1, {}, stopped, clock() - start)
    return BatchChoice(smallest_near_fastest(rates), rates, stopped, clock() - start)
