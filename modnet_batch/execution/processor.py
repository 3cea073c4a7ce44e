"""The worker every backend runs: it opens the engine's session once, measures its batch size
if asked, and runs work units through the unit loop (execution.unit_loop), one at a time on its
thread while its pool prepares and finishes images around it.

Each step is the job's ImagePipeline (modnet_batch.pipeline) and the engine's session; the
engine says what it does on its device (engine.device_work), the loop only schedules.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import cv2

from modnet_batch.data.dataset import Record
from modnet_batch.engine import Session, open_session
from modnet_batch.engine.device_work import DevicePreparer, DeviceWork
from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution import signals
from modnet_batch.execution.batching import tune_batch
from modnet_batch.execution.device_prepare import DeviceGroups
from modnet_batch.execution.finish import Finisher
from modnet_batch.execution.infer import inference_for
from modnet_batch.execution.prepare import Preparer
from modnet_batch.execution.shard_check import CheckedShards
from modnet_batch.execution.stages import Item
from modnet_batch.execution.unit_loop import LoopParts, UnitRun
from modnet_batch.execution.worker_spec import WorkerSpec
from modnet_batch.model.variants import resolve_model
from modnet_batch.pipeline import ImagePipeline
from modnet_batch.results import RunDir, UnitResult, WorkUnit
from modnet_batch.storage import is_uri


class Stopped(Exception):
    """A unit given up on by UnitProcessor.stop: no result, nothing recorded."""


class UnitProcessor:
    """Loads the model once and turns work units into alpha files and metric rows."""

    def __init__(self, spec: WorkerSpec, session: Session | None = None) -> None:
        self.spec = spec
        self.pipeline = ImagePipeline(
            spec.protocol, spec.decode, device_inputs=spec.on_device.score
        )
        writes = spec.writes
        self.run = RunDir(spec.run_dir, writes.outputs_dir)
        if not writes.return_files:  # else the driver's run directory may not exist here
            self.run.alpha.mkdir(parents=True, exist_ok=True)
        cv2.setNumThreads(1)  # the pool below is the parallelism; never oversubscribe the cores
        t0 = time.perf_counter()
        self.session = session or _open(spec)
        self.session_seconds = time.perf_counter() - t0
        work = _device_work(spec, self.session)
        self.batch_size = spec.batch_size
        self.batch_tuning: dict[str, Any] | None = None
        if not self.batch_size:
            h, w = self.pipeline.protocol.network_size(*spec.tune_hw)
            choice = tune_batch(self.session.run, (3, h, w))
            self.batch_size, self.batch_tuning = choice.batch_size, choice.to_dict()
        # after the batch is measured: the group budget reads the device's free memory
        self.device_preparer: DevicePreparer | None = None
        if work is not None and spec.on_device.prepare:
            self.device_preparer = work.open_preparer(spec.on_device.group_pixels)
        self._pool = ThreadPoolExecutor(spec.decode_threads, thread_name_prefix="pipeline")
        self.parts = self._loop_parts()
        self.images_done = 0  # read by progress polls from another thread
        self.running: str | None = None  # the unit holding the loop (progress polls read it)
        self._lock = threading.Lock()
        # A worker holding two units (a threaded Ray actor, an inline worker's second thread)
        # calls process() for the queued one while one runs: the loops take turns (one
        # session, one pool), but the queued one starts preparing first.
        self._loop_lock = threading.Lock()
        self._waiting = 0  # process() calls waiting for the loop
        self._checked = CheckedShards()
        self._stopped = threading.Event()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def stop(self) -> None:
        """Stop the units running on other threads at their next image (they raise Stopped);
        for a caller that gives up on them (an inline job unwinding from an error)."""
        self._stopped.set()

    def _check(self) -> None:
        signals.check()
        if self._stopped.is_set():
            raise Stopped(f"worker {self.spec.label} was stopped")

    def info(self) -> dict[str, Any]:
        """What the worker is, for the summary's `workers`: its label, threads, batch size, the
        provider its session runs on, how long the session took to open."""
        spec = self.spec
        return {
            "label": spec.label,
            "threads": spec.engine.threads,
            "cpus": spec.cpus,
            "decode_threads": spec.decode_threads,
            "batch_size": self.batch_size,
            "batch_tuning": self.batch_tuning,
            "provider": self.session.runs_on,
            "engine": spec.engine_name,
            "precision": spec.engine.precision,
            "session_seconds": self.session_seconds,
            "decoder": self.decoder_name,
        }

    @property
    def decoder_name(self) -> str | None:
        """What decodes photos on the device (None: the CPU threads decode)."""
        return None if self.device_preparer is None else self.device_preparer.name

    def _loop_parts(self) -> LoopParts:
        spec, writes = self.spec, self.spec.writes
        preparer = Preparer(
            self.pipeline,
            self.run,
            writes.outputs,
            keep_existing=writes.keep_existing,
            on_device=self.device_preparer is not None,
        )
        return LoopParts(
            pipeline=self.pipeline,
            pool=self._pool,
            preparer=preparer,
            inference=inference_for(self.session, self.pipeline, writes.outputs, spec.on_device),
            finisher=Finisher(
                self.pipeline, self.run, writes.outputs, return_files=writes.return_files
            ),
            batch_size=self.batch_size,
            max_prepared=max(2 * self.batch_size, 2 * spec.decode_threads),
            model=spec.engine.model,
            label=spec.label,
            needs_pixels=writes.outputs.needs_pixels,
            open_groups=None if self.device_preparer is None else self._device_groups,
            check=self._check,
        )

    def _device_groups(self) -> DeviceGroups:
        assert self.device_preparer is not None

        def on_cpu(record: Record, reason: str) -> Item:
            return self.parts.preparer.prepare(record, cpu_only=reason)

        return DeviceGroups(
            self.device_preparer,
            self.pipeline,
            on_cpu,
            max_images=self.batch_size,
            keep_rgb=self.spec.writes.outputs.needs_pixels,
        )

    def process(self, unit: WorkUnit, on_image: Callable[[int], None] | None = None) -> UnitResult:
        """Run `unit` through the stages; `on_image(1)` after each image."""
        self._checked.check(unit)
        run = UnitRun(self.parts, unit, lambda: self._count(on_image))
        extra: dict[str, float] = {}
        if not self._loop_lock.acquire(blocking=False):
            # Another unit holds the loop (this worker's other thread runs it): start preparing
            # now so that our first images are ready when it ends.
            extra["read_ahead"] = run.read_ahead()
            self._wait_for_loop()
        start, started = time.perf_counter(), time.time()
        held = True
        self.running = unit.name
        try:
            run.run()
            seconds = time.perf_counter() - start
            if self._waiting:  # the next unit infers while our last images finish
                self.running = None
                self._loop_lock.release()
                held = False
                extra["drain_overlapped"] = run.drain_overlapped()
            else:
                run.drain()
                seconds = time.perf_counter() - start
        finally:
            if held:
                self.running = None
                self._loop_lock.release()
        return run.result(seconds, started, extra)

    def _wait_for_loop(self) -> None:
        with self._lock:
            self._waiting += 1
        self._loop_lock.acquire()
        with self._lock:
            self._waiting -= 1

    def _count(self, on_image: Callable[[int], None] | None) -> None:
        with self._lock:
            self.images_done += 1
        if on_image is not None:
            on_image(1)


def _open(spec: WorkerSpec) -> Session:
    # spinning CPU threads would take the cores from the prepare/finish pool
    engine = replace(spec.engine, spin=spec.engine.provider != "cpu")
    if is_uri(engine.model):  # fetched by this worker into its own node's cache
        engine = replace(engine, model=str(resolve_model(engine.model)))
    return open_session(engine, spec.engine_name)


def _device_work(spec: WorkerSpec, session: Session) -> DeviceWork | None:
    """The session's device work where the job asks for it; a one-line error where the engine
    has none or the combination cannot run."""
    work = session.device_work
    if spec.on_device.score and work is None:
        raise ModnetBatchError(
            f"engine {spec.engine_name} cannot score on its device; run without device "
            "scoring (only the torch engine has it)"
        )
    if spec.on_device.prepare:
        if work is None:
            raise ModnetBatchError(
                f"--decoding device needs the torch engine (this job: {spec.engine_name}); "
                "use --engine torch or --decoding cpu"
            )
        if spec.on_device.score:
            raise ModnetBatchError(
                "--decoding device scores on the CPU threads; use --scoring cpu with it"
            )
    return work
