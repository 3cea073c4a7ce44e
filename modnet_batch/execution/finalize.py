"""Finalising a job: reduce every finished unit (this attempt's and earlier ones') into
`metrics.parquet` and `summary.json`, exactly (sums, never averages of averages)."""

from __future__ import annotations

import datetime as dt
import socket
from typing import Any

from modnet_batch import __version__
from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution import units
from modnet_batch.execution.backend import BackendReport
from modnet_batch.execution.plan import JobPlan, batch_size
from modnet_batch.metrics import DATASET, ImageRow, MetricAccumulator
from modnet_batch.pipeline import DecodeMode
from modnet_batch.results import (
    ImageCounts,
    JobFacts,
    Summary,
    Throughput,
    UnitCounts,
    UnitResult,
)
from modnet_batch.storage import is_uri, resolved, shown


def finalize(
    plan: JobPlan,
    fresh: list[UnitResult],
    report: BackendReport,
    wall: float,
    started: float | None = None,
) -> Summary:
    """Reduce every finished unit (this run's and earlier ones') into the run's results."""
    results = plan.run.load_results()
    acc = MetricAccumulator()
    rows: list[ImageRow] = []
    for res in results:
        acc.merge(MetricAccumulator.from_dict(res.accumulator))
        rows.extend(res.rows)
    rows.extend(_failed_rows(plan, report))
    rows.sort(key=lambda r: r.image_id)
    plan.run.write_rows(rows)
    check = _decode_check(plan, rows, fresh)
    stats = acc.summary()
    summary = Summary(
        images=_image_counts(plan, rows, fresh, int(stats["scored"] or 0)),
        metrics={k: stats[k] for k in DATASET},
        throughput=Throughput.measure(fresh, wall).after(_previous_throughput(plan)),
        units=UnitCounts(
            total=len({r.unit for r in results} | report.failed.keys()),
            processed=len(fresh),
            skipped_done=len(plan.done_before),
            failed=sorted(report.failed),
            retries=report.retries,
        ),
        complete=not report.failed and _all_covered(plan, {r.unit for r in results}),
        job=_job_facts(plan, check),
        decode_check=check,
        decoding=_decoding(plan, results, report),
        started=started,
        timeline=sorted((r.timing() for r in fresh), key=lambda t: t["started"] or 0.0),
        startup_seconds=report.startup_seconds,
        dispatch=report.dispatch,
        workers=report.workers,
        warnings=plan.warnings,
        accumulator=acc.to_dict(),
        finished=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        driver=socket.gethostname(),
        version=__version__,
    )
    plan.run.write_summary(summary)
    return summary


def _failed_rows(plan: JobPlan, report: BackendReport) -> list[ImageRow]:
    """An error row for each image of a unit that failed every retry (transient: a resume runs
    the unit again); a retry that failed again keeps the unit's earlier rows."""
    shards = {s.name: s for s in plan.dataset.shards}
    rows: list[ImageRow] = []
    for unit_name, reason in sorted(report.failed.items()):
        if unit_name in plan.retrying:
            continue
        task = plan.unit_tasks.get(unit_name)
        groups = None if task is None or task.row_groups is None else list(task.row_groups)
        try:
            ids = plan.dataset.image_ids(shards[units.parse_unit(unit_name)[0]], groups)
        except Exception:  # an unreadable shard: its ids are lost with it, its name is not
            ids = [unit_name]
        error = f"shard {unit_name} failed: {reason}"
        rows.extend(ImageRow(i, error=error, transient=True) for i in ids)
    return rows


def _image_counts(
    plan: JobPlan, rows: list[ImageRow], fresh: list[UnitResult], scored: int
) -> ImageCounts:
    failed = sum(r.error is not None for r in rows)
    return ImageCounts(
        total=plan.dataset.num_images,
        scored=scored,
        failed=failed,
        unscored=len(rows) - failed - scored,
        transient=sum(r.error is not None and r.transient for r in rows),
        retried=sum(len(r.rows) for r in fresh if r.unit in plan.retrying),
    )


def _job_facts(plan: JobPlan, check: dict[str, Any] | None) -> JobFacts:
    """How the numbers were made."""
    job = plan.job
    return JobFacts(
        dataset=shown(resolved(job.dataset)),
        protocol=job.protocol,
        model=shown(job.model) if is_uri(job.model) else str(plan.model_path),
        variant=plan.model_info,
        backend=job.backend,
        address=job.address,
        decode=plan.decode.describe(
            scored=plan.dataset.num_with_matte > 0,
            check=check,
            device=job.decoding == "device",
        ),
        batch_size=batch_size(job),
        engine=job.engine,
    )


def _decoding(
    plan: JobPlan, results: list[UnitResult], report: BackendReport
) -> dict[str, Any] | None:
    """`--decoding device`: what decoded the finished units' images (the device, or the CPU
    and why; a resumed job's earlier attempts included), and this attempt's workers' decoders."""
    if plan.job.decoding != "device":
        return None
    counts: dict[str, int] = {}
    for result in results:
        for key, n in result.decoded.items():
            counts[key] = counts.get(key, 0) + n
    fallback = {k.removeprefix("cpu: "): n for k, n in sorted(counts.items()) if k != "device"}
    return {
        "on": "device",
        "decoders": sorted({str(w["decoder"]) for w in report.workers if w.get("decoder")}),
        "device": counts.get("device", 0),
        "cpu": sum(fallback.values()),
        "fallback": fallback,
        "approximate": plan.dataset.num_with_matte > 0,
    }


def _all_covered(plan: JobPlan, done: set[str]) -> bool:
    """Whether the finished units `done` cover every row group of every shard."""
    cover = units.covered(done, plan.groups)
    return all(units.is_done(s.name, plan.groups[s.name], cover) for s in plan.dataset.shards)


def _decode_check(
    plan: JobPlan, rows: list[ImageRow], fresh: list[UnitResult]
) -> dict[str, Any] | None:
    """A scored job with a reduced decode measures how far that moved its metrics (on a sample,
    again after each attempt that did work; a no-op resume keeps the last measurement)."""
    if (
        (plan.decode is DecodeMode.EXACT and plan.job.decoding != "device")
        or not plan.dataset.num_with_matte
        or not plan.job.decode_check
    ):
        return None
    if not fresh and plan.resumed and plan.run.summary.exists():
        try:
            return plan.run.read_summary().decode_check
        except ModnetBatchError:
            pass
    from modnet_batch.execution.decode_check import measure

    try:
        check = measure(
            plan.dataset,
            rows,
            plan.job.protocol,
            str(plan.model_path),
            plan.job.decode_check,
            plan.job.engine,
        )
    except Exception as exc:  # the results stand; only the measurement of their error is lost
        plan.warnings.append(f"the decode check failed ({type(exc).__name__}: {exc})")
        return None
    return None if check is None else check.to_dict()


def _previous_throughput(plan: JobPlan) -> Throughput | None:
    """What earlier attempts of a resumed job measured (None for a fresh job)."""
    if not plan.resumed or not plan.run.summary.exists():
        return None
    try:
        return plan.run.read_summary().throughput
    except ModnetBatchError:
        return None  # an unreadable summary is rewritten; the markers hold the results
