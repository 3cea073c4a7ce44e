"""Stopping a job by a signal: SIGTERM (a scheduler, `modnet-batch stop`, `kill`) and SIGINT
(Ctrl-C) are noted by a handler and raised as JobInterrupted at the next safe point of the
driver (`check()`: each turn of the dispatch loop, each image of an inline shard), so that the
job unwinds like on any error: Ray is shut down, no traceback is printed, and the finished
shards stay for a resume. A second signal acts as it would without this module."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from modnet_batch.errors import JobInterrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_fired: list[int] = []  # the signal received inside the active block, if any
_previous: list[dict[int, Any]] = []  # the handlers the active block replaced


def _handler(signum: int, frame: FrameType | None) -> None:
    _fired.append(signum)
    if _previous:  # the next one is handled as before the block (a second Ctrl-C aborts)
        for s, old in _previous[-1].items():
            signal.signal(s, old)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT stop the job at its next `check()`. Main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _previous.append({s: signal.signal(s, _handler) for s in SIGNALS})
    _fired.clear()
    try:
        yield
    finally:
        for s, old in _previous.pop().items():
            signal.signal(s, old)
        _fired.clear()


def check() -> None:
    """Raise JobInterrupted if a signal came (a no-op outside a stop_on_signals block)."""
    if _fired:
        raise JobInterrupted(f"stopped by {signal.Signals(_fired[0]).name}", _fired[0])


def rearm() -> None:
    """Install the handler again: `ray.init` replaces SIGTERM's with one that exits (and its core
    worker with one that prints a stack); call it after `ray.init`."""
    if _previous and not _fired and threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, _handler)
