"""The backend interface: a way to run work units (shard tasks), and what it reports beyond
their results."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from modnet_batch.execution.worker_spec import WorkerSpec
from modnet_batch.options import JobConfig
from modnet_batch.results import UnitResult, WorkUnit

OnResult = Callable[[UnitResult], None]
# the job's work units for a number of workers (JobPlan.work_units): a backend calls it once it
# knows how many workers it has
Units = Callable[[int], list[WorkUnit]]
OnImages = Callable[[str, int], None]  # (worker label, images just finished)
OnPhase = Callable[[str], None]  # a start-up step, in words ("starting 2 workers", ...)


def no_phase(_text: str) -> None:
    """The default phase hook: nobody is watching."""


@dataclass
class BackendReport:
    """What a backend says about its run beyond the shard results."""

    failed: dict[str, str] = field(default_factory=dict)  # work unit -> last error
    startup_seconds: float = 0.0
    workers: list[dict[str, Any]] = field(default_factory=list)  # one entry per actor
    retries: int = 0
    # the Ray driver's own cost of dispatching (ray_dispatch_stats.DispatchStats); None inline
    dispatch: dict[str, Any] | None = None
    # where the backend's own logs are, for a run where units failed (None: nothing to look at)
    logs: str | None = None


class Backend(Protocol):
    def run(
        self,
        job: JobConfig,
        base: WorkerSpec,
        units: Units,
        on_result: OnResult,
        on_images: OnImages,
        on_phase: OnPhase = no_phase,
    ) -> BackendReport: ...
