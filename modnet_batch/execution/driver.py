"""The job driver: plan the work units (execution/plan.py), hand them to a backend, persist
each result as it arrives, and finalise the run's results (execution/finalize.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from modnet_batch.data.dataset import Dataset
from modnet_batch.engine import EngineSpec, default_provider
from modnet_batch.errors import JobInterrupted, ModnetBatchError, is_storage_error, storage_error
from modnet_batch.execution.backend import BackendReport, no_phase
from modnet_batch.execution.backends import get_backend
from modnet_batch.execution.finalize import finalize
from modnet_batch.execution.plan import (
    JobPlan,
    batch_size,
    compute_precision,
    device_scoring,
    plan_job,
)
from modnet_batch.execution.worker_spec import DeviceStages, WorkerSpec, Writes
from modnet_batch.options import JobConfig
from modnet_batch.results import Summary, UnitResult
from modnet_batch.storage import AnyPath, argument

ProgressHook = Callable[[str, int], None]


# Exit statuses of a job (`submit`, and the entrypoint of a job on a cluster).
EXIT_OK = 0  # every image has its result
EXIT_INCOMPLETE = 3  # some shards failed every retry; a resume runs them
EXIT_IMAGES_FAILED = 4  # every shard finished, but some images are error rows


@dataclass
class JobOutcome:
    summary: Summary
    run_dir: AnyPath
    complete: bool
    warnings: list[str]
    logs: str | None = None  # where to look when units failed (the backend's logs)

    @property
    def exit_status(self) -> int:
        if not self.complete:
            return EXIT_INCOMPLETE
        return EXIT_IMAGES_FAILED if self.summary.images.failed else EXIT_OK


def _os_error(exc: OSError, resume: bool = True) -> ModnetBatchError:
    """A write the run directory's storage refused (full, read-only, forbidden) as its one-line
    StorageError; any other OSError (a network error, Ray's own files) as itself, one line."""
    if is_storage_error(exc) and (exc.filename or getattr(exc, "permanent", False)):
        return storage_error(exc, resume=resume)
    if hasattr(exc, "permanent"):  # storage.UriError: one line naming the URI and the fix
        return ModnetBatchError(str(exc))
    return ModnetBatchError(f"{type(exc).__name__}: {exc}")


def _first_size(dataset: Dataset, job: JobConfig) -> tuple[int, int]:
    """The (H, W) of the dataset's first readable image: what an accelerator measures its
    batches with (only read when it measures; a damaged shard is the workers' to report)."""
    if batch_size(job):
        return WorkerSpec.tune_hw
    try:
        first = next(dataset.records(), None)
    except (ModnetBatchError, OSError):
        return WorkerSpec.tune_hw
    return (first.height, first.width) if first is not None else WorkerSpec.tune_hw


def worker_spec(plan: JobPlan) -> WorkerSpec:
    job = plan.job
    engine = EngineSpec(
        # the local copy (a URI's is in the cache): it travels to the workers by the object store
        model=str(plan.model_path),
        provider=default_provider(job.device, job.provider),
        precision=compute_precision(job, str(plan.model_info.get("precision", "fp32"))),
        channels_last=job.channels_last,
        compile=job.torch_compile,
    )
    return WorkerSpec(
        engine=engine,
        engine_name=job.engine,
        protocol=job.protocol,
        run_dir=argument(plan.run.root),
        batch_size=batch_size(job),
        tune_hw=_first_size(plan.dataset, job),
        decode_threads=job.decode_threads or 1,
        decode=plan.decode,
        writes=Writes(
            outputs=plan.outputs,
            outputs_dir=argument(plan.run.outputs),
            keep_existing=plan.resumed and plan.dataset.num_with_matte == 0,
        ),
        on_device=DeviceStages(
            prepare=job.decoding == "device",
            group_pixels=job.decode_megapixels * 1_000_000,
            score=device_scoring(job),
        ),
    )


class _Recorder:
    """Persists each unit's result as it arrives: its returned files, then its marker."""

    def __init__(self, plan: JobPlan, on_unit: Callable[[UnitResult], None] | None) -> None:
        self.plan = plan
        self.on_unit = on_unit
        self.fresh: list[UnitResult] = []

    def __call__(self, result: UnitResult) -> None:
        run = self.plan.run
        if result.files:  # a worker that cannot see the run directory: its files, then the marker
            run.write_returned(result.files)
            result = replace(result, files=[])
        before = self.plan.retrying.get(result.unit)
        run.write_result(result if before is None else before.with_retry(result))
        # the rows are in the marker now; kept in memory they grew the driver by about 1 KB per
        # image (measured: +17 MiB over 18k images), and finalize reads the markers. A resume's
        # retried rows stay: the summary counts them (and there are few)
        retried = result.unit in self.plan.retrying
        self.fresh.append(result if retried else replace(result, rows=[]))
        if self.on_unit is not None:
            self.on_unit(result)


def run_job(
    job: JobConfig,
    *,
    on_images: ProgressHook | None = None,
    on_plan: Callable[[JobPlan], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
    on_unit: Callable[[UnitResult], None] | None = None,
) -> JobOutcome:
    """Run (or resume) a job to completion and write its results.

    A run directory that cannot be written (full, read-only) stops the job with one
    StorageError line; a signal stops it with JobInterrupted. Either way the units already
    finished are kept and the same command resumes.
    """
    started, started_at = time.perf_counter(), time.time()  # the job's wall: planning included
    try:
        plan = plan_job(job)
    except OSError as exc:
        raise _os_error(exc, resume=False) from None
    if on_plan is not None:
        on_plan(plan)
    recorder = _Recorder(plan, on_unit)
    report = BackendReport()
    try:
        if plan.tasks:
            report = get_backend(job.backend).run(
                job,
                worker_spec(plan),
                plan.work_units,
                recorder,
                on_images or (lambda w, n: None),
                on_phase or no_phase,
            )
        wall = time.perf_counter() - started
        summary = finalize(plan, recorder.fresh, report, wall, started_at)
    except OSError as exc:
        raise _os_error(exc) from None
    except JobInterrupted as exc:
        kept = len(plan.run.done_units())
        raise JobInterrupted(
            f"{exc}: {kept} finished work unit(s) of {len(plan.dataset.shards)} shard(s) are "
            f"kept in {plan.run.root}; run the same command again to resume",
            exc.signum,
        ) from None
    finally:
        plan.run.release()  # another job may write the run now
    return JobOutcome(
        summary=summary,
        run_dir=plan.run.root,
        complete=not report.failed,
        warnings=plan.warnings,
        logs=report.logs,
    )
