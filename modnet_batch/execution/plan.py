"""Planning a job: resolve its dataset, model, protocol, decode and outputs, prepare (or resume)
its run directory under the job's RunIdentity, and list the work units still to do.

Resume is the same code path as a fresh run: row groups that a completion marker covers are not
redone (execution/units.py); a finished unit's images that failed for a reason that may pass
are tried again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modnet_batch.data.dataset import Dataset
from modnet_batch.data.parquet import ParquetColumns, open_dataset
from modnet_batch.digest import sha256_file
from modnet_batch.engine import DEFAULT_ENGINE
from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution import units
from modnet_batch.model.variants import (
    calibration_ids,
    calibration_overlap,
    checked_model,
    resolve_model,
)
from modnet_batch.options import JobConfig, job_yaml
from modnet_batch.pipeline import DecodeMode
from modnet_batch.protocol import get_protocol
from modnet_batch.results import RunDir, RunIdentity, UnitResult, WorkUnit
from modnet_batch.results.outputs import (
    OutputKind,
    OutputSize,
    OutputSpec,
    parse_colour,
    parse_kinds,
)
from modnet_batch.storage import AnyPath, is_inside, location, resolved, shown


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


def plan_job(job: JobConfig) -> JobPlan:
    """Resolve the dataset, model and run dir; list the work units still to do."""
    check_decoding(job)
    dataset = open_dataset(job.dataset, job_columns(job))
    protocol = get_protocol(job.protocol)
    model_path = resolve_model(job.model)
    info = checked_model(model_path)
    scored = dataset.num_with_matte > 0
    outputs = output_spec(job, scored)
    decode = DecodeMode.for_job(job.decode_reduce, protocol, info.get("precision", "fp32"), scored)
    decode, decode_note = _full_size(job, decode, outputs)
    identity = run_identity(job, dataset, model_path, info, decode, outputs)
    run = RunDir(job.out, job.output_dir)
    recorded = run.recorded_identity()
    if recorded is None and job.output_dir is not None:  # a fresh job
        _check_owned(location(job.output_dir), run)
    if recorded is not None:
        identity.check(recorded, run.root)
    # a resumed run keeps its identity as it first recorded it (an older encoding included)
    resumed = run.prepare(identity.to_dict() if recorded is None else recorded)
    run.write_job(job_yaml(job))
    plan = JobPlan(job, dataset, model_path, info, run, resumed, [], set(), decode, outputs=outputs)
    _plan_units(plan)
    if decode_note:
        plan.warnings.append(decode_note)
    plan.warnings.extend(_warnings(plan))
    return plan


def _full_size(
    job: JobConfig, decode: DecodeMode, outputs: OutputSpec
) -> tuple[DecodeMode, str | None]:
    """The job's decode, exact where its outputs need the photo at full size, with a note when
    that overrides what was asked."""
    if (
        not outputs.needs_pixels
        or outputs.size is not OutputSize.SOURCE
        or decode is DecodeMode.EXACT
    ):
        return decode, None
    note = None
    if job.decode_reduce is not None:  # asked for: say why it is not what runs
        note = (
            f"--decode-reduce {job.decode_reduce.value} ignored: cutouts and composites at "
            "the source size need the photo decoded at full size"
        )
    return DecodeMode.EXACT, note


def run_identity(
    job: JobConfig,
    dataset: Dataset,
    model_path: Path,
    info: dict[str, Any],
    decode: DecodeMode,
    outputs: OutputSpec,
) -> RunIdentity:
    """What makes a re-run of `job` the same job (results.identity); refuses a precision or a
    scoring place the job's engine cannot give."""
    precision = compute_precision(job, str(info.get("precision", "fp32")))
    scoring = "device" if device_scoring(job) else "cpu"
    other_engine = job.engine != DEFAULT_ENGINE  # another engine's outputs are another job's
    return RunIdentity(
        dataset=dataset.fingerprint(),
        model_sha256=info.get("sha256") or sha256_file(model_path),
        protocol=job.protocol,
        decode_factor=0 if decode is DecodeMode.AUTO else decode.factor,
        engine=job.engine if other_engine else None,
        precision=precision if other_engine else None,
        scoring=scoring if other_engine else None,
        decoding=job.decoding,
        output_dir=shown(resolved(job.output_dir)) if job.output_dir is not None else None,
        outputs=outputs,
    )


def _plan_units(plan: JobPlan) -> None:
    """The units no marker covers, and the retries of finished units' transient failures."""
    dataset, run = plan.dataset, plan.run
    done = run.done_units()
    plan.groups = {s.name: dataset.row_group_rows(s) for s in dataset.shards}
    # a finished unit's images that failed for a reason that may pass are tried again
    failed_before = run.results_with_failures() if plan.resumed else []
    plan.retrying = {r.unit: r for r in failed_before if _transient_ids(r)}
    plan.tasks = units.pending(dataset, plan.groups, done)
    for name, result in sorted(plan.retrying.items()):
        shard = units.parse_unit(name)[0]
        retry = units.retry_task(dataset, name, plan.groups.get(shard), _transient_ids(result))
        if retry is not None:
            plan.tasks.append(retry)
    plan.done_before = done - plan.retrying.keys()


def _warnings(plan: JobPlan) -> list[str]:
    """What the user should know before the numbers: duplicate ids, approximate decodes,
    images the model was calibrated on."""
    job, dataset = plan.job, plan.dataset
    notes = [
        f"{job.dataset}: {note}"
        for note in (dataset.meta.get("ids_note"), _duplicates_note(dataset))
        if note
    ]
    scored = dataset.num_with_matte > 0
    if scored and job.decoding == "device":
        notes.append(
            "--decoding device: JPEGs are decoded by the device's decoder (on CUDA not "
            "bit-identical to libjpeg) and resized there, so the metrics are approximate; "
            "--decoding cpu (the default) decodes exactly"
        )
    if scored and plan.decode is not DecodeMode.EXACT:
        notes.append(
            f"--decode-reduce {plan.decode.value}: JPEGs are decoded reduced, so the metrics are "
            "approximate; --decode-reduce off (the default for scored jobs) decodes exactly"
        )
    return notes + _overlap_warnings(plan)


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
