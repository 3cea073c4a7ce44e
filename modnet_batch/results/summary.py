"""`summary.json`: a run's dataset-level results, typed, with a schema version."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from modnet_batch.errors import ModnetBatchError
from modnet_batch.results.throughput import Throughput
from modnet_batch.storage import AnyPath

# 2: first versioned summary (1 = the unversioned layout, the same keys without `schema`).
SUMMARY_SCHEMA = 2


@dataclass(frozen=True)
class ImageCounts:
    total: int
    scored: int
    failed: int
    unscored: int  # decoded and predicted, but without ground truth
    transient: int = 0  # of `failed`: failures that may pass (I/O, lost worker); a resume retries
    retried: int = 0  # images this attempt did again after a transient failure of an earlier one


@dataclass(frozen=True)
class UnitCounts:
    """The job's work units (runs of a shard's row groups): the unit of scheduling and resume."""

    total: int
    processed: int  # by this run
    skipped_done: int  # finished by an earlier run of the same job
    failed: list[str]
    retries: int


@dataclass(frozen=True)
class JobFacts:
    """How the numbers were made."""

    dataset: str
    protocol: str
    model: str
    variant: dict[str, Any]
    backend: str
    address: str | None
    decode: str = "unrecorded"  # summaries written before the decode mode was recorded
    batch_size: int | None = None
    engine: str = "onnxruntime"


@dataclass(frozen=True)
class Summary:
    images: ImageCounts
    metrics: dict[str, float | None]  # metrics.DATASET
    throughput: Throughput
    units: UnitCounts
    complete: bool
    job: JobFacts
    startup_seconds: float
    workers: list[dict[str, Any]]  # one entry per actor: label, node, threads, provider, ...
    warnings: list[str]
    accumulator: dict[str, Any]  # MetricAccumulator.to_dict: the exact sums behind `metrics`
    finished: str
    driver: str
    version: str
    # a scored job with a reduced decode: its metrics over a sample, as measured and with an
    # exact decode (execution.decode_check.DecodeCheck.to_dict); None otherwise
    decode_check: dict[str, Any] | None = None
    # `--decoding device`: images decoded on the device and on the CPU (by reason), and the
    # workers' decoders (execution.driver._decoding); None when every image is decoded on the CPU
    decoding: dict[str, Any] | None = None
    # when this attempt started (epoch seconds, the driver's clock, before start-up) and one
    # entry per shard it ran (UnitResult.timing: worker, node, started, finished, images, the
    # loop's waits); None and [] in summaries written before they were recorded
    started: float | None = None
    timeline: list[dict[str, Any]] = field(default_factory=list)
    # the driver's cost of handing out shards on Ray (driver CPU per shard, result-to-dispatch
    # latency, where its time went); None inline and in summaries written before it was recorded
    dispatch: dict[str, Any] | None = None
    schema: int = SUMMARY_SCHEMA
    extra: dict[str, Any] = field(default_factory=dict)  # keys a newer writer added

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["throughput"] = self.throughput.to_dict()
        return {**data.pop("extra"), **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "summary") -> Summary:
        values = dict(data)
        schema = values.pop("schema", 1)
        if not isinstance(schema, int) or schema > SUMMARY_SCHEMA:
            raise ModnetBatchError(
                f"{origin} has schema {schema!r}; this modnet-batch reads up to "
                f"{SUMMARY_SCHEMA}: upgrade modnet-batch"
            )
        try:
            nested: dict[str, Any] = {
                "images": ImageCounts(**values.pop("images")),
                # `shards` in summaries written before work units were named so
                "units": UnitCounts(**(values.pop("units", None) or values.pop("shards"))),
                "job": JobFacts(**values.pop("job")),
                "throughput": Throughput.from_dict(values.pop("throughput")),
            }
            known = {f for f in cls.__dataclass_fields__ if f not in {"extra", "schema"}}
            extra = {k: values.pop(k) for k in list(values) if k not in known}
            return cls(**nested, **values, extra=extra)
        except (KeyError, TypeError) as exc:
            raise ModnetBatchError(
                f"{origin} is not a modnet-batch summary ({exc}); re-run the job to rewrite it"
            ) from None

    @classmethod
    def read(cls, path: AnyPath) -> Summary:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModnetBatchError(
                f"{path} does not exist; is {path.parent} a finished run directory?"
            ) from None
        except json.JSONDecodeError as exc:
            raise ModnetBatchError(f"{path} is not valid JSON ({exc}); re-run the job") from None
        return cls.from_dict(data, origin=str(path))
