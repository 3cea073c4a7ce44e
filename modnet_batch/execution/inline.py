"""The inline backend: one process, no Ray; the single-process reference and a debugging aid."""

from __future__ import annotations

import time
from dataclasses import replace

from modnet_batch.execution.backend import (
    BackendReport,
    OnImages,
    OnPhase,
    OnResult,
    Units,
    no_phase,
)
from modnet_batch.execution.processor import UnitProcessor
from modnet_batch.execution.resources import available_cpus
from modnet_batch.execution.shard_check import ShardReadError, ShardUnreadable
from modnet_batch.execution.worker_spec import WorkerSpec
from modnet_batch.options import JobConfig


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
        # one process, one session: it gets every core unless --threads says otherwise
        cpus = available_cpus()
        engine = replace(base.engine, threads=job.threads or cpus)
        # on an accelerator the process's cores decode and score for it
        decode_threads = job.decode_threads or (1 if job.device == "cpu" else cpus)
        label = "inline:cpu" if job.device == "cpu" else f"inline:{job.device}"
        spec = replace(
            base, engine=engine, label=label, decode_threads=decode_threads, cpus=float(cpus)
        )
        on_phase(f"loading the model ({base.engine_name}, {engine.provider})")
        processor = UnitProcessor(spec)
        on_phase("running")
        info = {
            "label": spec.label,
            "threads": engine.threads,
            "cpus": spec.cpus,
            "decode_threads": spec.decode_threads,
            "batch_size": processor.batch_size,
            "batch_tuning": processor.batch_tuning,
            "provider": processor.session.runs_on,
            "engine": spec.engine_name,
            "precision": engine.precision,
            "session_seconds": processor.session_seconds,
            "decoder": processor.decoder_name,
        }
        report = BackendReport(startup_seconds=time.perf_counter() - t0, workers=[info])
        try:
            for task in units(1):
                try:
                    result = processor.process(task, lambda n: on_images(spec.label, n))
                except (ShardUnreadable, ShardReadError) as exc:  # the job goes on, shard named
                    report.failed[task.name] = str(exc)
                    continue
                on_result(result)
        finally:
            processor.close()
        return report
