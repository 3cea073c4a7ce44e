"""The job driver: plan the work units, hand them to a backend, persist each result as it
arrives, and reduce everything into `metrics.parquet` and `summary.json`.

Resume is the same code path as a fresh run: row groups that a completion marker covers are not
redone (execution/units.py).
"""

from __future__ import annotations

import datetime as dt
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from modnet_batch import __version__
from modnet_batch.data.dataset import Dataset
from modnet_batch.data.parquet import ParquetColumns, open_dataset
from modnet_batch.digest import sha256_file
from modnet_batch.engine import DEFAULT_ENGINE, EngineSpec, default_provider
from modnet_batch.engine.signature import check_signature
from modnet_batch.errors import JobInterrupted, ModnetBatchError, is_storage_error, storage_error
from modnet_batch.execution import units
from modnet_batch.execution.backend import BackendReport, no_phase
from modnet_batch.execution.backends import get_backend
from modnet_batch.execution.processor import WorkerSpec
from modnet_batch.metrics import DATASET, ImageRow, MetricAccumulator
from modnet_batch.model.variants import (
    calibration_ids,
    calibration_overlap,
    resolve_model,
    variant_info,
)
from modnet_batch.options import JobConfig, job_yaml
from modnet_batch.pipeline import DecodeMode
from modnet_batch.protocol import get_protocol
from modnet_batch.results import (
    ImageCounts,
    JobFacts,
    RunDir,
    ShardCounts,
    Summary,
    Throughput,
    UnitResult,
    WorkUnit,
)
from modnet_batch.results.outputs import (
    OutputKind,
    OutputSize,
    OutputSpec,
    parse_colour,
    parse_kinds,
)
from modnet_batch.storage import AnyPath, argument, is_inside, is_uri, location, resolved, shown

ProgressHook = Callable[[str, int], None]


@dataclass
class JobPlan:
    job: JobConfig
    dataset: Dataset
    model_path: Path
    model_info: dict[str, Any]
    run: RunDir
    resumed: bool
    # the work left: runs of row groups no marker covers, and retries (units.split cuts them)
    tasks: list[WorkUnit]
    done_before: set[str]  # units finished by earlier attempts, nothing to redo
    decode: DecodeMode  # resolved for this protocol and model (DecodeMode.resolve)
    warnings: list[str] = field(default_factory=list)
    # finished units whose transiently failed images this attempt retries: their results so far
    retrying: dict[str, UnitResult] = field(default_factory=dict)
    outputs: OutputSpec = field(default_factory=OutputSpec)
    # each shard's row groups' rows, from its footer (None: unreadable, run as one unit)
    groups: dict[str, list[int] | None] = field(default_factory=dict)
    # the units handed to the backend, by name (filled when it knows its workers)
    unit_tasks: dict[str, WorkUnit] = field(default_factory=dict)

    def work_units(self, workers: int) -> list[WorkUnit]:
        """The tasks cut into work units for `workers` workers (units.split), remembered."""
        out = units.split(self.tasks, workers)
        self.unit_tasks.update((u.name, u) for u in out)
        return out


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

    @property
    def exit_status(self) -> int:
        if not self.complete:
            return EXIT_INCOMPLETE
        return EXIT_IMAGES_FAILED if self.summary.images.failed else EXIT_OK


def batch_size(job: JobConfig) -> int:
    """The job's batch size; by default 1 on CPU (batching only adds latency to a convolutional
    network that already fills a core per image) and, on accelerators, 0: each device's actor
    measures its own (execution/batching.py)."""
    if job.batch_size is not None:
        return job.batch_size
    return 1 if job.device == "cpu" else 0


PRECISIONS = ("fp32", "fp16", "bf16")


def compute_precision(job: JobConfig, model_precision: str) -> str:
    """The precision sessions compute in: the model's own for onnxruntime (a built variant is
    the way to fp16 or int8 there); for the torch engine, --precision casts an fp32 model."""
    if job.precision is None:
        return model_precision
    if job.precision not in PRECISIONS:
        raise ModnetBatchError(
            f"--precision {job.precision}: use one of {', '.join(PRECISIONS)} (int8 is a built "
            "variant: --model int8)"
        )
    if job.engine == "onnxruntime" and job.precision != model_precision:
        raise ModnetBatchError(
            f"--precision {job.precision} with the onnxruntime engine: it runs the model at the "
            f"precision it was built in ({model_precision}); use --model {job.precision} (a "
            "variant from `modnet-batch build`) or --engine torch"
        )
    if job.engine != "onnxruntime" and model_precision != "fp32" and job.precision != "fp32":
        raise ModnetBatchError(
            f"--precision {job.precision} casts an fp32 model; this model is {model_precision}: "
            "pass the fp32 model (--model fp32 or none)"
        )
    return job.precision


def output_spec(job: JobConfig, scored: bool) -> OutputSpec:
    """What the job writes per image: as asked, else npz (the evaluation artefact, at the
    scoring size) for a dataset with ground truth and a source-size alpha PNG without."""
    kinds: tuple[OutputKind, ...]
    if job.output is None:
        kinds = (OutputKind.NPZ,) if scored else (OutputKind.ALPHA_PNG,)
    else:
        kinds = parse_kinds(job.output)
    if not any(k not in (OutputKind.NPZ, OutputKind.NONE) for k in kinds):
        return OutputSpec(kinds=kinds)  # no image files: their size, colour, level do not apply
    return OutputSpec(
        kinds=kinds,
        size=job.output_size or OutputSize.SOURCE,
        background=parse_colour(job.background),
        png_level=job.png_level,
    )


def _os_error(exc: OSError, resume: bool = True) -> ModnetBatchError:
    """A write the run directory's storage refused (full, read-only, forbidden) as its one-line
    StorageError; any other OSError (a network error, Ray's own files) as itself, one line."""
    if is_storage_error(exc) and (exc.filename or getattr(exc, "permanent", False)):
        return storage_error(exc, resume=resume)
    if hasattr(exc, "permanent"):  # storage.UriError: one line naming the URI and the fix
        return ModnetBatchError(str(exc))
    return ModnetBatchError(f"{type(exc).__name__}: {exc}")


def plan_job(job: JobConfig) -> JobPlan:
    """Resolve the dataset, model and run dir; list the shards still to do."""
    check_decoding(job)
    dataset = open_dataset(job.dataset, job_columns(job))
    protocol = get_protocol(job.protocol)
    model_path = resolve_model(job.model)
    check_signature(model_path)
    info = variant_info(model_path)
    precision = compute_precision(job, str(info.get("precision", "fp32")))
    on_device = device_scoring(job)
    scored = dataset.num_with_matte > 0
    outputs = output_spec(job, scored)
    decode = DecodeMode.for_job(job.decode_reduce, protocol, info.get("precision", "fp32"), scored)
    pixel_warning = None
    if (
        outputs.needs_pixels
        and outputs.size is OutputSize.SOURCE
        and decode is not DecodeMode.EXACT
    ):
        if job.decode_reduce is not None:  # asked for: say why it is not what runs
            pixel_warning = (
                f"--decode-reduce {job.decode_reduce.value} ignored: cutouts and composites at "
                "the source size need the photo decoded at full size"
            )
        decode = DecodeMode.EXACT
    identity: dict[str, Any] = {
        "dataset": dataset.fingerprint(),
        "model_sha256": info.get("sha256") or sha256_file(model_path),
        "protocol": job.protocol,
        # the encoding of runs made before DecodeMode, so that they still resume:
        # 0 = reduced per image (auto), 1 = exact, else the fixed factor
        "decode_reduce": 0 if decode is DecodeMode.AUTO else decode.factor,
    }
    if job.engine != DEFAULT_ENGINE:  # another engine's outputs are another job's
        identity["engine"] = job.engine
        identity["precision"] = precision
        identity["scoring"] = "device" if on_device else "cpu"
    if job.decoding != "cpu":  # decoded and resized on a device: other (approximate) outputs
        identity["decoding"] = job.decoding
    if job.output_dir is not None:  # another folder's files are another job's
        identity["output_dir"] = shown(resolved(job.output_dir))
    # runs writing only npz keep resuming (every scored run made before outputs existed; an
    # unscored one now defaults to PNGs: its resume is refused, naming `outputs`)
    if outputs != OutputSpec():
        identity["outputs"] = {
            "kinds": [k.value for k in outputs.kinds],
            "size": outputs.size.value,
            "background": list(outputs.background),
            "png_level": outputs.png_level,
        }
    run = RunDir(job.out, job.output_dir)
    if job.output_dir is not None and not run.identity_file.exists():  # a fresh job
        _check_owned(location(job.output_dir), run)
    resumed = run.prepare(identity)
    run.write_job(job_yaml(job))
    done = run.done_shards()
    groups = {s.name: dataset.row_group_rows(s) for s in dataset.shards}
    # a finished unit's images that failed for a reason that may pass are tried again
    failed_before = run.results_with_failures() if resumed else []
    retrying = {r.shard: r for r in failed_before if _transient_ids(r)}
    tasks = units.pending(dataset, groups, done)
    for name, result in sorted(retrying.items()):
        shard = units.parse_unit(name)[0]
        retry = units.retry_task(dataset, name, groups.get(shard), _transient_ids(result))
        if retry is not None:
            tasks.append(retry)
    plan = JobPlan(
        job, dataset, model_path, info, run, resumed, tasks, done - retrying.keys(), decode
    )
    plan.retrying = retrying
    plan.outputs = outputs
    plan.groups = groups
    if pixel_warning:
        plan.warnings.append(pixel_warning)
    for note in (dataset.meta.get("ids_note"), _duplicates_note(dataset)):
        if note:
            plan.warnings.append(f"{job.dataset}: {note}")
    if scored and job.decoding == "device":
        plan.warnings.append(
            "--decoding device: JPEGs are decoded by the device's decoder (on CUDA not "
            "bit-identical to libjpeg) and resized there, so the metrics are approximate; "
            "--decoding cpu (the default) decodes exactly"
        )
    if scored and decode is not DecodeMode.EXACT:
        plan.warnings.append(
            f"--decode-reduce {decode.value}: JPEGs are decoded reduced, so the metrics are "
            "approximate; --decode-reduce off (the default for scored jobs) decodes exactly"
        )
    plan.warnings.extend(_overlap_warnings(plan))
    return plan


def job_columns(job: JobConfig) -> ParquetColumns:
    """The job's columns of Parquet read in place (--image-column, --matte-column, --id-column)."""
    return ParquetColumns(job.image_column, job.matte_column, job.id_column)


def _duplicates_note(dataset: Dataset) -> str | None:
    shared = int(dataset.meta.get("counts", {}).get("duplicate_ids", 0))
    if not shared:
        return None
    return (
        f"{shared} image id(s) are shared by several rows: those rows become error rows (outputs "
        "are named by id); make the ids unique"
    )


def _check_owned(folder: AnyPath, run: RunDir) -> None:
    """A fresh job writes into an --output-dir only when that folder holds nothing but its own
    run (as `matte`'s OUT does): it never overwrites a file it did not write."""
    if not folder.is_dir():
        return
    mine = run.root.resolve()
    others = [p for p in folder.iterdir() if not is_inside(mine, p.resolve())]
    if others:
        raise ModnetBatchError(
            f"--output-dir {folder} is not empty ({others[0].name} ...); pass a new or empty "
            "folder (nothing in it is overwritten)"
        )


def _transient_ids(result: UnitResult) -> tuple[str, ...]:
    return tuple(r.image_id for r in result.rows if r.error is not None and r.transient)


def _overlap_warnings(plan: JobPlan) -> list[str]:
    if not calibration_ids(plan.model_path):  # no calibration set: no shard needs reading
        return []
    ids: list[str] = []
    for shard in plan.dataset.shards:
        try:
            ids.extend(plan.dataset.image_ids(shard))
        except Exception:  # an unreadable shard fails, named, when its turn comes
            continue
    overlap = calibration_overlap(plan.model_path, ids)
    if not overlap:
        return []
    shown = ", ".join(overlap[:5]) + (" ..." if len(overlap) > 5 else "")
    return [
        f"{len(overlap)} of the {len(ids)} images evaluated were used to calibrate "
        f"{plan.model_path.name} ({shown}); its metrics on them are optimistic"
    ]


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


def device_scoring(job: JobConfig) -> bool:
    """Whether the job's workers normalise and score on the engine's device: the torch engine
    under a protocol whose input is a uint8 image at network size (the seed protocols), unless
    the photos are decoded there (`--decoding device` scores on the CPU threads)."""
    if job.decoding == "device":
        if job.scoring == "device":
            raise ModnetBatchError(
                "--decoding device scores on the CPU threads: use --scoring auto or cpu with it"
            )
        return False
    can = job.engine == "torch" and get_protocol(job.protocol).pixels_on_device
    if job.scoring == "device" and not can:
        raise ModnetBatchError(
            f"--scoring device needs --engine torch and a seed protocol (this job: engine "
            f"{job.engine}, protocol {job.protocol}); use --scoring auto or cpu"
        )
    return can and job.scoring != "cpu"


def check_decoding(job: JobConfig) -> None:
    """`--decoding device` needs the torch engine and a protocol a device can preprocess."""
    if job.decoding != "device":
        return
    if job.engine != "torch":
        raise ModnetBatchError(
            f"--decoding device needs --engine torch (this job: {job.engine}); use --engine "
            "torch or --decoding cpu"
        )
    protocol = get_protocol(job.protocol)
    if protocol.input_plan is None:
        raise ModnetBatchError(
            f"--decoding device cannot preprocess protocol {job.protocol} on the device; use "
            "--decoding cpu"
        )


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
        device_scoring=device_scoring(job),
        engine=engine,
        engine_name=job.engine,
        protocol=job.protocol,
        run_dir=argument(plan.run.root),
        batch_size=batch_size(job),
        tune_hw=_first_size(plan.dataset, job),
        decode_threads=job.decode_threads or 1,
        decode=plan.decode,
        outputs=plan.outputs,
        outputs_dir=argument(plan.run.outputs),
        keep_existing=plan.resumed and plan.dataset.num_with_matte == 0,
        decoding=job.decoding,
        decode_pixels=job.decode_megapixels * 1_000_000,
    )


def run_job(
    job: JobConfig,
    *,
    on_images: ProgressHook | None = None,
    on_plan: Callable[[JobPlan], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
    on_shard: Callable[[UnitResult], None] | None = None,
) -> JobOutcome:
    """Run (or resume) a job to completion and write its results.

    A run directory that cannot be written (full, read-only) stops the job with one
    StorageError line; a signal stops it with JobInterrupted. Either way the shards already
    finished are kept and the same command resumes.
    """
    started, started_at = time.perf_counter(), time.time()
    try:
        plan = plan_job(job)
    except OSError as exc:
        raise _os_error(exc, resume=False) from None
    if on_plan is not None:
        on_plan(plan)
    fresh: list[UnitResult] = []

    def on_result(result: UnitResult) -> None:
        if result.files:  # a worker that cannot see the run directory: its files, then the marker
            plan.run.write_returned(result.files)
            result = replace(result, files=[])
        before = plan.retrying.get(result.shard)
        plan.run.write_result(result if before is None else before.with_retry(result))
        # the rows are in the marker now; kept in memory they grew the driver by about 1 KB per
        # image (measured: +17 MiB over 18k images), and finalize reads the markers. A resume's
        # retried rows stay: the summary counts them (and there are few)
        fresh.append(result if result.shard in plan.retrying else replace(result, rows=[]))
        if on_shard is not None:
            on_shard(result)

    report = BackendReport()
    try:
        if plan.tasks:
            backend = get_backend(job.backend)
            report = backend.run(
                job,
                worker_spec(plan),
                plan.work_units,
                on_result,
                on_images or (lambda w, n: None),
                on_phase or no_phase,
            )
        wall = time.perf_counter() - started
        summary = finalize(plan, fresh, report, wall, started_at)
    except OSError as exc:
        raise _os_error(exc) from None
    except JobInterrupted as exc:
        kept = len(plan.run.done_shards())
        raise JobInterrupted(
            f"{exc}: {kept} finished work unit(s) of {len(plan.dataset.shards)} shard(s) are "
            f"kept in {plan.run.root}; run the same command again to resume",
            exc.signum,
        ) from None
    return JobOutcome(
        summary=summary,
        run_dir=plan.run.root,
        complete=not report.failed,
        warnings=plan.warnings,
    )


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
    shards = {s.name: s for s in plan.dataset.shards}
    for unit_name, reason in sorted(report.failed.items()):
        if unit_name in plan.retrying:
            continue  # a retry that failed again: the unit's rows keep their earlier errors
        task = plan.unit_tasks.get(unit_name)
        groups = None if task is None or task.row_groups is None else list(task.row_groups)
        try:
            ids = plan.dataset.image_ids(shards[units.parse_unit(unit_name)[0]], groups)
        except Exception:  # an unreadable shard: its ids are lost with it, its name is not
            ids = [unit_name]
        # unfinished, so a resume runs it again: transient by construction
        error = f"shard {unit_name} failed: {reason}"
        rows.extend(ImageRow(i, error=error, transient=True) for i in ids)
    rows.sort(key=lambda r: r.image_id)
    plan.run.write_rows(rows)

    failed = sum(r.error is not None for r in rows)
    check = _decode_check(plan, rows, fresh)
    stats = acc.summary()
    scored = int(stats["scored"] or 0)
    summary = Summary(
        images=ImageCounts(
            total=plan.dataset.num_images,
            scored=scored,
            failed=failed,
            unscored=len(rows) - failed - scored,
            transient=sum(r.error is not None and r.transient for r in rows),
            retried=sum(len(r.rows) for r in fresh if r.shard in plan.retrying),
        ),
        metrics={k: stats[k] for k in DATASET},
        throughput=Throughput.measure(fresh, wall).after(_previous_throughput(plan)),
        shards=ShardCounts(
            total=len({r.shard for r in results} | report.failed.keys()),
            processed=len(fresh),
            skipped_done=len(plan.done_before),
            failed=sorted(report.failed),
            retries=report.retries,
        ),
        complete=not report.failed and _all_covered(plan, {r.shard for r in results}),
        job=JobFacts(
            dataset=shown(resolved(plan.job.dataset)),
            protocol=plan.job.protocol,
            model=shown(plan.job.model) if is_uri(plan.job.model) else str(plan.model_path),
            variant=plan.model_info,
            backend=plan.job.backend,
            address=plan.job.address,
            decode=plan.decode.describe(
                scored=plan.dataset.num_with_matte > 0,
                check=check,
                device=plan.job.decoding == "device",
            ),
            batch_size=batch_size(plan.job),
            engine=plan.job.engine,
        ),
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
