"""Live progress (reporting/live.py) on a scripted clock: phases, rates over the last seconds and
the mean, ETA, failures, per-device figures, plain lines when not on a terminal."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from modnet_batch.reporting.live import LiveProgress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _plain(interval: float = 5.0) -> tuple[LiveProgress, io.StringIO, Clock]:
    buf, clock = io.StringIO(), Clock()
    console = Console(file=buf, width=200, force_terminal=False)
    live = LiveProgress(console, "submit", interval_s=interval, clock=clock)
    return live, buf, clock


def test_not_on_a_terminal_it_prints_plain_phase_and_periodic_lines() -> None:
    live, buf, clock = _plain(interval=5.0)
    assert not live.interactive
    live.phase("starting Ray")
    clock.now += 6
    live.phase("loading the model: 0/2 workers ready")
    live.begin(100)
    clock.now += 4
    live.images("cpu0@n1", 1)  # the first result: a phase line and a progress line
    for _ in range(9):  # one image/s on each of two devices, for 9 s
        clock.now += 1
        live.images("cpu0@n1", 1)
        live.images("cpu1@n1", 1)
    live.failed(2)
    clock.now += 0.5
    live.close()
    lines = buf.getvalue().splitlines()
    assert lines[0] == "[   0:00] submit: starting Ray"
    assert lines[1] == "[   0:06] submit: loading the model: 0/2 workers ready"
    assert lines[2] == "[   0:10] submit: first result after 10.0 s"
    assert lines[3].startswith("[   0:10] submit: 1/100 images")
    # one line per 5 s, not one per image, and a last line at close
    assert len(lines) == 6, lines
    assert "\x1b" not in buf.getvalue()  # no control characters in a log
    last = lines[-1]
    now = live.rate.current(clock.now)
    assert now is not None and 1.8 < now < 2.1  # two devices at 1 img/s each
    assert last.startswith(
        f"[   0:20] submit: 19/100 images, {now:.2f} img/s now, 2.00 steady img/s"
    )
    assert f"ETA {round(81 / now) // 60}:{round(81 / now) % 60:02d}" in last  # 81 left
    assert "2 failed" in last
    assert "cpu0 10 (" in last and "cpu1 9 (" in last


def test_current_rate_follows_a_slowdown_that_the_mean_hides() -> None:
    live, _, clock = _plain()
    live.begin(1000)
    for _ in range(60):  # 10 img/s for a minute
        clock.now += 0.1
        live.images("gpu0", 1)
    for _ in range(20):  # then 1 img/s
        clock.now += 1
        live.images("gpu0", 1)
    status = live.status(clock.now)
    now_rate = live.rate.current(clock.now)
    mean_rate = live.rate.mean(clock.now, live.done)
    assert now_rate == 1.0  # the last 10 s
    assert mean_rate == pytest.approx(80 / 25.9)  # 80 images since the first, 25.9 s ago
    assert status.startswith("1.00 img/s now, 3.09 steady img/s")
    assert "ETA 15:20" in status  # 920 left at the current 1 img/s, not at the mean


def test_startup_text_sums_each_phase() -> None:
    buf, clock = io.StringIO(), Clock()
    console = Console(file=buf, width=200, force_terminal=False)
    live = LiveProgress(console, "submit", clock=clock, first_step="checking the job (dataset)")
    clock.now += 1
    live.phase("starting Ray")
    clock.now += 5
    live.phase("loading the model: 0/2 workers ready")
    clock.now += 2
    live.phase("loading the model: 2/2 workers ready")
    live.phase("running")
    clock.now += 1.5
    assert live.startup_text() is None  # nothing finished yet
    live.images("cpu0", 1)
    assert "checking" not in buf.getvalue()  # the first step is timed, not printed
    assert live.startup_text() == (
        "start-up: 9.5 s to the first result (checking the job 1.0 s, starting Ray 5.0 s, "
        "loading the model 2.0 s, first images 1.5 s)"
    )


def test_on_a_terminal_it_is_one_redrawn_bar() -> None:
    buf, clock = io.StringIO(), Clock()
    console = Console(file=buf, width=160, force_terminal=True)
    live = LiveProgress(console, "matte", clock=clock)
    assert live.interactive
    live.phase("starting Ray")
    live.begin(4)
    for _ in range(4):
        clock.now += 1
        live.images("cpu0", 1)
    live.close()
    text = buf.getvalue()
    assert "matte" in text and "4/4" in text and "\x1b" in text
    assert "[   0:" not in text  # no plain lines on a terminal
