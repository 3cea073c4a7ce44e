"""Execution backends: a registry of ways to run shard tasks (inline in this process, or on Ray)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from modnet_batch.config import JobConfig
from modnet_batch.execution.processor import ShardResult, ShardTask, WorkerSpec

OnResult = Callable[[ShardResult], None]
OnImages = Callable[[str, int], None]  # (worker label, images just finished)


@dataclass
class BackendReport:
    """What a backend says about its run beyond the shard results."""

    failed: dict[str, str] = field(default_factory=dict)  # shard -> last error
    startup_seconds: float = 0.0
    workers: list[dict[str, Any]] = field(default_factory=list)  # one entry per actor
    retries: int = 0


class Backend(Protocol):
    def run(
        self,
        job: JobConfig,
        base: WorkerSpec,
        tasks: list[ShardTask],
        on_result: OnResult,
        on_images: OnImages,
    ) -> BackendReport: ...


class InlineBackend:
    """One process, no Ray: the single-process reference and a debugging aid."""

    def run(
        self,
        job: JobConfig,
        base: WorkerSpec,
        tasks: list[ShardTask],
        on_result: OnResult,
        on_images: OnImages,
    ) -> BackendReport:
        import time

        from modnet_batch.execution.processor import ShardProcessor
        from modnet_batch.execution.resources import available_cpus

        t0 = time.perf_counter()
        # one process, one session: it gets every core unless --threads says otherwise
        spec = replace(base, threads=job.threads or available_cpus(), label="inline:cpu")
        processor = ShardProcessor(spec)
        info = {
            "label": spec.label,
            "threads": spec.threads,
            "batch_size": spec.batch_size,
            "provider": processor.session.provider,
            "session_seconds": processor.session_seconds,
        }
        report = BackendReport(startup_seconds=time.perf_counter() - t0, workers=[info])
        try:
            for task in tasks:
                on_result(processor.process(task, lambda n: on_images(spec.label, n)))
        finally:
            processor.close()
        return report


def get_backend(name: str) -> Backend:
    if name == "inline":
        return InlineBackend()
    from modnet_batch.execution.ray_backend import RayBackend

    return RayBackend()
