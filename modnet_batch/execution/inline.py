"""The inline backend: one process, no Ray. On the CPU it runs Ray's layout in threads (one
single-threaded session per core, each with its own decode/finish thread, units handed to
whichever worker is free); on an accelerator one session that every core feeds."""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from modnet_batch.execution.backend import (
    BackendReport,
    OnImages,
    OnPhase,
    OnResult,
    Units,
    no_phase,
)
from modnet_batch.execution.processor import UnitProcessor
from modnet_batch.execution.resources import available_cpus, cpu_split
from modnet_batch.execution.shard_check import ShardReadError, ShardUnreadable
from modnet_batch.execution.units import fill_order
from modnet_batch.execution.worker_spec import WorkerSpec
from modnet_batch.options import JobConfig
from modnet_batch.results import WorkUnit


def worker_specs(job: JobConfig, base: WorkerSpec, cpus: int | None = None) -> list[WorkerSpec]:
    """The workers of an inline job on `cpus` cores.

    CPU: `cpu_split` as on a Ray node (by default one single-threaded session per core, which
    beats one session on every core: resources.cpu_split), each with `--decode-threads` (1)
    threads that prepare and finish its images. An accelerator: one session, and every core
    decodes and scores for it.
    """
    cpus = cpus or available_cpus()
    if job.device != "cpu":
        engine = replace(base.engine, threads=job.threads or cpus)
        threads = job.decode_threads or cpus
        label = f"inline:{job.device}"
        return [replace(base, engine=engine, label=label, decode_threads=threads, cpus=float(cpus))]
    split = cpu_split(job.workers, job.threads, cpus)
    engine = replace(base.engine, threads=split.threads)
    specs = []
    for w in range(split.workers):
        label = "inline:cpu" if split.workers == 1 else f"inline:cpu{w}"
        specs.append(
            replace(
                base,
                engine=engine,
                label=label,
                decode_threads=job.decode_threads or 1,
                cpus=float(split.threads),
            )
        )
    return specs


class InlineBackend:
    def run(
        self,
        job: JobConfig,
        base: WorkerSpec,
        units: Units,
        on_result: OnResult,
        on_images: OnImages,
        on_phase: OnPhase = no_phase,
    ) -> BackendReport:
        t0 = time.perf_counter()
        specs = worker_specs(job, base)
        engine = specs[0].engine
        many = f"{len(specs)} sessions, " if len(specs) > 1 else ""
        on_phase(f"loading the model ({base.engine_name}, {many}{engine.provider})")
        processors = _open(specs)
        on_phase("running")
        report = BackendReport(startup_seconds=time.perf_counter() - t0)
        report.workers = [p.info() for p in processors]
        try:
            workers = _Workers(processors, on_images, held=job.shards_in_flight)
            workers.run(units(len(processors)), on_result, report)
        finally:
            for p in processors:
                p.close()
        return report


def _open(specs: list[WorkerSpec]) -> list[UnitProcessor]:
    """The workers' processors, their sessions loading side by side; none left open if one
    fails."""
    with ThreadPoolExecutor(len(specs)) as opening:
        futures = [opening.submit(UnitProcessor, spec) for spec in specs]
    opened = [f.result() for f in futures if f.exception() is None]
    if len(opened) < len(futures):
        for p in opened:
            p.close()
        raise next(e for f in futures if (e := f.exception()) is not None)
    return opened


class _Workers:
    """Units go to the workers as they free up, by `fill_order` (every worker gets one before any
    gets a second), up to `held` each (`--shards-in-flight`), a thread for each: the one it
    runs and those that prepare their first images meanwhile (UnitProcessor.process).

    Results come back to the calling thread, which records each as it arrives. An error in a
    worker stops the dispatch: the units already running finish, and it is raised here. A unit
    that cannot be read is reported as failed and the job goes on. When the calling thread
    unwinds (an error in recording, a KeyboardInterrupt), the workers stop at their next image.
    """

    def __init__(self, processors: list[UnitProcessor], on_images: OnImages, held: int) -> None:
        self.processors = processors
        self.held = max(1, held)
        self._on_images = on_images
        self._images_lock = threading.Lock()
        self._inbox: list[queue.SimpleQueue[WorkUnit | None]] = [
            queue.SimpleQueue() for _ in processors
        ]
        # (worker, kind, value): kind is result, failed (unreadable unit), error, or skipped (a
        # unit handed out but not started once the dispatch stopped)
        self._done: queue.SimpleQueue[tuple[int, str, Any]] = queue.SimpleQueue()
        self._stop = threading.Event()

    def run(self, tasks: list[WorkUnit], on_result: OnResult, report: BackendReport) -> None:
        threads = [
            threading.Thread(target=self._serve, args=(w,), name=f"{p.spec.label}-{k}")
            for w, p in enumerate(self.processors)
            for k in range(self.held)
        ]
        for t in threads:
            t.start()
        finished = False
        try:
            self._dispatch(deque(tasks), on_result, report)
            finished = True
        finally:
            self._stop.set()  # units not yet started are not started
            if not finished:  # and those running stop at their next image
                for p in self.processors:
                    p.stop()
            for inbox in self._inbox:
                for _ in range(self.held):
                    inbox.put(None)
            for t in threads:
                t.join()

    def _dispatch(self, todo: deque[WorkUnit], on_result: OnResult, report: BackendReport) -> None:
        held = [0] * len(self.processors)
        error: BaseException | None = None
        while True:
            if error is None:
                for w in fill_order(held, len(todo), self.held):
                    self._inbox[w].put(todo.popleft())
                    held[w] += 1
            if not any(held):
                break
            w, kind, value = self._done.get()
            held[w] -= 1  # every unit handed out comes back once, whatever its kind
            if kind == "result":
                on_result(value)
            elif kind == "failed":
                report.failed[value[0]] = value[1]
            elif kind == "error":
                self._stop.set()
                error = error or value
        if error is not None:
            raise error

    def _serve(self, w: int) -> None:
        processor = self.processors[w]
        label = processor.spec.label
        while (task := self._inbox[w].get()) is not None:
            if self._stop.is_set():
                self._done.put((w, "skipped", None))
                continue
            try:
                result = processor.process(task, lambda n: self._images(label, n))
            except (ShardUnreadable, ShardReadError) as exc:  # the job goes on, unit named
                self._done.put((w, "failed", (task.name, str(exc))))
            except BaseException as exc:  # raised on the calling thread
                self._done.put((w, "error", exc))
            else:
                self._done.put((w, "result", result))

    def _images(self, label: str, n: int) -> None:
        with self._images_lock:
            self._on_images(label, n)
