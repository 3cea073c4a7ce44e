"""The driver's own cost of the dispatch loop (summary.json `dispatch`)."""

from __future__ import annotations

import random
import time
from typing import Any


class DispatchStats:
    """The driver's own cost of the shard loop, for summary.json `dispatch`: its process CPU
    (every thread: Ray's client, the progress display, writing markers) per shard, where its
    wall time went (dispatching, waiting for results, polling progress, recording results), and
    the latency from a shard's result reaching the driver to the next dispatch to the actor that
    sent it (what a fast device waits on the driver, queued shards aside). Constant memory: sums,
    and a bounded sample of the gaps."""

    SAMPLE = 4096
    STAGES = ("dispatch", "wait_results", "progress", "record")

    def __init__(self, actors: int) -> None:
        self.actors = actors
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()
        self.stages = dict.fromkeys(self.STAGES, 0.0)
        self.results = 0
        self.dispatches = 0
        self.polls = 0
        self.last_poll = 0.0
        self.gaps: list[float] = []  # seconds, a uniform sample of at most SAMPLE
        self._rng = random.Random(0)
        self.gap_count = 0
        self.gap_sum = 0.0
        self.gap_max = 0.0
        self._freed: dict[int, float] = {}  # id(slot) -> when its last result was recorded

    def add(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.stages[stage] += now - since
        return now

    def poll_due(self, every: float) -> bool:
        """Progress polls (a call to every actor) at most `every` seconds, not once per result:
        their cost would otherwise grow with actors x units."""
        return time.perf_counter() - self.last_poll >= every

    def polled(self, did: bool) -> None:
        if did:
            self.polls += 1
            self.last_poll = time.perf_counter()

    def finished(self, slot: object, arrived: float) -> None:
        """A shard's result, which reached the driver at `arrived` (perf_counter), is recorded:
        the gap runs from then to the next dispatch to that actor."""
        self.results += 1
        self._freed[id(slot)] = arrived

    def dispatched(self, slot: object) -> None:
        self.dispatches += 1
        freed = self._freed.pop(id(slot), None)
        if freed is None:
            return
        gap = time.perf_counter() - freed
        self.gap_count += 1
        self.gap_sum += gap
        self.gap_max = max(self.gap_max, gap)
        if len(self.gaps) < self.SAMPLE:
            self.gaps.append(gap)
        else:  # reservoir sampling: every gap equally likely to be kept
            k = self._rng.randrange(self.gap_count)
            if k < self.SAMPLE:
                self.gaps[k] = gap

    def to_dict(self) -> dict[str, Any]:
        cpu = time.process_time() - self.cpu0
        wall = time.perf_counter() - self.wall0
        n = max(self.results, 1)
        ordered = sorted(self.gaps)

        def pct(q: float) -> float | None:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3 if ordered else None

        busy = wall - self.stages["wait_results"]
        return {
            "actors": self.actors,
            "shards": self.results,
            "dispatches": self.dispatches,
            "progress_polls": self.polls,
            "wall_s": wall,
            "driver_cpu_s": cpu,
            "driver_cpu_per_shard_ms": cpu / n * 1e3,
            "driver_busy_per_shard_ms": busy / n * 1e3,
            "stages_s": {**self.stages, "other": max(0.0, wall - sum(self.stages.values()))},
            "result_to_dispatch_ms": {
                "count": self.gap_count,
                "mean": self.gap_sum / self.gap_count * 1e3 if self.gap_count else None,
                "p50": pct(0.5),
                "p90": pct(0.9),
                "p99": pct(0.99),
                "max": self.gap_max * 1e3 if self.gap_count else None,
            },
        }
