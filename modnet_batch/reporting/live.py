"""Live progress of a long command (`submit`, `matte`, `ingest`): what it is doing while it
starts, then images done of the total, the rate over the last seconds ("now") and the steady
img/s since the first result, the time left, per-device counts and rates, and failures. Its last
line shows the job's measured steady and overall img/s (results.throughput), the figures the
tables, summary.json and the report show.

On a terminal it is one rich line redrawn in place; anywhere else (a pipe, CI, a Ray job's log)
it prints a plain line per phase and then one every `interval_s` seconds (MODNET_BATCH_PROGRESS_S,
default 10), so a log shows progress without control characters.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import defaultdict, deque
from collections.abc import Callable, Mapping

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from modnet_batch.results.throughput import OVERALL, STEADY, Throughput

WINDOW_S = 10.0  # the "current" rate is over this many seconds
INTERVAL_ENV = "MODNET_BATCH_PROGRESS_S"


def _clock_text(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class _Rate:
    """Images/s over the last `window` seconds, and since the first result (while running, the
    estimate of the steady img/s)."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.samples: deque[tuple[float, float]] = deque()
        self.first: tuple[float, float] | None = None  # (time, count) of the first result

    def add(self, now: float, count: float) -> None:
        if self.first is None:
            self.first = (now, 0.0)
        self.samples.append((now, count))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window:
            self.samples.popleft()

    def current(self, now: float) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, c0), (_, c1) = self.samples[0], self.samples[-1]
        return (c1 - c0) / (now - t0) if now > t0 else None

    def mean(self, now: float, count: float) -> float | None:
        if self.first is None or now <= self.first[0]:
            return None
        return count / (now - self.first[0])


def _devices(devices: Mapping[str, tuple[int, float | None]]) -> str:
    """ "cpu0 8 (4.59 steady img/s) cpu1 8 (...)": each device's images and rate."""
    parts = []
    for name, (count, rate) in sorted(devices.items()):
        short = name.split("@")[0]
        parts.append(f"{short} {count}" + (f" ({rate:.2f} {STEADY})" if rate else ""))
    return " ".join(parts)


class LiveProgress:
    """Progress of one command; call `phase` while starting, `begin` once the total is known,
    `images` as they finish, `failed` for error rows, and `close` at the end."""

    def __init__(
        self,
        console: Console,
        what: str,
        *,
        interactive: bool | None = None,
        interval_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        first_step: str | None = None,
    ) -> None:
        """`first_step`: what the command does before its first phase (counted in the start-up
        time, not printed: an error in it stays the command's only line)."""
        self.console = console
        self.what = what
        self.interactive = (
            console.is_terminal and not console.is_dumb_terminal
            if interactive is None
            else interactive
        )
        self.interval = (
            interval_s if interval_s is not None else float(os.environ.get(INTERVAL_ENV, "10"))
        )
        self.clock = clock
        self.t0 = clock()
        self.total: int | None = None
        self.done = 0
        self.failures = 0
        self.per_device: dict[str, int] = defaultdict(int)
        self.device_rates: dict[str, _Rate] = {}
        self.rate = _Rate(WINDOW_S)
        self.measured: Throughput | None = None  # the job's, once it has finished
        self.first_result_s: float | None = None
        self.phases: list[tuple[float, str]] = [] if first_step is None else [(0.0, first_step)]
        self._last_line = -1e9
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        if self.interactive:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                console=console,
                refresh_per_second=4,
                transient=False,
            )
            self._task = self._bar.add_task(what, total=None, status="")
            self._bar.start()

    # --- events -------------------------------------------------------------------------------
    def phase(self, text: str) -> None:
        """A start-up step (starting Ray, loading the model on each worker, ...)."""
        now = self.clock()
        self.phases.append((now - self.t0, text))
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, status=text)
        else:
            self._print(f"[{_clock_text(now - self.t0):>7}] {self.what}: {text}")

    def begin(self, total: int, description: str | None = None) -> None:
        self.total = total
        if description:
            self.what = description
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, total=total, description=self.what)

    def images(self, device: str, n: int) -> None:
        if n <= 0:
            return
        now = self.clock()
        if self.first_result_s is None:
            self.first_result_s = now - self.t0
            self.phase(f"first result after {self.first_result_s:.1f} s")
        self.done += n
        self.per_device[device] += n
        self.rate.add(now, self.done)
        self.device_rates.setdefault(device, _Rate(WINDOW_S)).add(now, self.per_device[device])
        self._show(now)

    def failed(self, n: int) -> None:
        self.failures += n

    def close(self, measured: Throughput | None = None) -> None:
        """The last line; with the job's `measured` throughput, its steady and overall img/s
        (what the summary records) in place of the running estimates."""
        self.measured = measured
        now = self.clock()
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=self.done, status=self.status(now))
            self._bar.stop()
        elif self.done:
            self._print(self.line(now))

    # --- text ---------------------------------------------------------------------------------
    def status(self, now: float) -> str:
        """Rates, time left, failures and devices: everything after the image count."""
        if self.measured is not None:
            return self._measured_status(self.measured)
        parts = []
        current, mean = self.rate.current(now), self.rate.mean(now, self.done)
        if current is not None:
            parts.append(f"{current:.2f} img/s now")
        if mean is not None:
            parts.append(f"{mean:.2f} {STEADY}")
        speed = current or mean
        if self.total is not None and speed:
            left = max(0, self.total - self.done)
            parts.append(f"ETA {_clock_text(left / speed)}" if left else "done")
        if self.failures:
            parts.append(f"{self.failures} failed")
        if len(self.per_device) > 1:  # one device's figures are the totals
            devices = {
                name: (count, self.device_rates[name].mean(now, count))
                for name, count in self.per_device.items()
            }
            parts.append(_devices(devices))
        return ", ".join(parts)

    def _measured_status(self, measured: Throughput) -> str:
        parts = [
            f"{measured.steady_images_per_s:.2f} {STEADY}",
            f"{measured.overall_images_per_s:.2f} {OVERALL}",
        ]
        if self.failures:
            parts.append(f"{self.failures} failed")
        if len(measured.per_device) > 1:
            devices = {k: (s.images, s.steady_images_per_s) for k, s in measured.per_device.items()}
            parts.append(_devices(devices))
        return ", ".join(parts)

    def line(self, now: float) -> str:
        of = f"/{self.total}" if self.total is not None else ""
        status = self.status(now)
        return f"[{_clock_text(now - self.t0):>7}] {self.what}: {self.done}{of} images" + (
            f", {status}" if status else ""
        )

    def _show(self, now: float) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=self.done, status=self.status(now))
        elif now - self._last_line >= self.interval:
            self._last_line = now
            self._print(self.line(now))

    def _print(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def startup_text(self) -> str | None:
        """How long it took to start: to the first result, and how long each phase lasted
        (the steps of one phase, "loading the model: 1/2 ...", count as one)."""
        if self.first_result_s is None:
            return None
        marks = [
            (t, "first images" if text == "running" else text.split(":")[0].split(" (")[0])
            for t, text in self.phases
            if not text.startswith("first")
        ]
        marks.append((self.first_result_s, ""))
        steps: dict[str, float] = {}
        for (t, name), (t_next, _) in itertools.pairwise(marks):
            steps[name] = steps.get(name, 0.0) + (t_next - t)
        spent = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in steps.items())
        return f"start-up: {self.first_result_s:.1f} s to the first result ({spent})"
