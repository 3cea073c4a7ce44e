"""End-to-end throughput: a real job (`submit`, through `run_job`) timed as the job sees it.

Ray start-up, actor creation and session loading are reported apart from the processing span;
the stage breakdown comes from the shard loops (execution/stages.py LOOP_STAGES).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from modnet_batch.bench.stats import stability, steady_rate, window_rates
from modnet_batch.execution.driver import run_job
from modnet_batch.execution.plan import JobPlan
from modnet_batch.execution.stages import LOOP_STAGES, POOL_STAGES
from modnet_batch.options import load_job
from modnet_batch.options.bench import BenchConfig
from modnet_batch.results import RunDir, Summary


def job_overrides(
    cfg: BenchConfig, model: str, batch: int, workers: int | None, threads: int | None, out: Path
) -> dict[str, Any]:
    """The `submit` options of one end-to-end run."""
    return {
        "dataset": cfg.dataset,
        "model": model,
        "protocol": cfg.protocol,
        "out": str(out),
        "backend": cfg.backend,
        "device": cfg.device,
        "provider": cfg.provider,
        "workers": workers,
        "threads": threads,
        "instances": cfg.instances,
        "batch_size": batch,
        "decode_reduce": cfg.decode_reduce,
        "decode_threads": cfg.decode_threads,
    }


def run_end_to_end(
    cfg: BenchConfig, model: str, batch: int, workers: int | None, threads: int | None, out: Path
) -> dict[str, Any]:
    """Run one job into the fresh directory `out` and describe its timing; `out` is removed
    afterwards unless cfg.keep_runs."""
    if out.exists():
        shutil.rmtree(out)
    job = load_job(None, job_overrides(cfg, model, batch, workers, threads, out))
    started_epoch = time.time()
    plan_epoch = [started_epoch]

    def on_plan(plan: JobPlan) -> None:
        plan_epoch[0] = time.time()

    outcome = run_job(job, on_plan=on_plan)
    total = time.time() - started_epoch
    try:
        return describe(outcome.summary, out, started_epoch, plan_epoch[0], total, job.to_dict())
    finally:
        if not cfg.keep_runs:
            shutil.rmtree(out, ignore_errors=True)


def describe(
    summary: Summary,
    run: Path,
    started_epoch: float,
    plan_epoch: float,
    total: float,
    job: dict[str, Any],
) -> dict[str, Any]:
    """The bench record of a finished run: `summary` is its summary.json, the epochs are when
    `run_job` was called and when its plan was ready (the backend starts right after)."""
    thr = summary.throughput
    startup = float(summary.startup_seconds)
    # the job's wall less its planning: the backend's start to its end, start-up included
    wall = thr.wall_s - (plan_epoch - started_epoch)
    images = thr.images
    ready_epoch = plan_epoch + startup  # workers up, sessions loaded
    # the job's processing span: workers ready -> last shard result in the driver's hands
    # (Ray's shutdown afterwards is teardown, reported apart)
    run_dir = RunDir(run)
    last = run_dir.last_result_time()
    processing = max((last - ready_epoch) if last else wall - startup, 1e-9)
    teardown = max(0.0, wall - startup - processing)
    finishes = run_dir.alpha_times()
    first = (finishes[0] - ready_epoch) if finishes else None
    workers = max(1, len(thr.per_device))
    stages = thr.stages_s
    loop = {k: float(stages.get(k, 0.0)) / workers for k in LOOP_STAGES}
    in_loops = sum(loop.values())  # the loops' stages add up to their seconds
    # the part of the processing span no shard loop accounts for: dispatch, load imbalance
    loop["outside_shard_loops"] = processing - in_loops
    return {
        "job": job,
        "images": images,
        "failed": summary.images.failed,
        "images_per_s": images / processing,
        "steady_images_per_s": steady_rate(finishes),
        "processing_s": processing,
        "startup_s": startup,
        "plan_s": plan_epoch - started_epoch,
        "teardown_s": teardown,
        "finalize_s": max(0.0, total - wall - (plan_epoch - started_epoch)),
        "total_s": total,
        "time_to_first_result_s": first,
        "time_to_first_result_from_submit_s": (finishes[0] - started_epoch) if finishes else None,
        "per_device": {
            k: {
                "images": v.images,
                "steady_s": v.steady_s,
                "steady_images_per_s": v.steady_images_per_s,
                "images_per_processing_s": v.images / processing,
            }
            for k, v in thr.per_device.items()
        },
        "workers": [
            {k: w.get(k) for k in ("label", "provider", "session_seconds")} for w in summary.workers
        ],
        "stages_wall_s": loop,  # per worker (mean); adds up to processing_s
        "stages_sum_s": sum(loop.values()),
        "pool_cpu_s": {k: float(stages.get(f"cpu_{k}", 0.0)) for k in POOL_STAGES},
        "stability": stability(window_rates([(t, 1) for t in finishes], ready_epoch, finishes[-1]))
        if finishes
        else stability([]),
        "metrics": summary.metrics,
    }
