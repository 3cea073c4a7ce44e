"""What the driver sends a worker (a work unit) and what comes back (the unit's result, its
completion marker)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from modnet_batch.data.dataset import ShardReader
from modnet_batch.metrics import ImageRow, MetricAccumulator

# The unit loop's stages a timeline entry keeps (processor.LOOP_STAGES).
TIMELINE_STAGES = ("read", "wait_decode", "device_decode", "infer", "wait_write", "other")


@dataclass(frozen=True)
class WorkUnit:
    """One work unit: a shard file, or a run of its row groups (execution/units.py).

    `name` is the unit's (and its marker's) name: the shard's name for the whole file,
    `<shard>.rg<first>-<last>` for row groups first..last. `rows` counts its images.
    """

    name: str
    path: str
    rows: int
    attempt: int = 0
    sha256: str | None = None  # as dataset.json records it; checked before the shard is read
    # a resume retrying images of a finished unit: only these ids (None: all of them)
    only: tuple[str, ...] | None = None
    requeues: int = 0  # sent back uncharged after a worker died while it waited there
    # the row groups it reads, and the rows of each (None: the whole file, its footer unread)
    row_groups: tuple[int, ...] | None = None
    group_rows: tuple[int, ...] = ()
    reader: ShardReader | None = None  # Parquet that modnet-batch did not write


class ReturnedFile(NamedTuple):
    """A per-image file that a worker sends back for the driver to write (`--results-via
    driver`): `base` is `run` (the run directory) or `outputs` (its outputs folder), `rel` the
    path inside it."""

    base: str
    rel: str
    data: bytes


@dataclass
class UnitResult:
    """One work unit's per-image rows, exact partial sums (MetricAccumulator.to_dict) and
    timings. `unit` is the unit's name (WorkUnit.name).

    `stages` holds the unit loop's wall seconds per stage (they add up to `seconds`) and, as
    `cpu_<stage>`, the CPU seconds the pool threads spent per pipeline stage. `started` and
    `finished` are when the unit got its worker's loop and when it let it go (epoch seconds,
    the worker node's clock; a merged retry keeps the retry's); None in markers written before
    they were recorded.
    """

    unit: str
    rows: list[ImageRow]
    accumulator: dict[str, Any]
    images: int
    failed: int
    seconds: float
    stages: dict[str, float]
    worker: str
    node: str
    pid: int
    attempt: int = 0
    started: float | None = None
    finished: float | None = None
    # the unit's per-image files when its worker cannot write the run directory (the driver
    # writes them before the marker); never part of the marker
    files: list[ReturnedFile] = field(default_factory=list, repr=False)
    # `--decoding device`: images per decoder, "device" or "cpu: <why it fell back>"
    decoded: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the unit's completion marker (rows flat, as in metrics.parquet)."""
        data = dict(self.__dict__)
        data.pop("files")
        data["rows"] = [r.to_record() for r in self.rows]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UnitResult:
        values = dict(data)
        values["rows"] = [ImageRow.from_record(r) for r in data["rows"]]
        if "shard" in values:  # markers written before work units were named so
            values["unit"] = values.pop("shard")
        return cls(**values)

    def with_retry(self, retry: UnitResult) -> UnitResult:
        """This finished unit with some of its images done again (a resume retrying transient
        failures): their new rows replace the old ones and their metrics join the exact sums
        (a failed row never entered them)."""
        again = {r.image_id for r in retry.rows}
        rows = sorted(
            [r for r in self.rows if r.image_id not in again] + retry.rows,
            key=lambda r: r.image_id,
        )
        acc = MetricAccumulator.from_dict(self.accumulator)
        acc.merge(MetricAccumulator.from_dict(retry.accumulator))
        stages = dict(self.stages)
        for k, v in retry.stages.items():
            stages[k] = stages.get(k, 0.0) + v
        decoded = dict(self.decoded)  # decodes, not images: a retried image counts twice
        for k, n in retry.decoded.items():
            decoded[k] = decoded.get(k, 0) + n
        return UnitResult(
            unit=self.unit,
            rows=rows,
            accumulator=acc.to_dict(),
            images=len(rows),
            failed=sum(r.error is not None for r in rows),
            seconds=self.seconds + retry.seconds,
            stages=stages,
            worker=retry.worker,
            node=retry.node,
            pid=retry.pid,
            attempt=retry.attempt,
            started=retry.started,
            finished=retry.finished,
            decoded=decoded,
        )

    def timing(self) -> dict[str, Any]:
        """This attempt's entry in the summary's `timeline`: when, where, how many images and
        the unit loop's waits (what a report draws per device over time)."""
        return {
            "unit": self.unit,
            "worker": self.worker,
            "node": self.node,
            "attempt": self.attempt,
            "started": self.started,
            "finished": self.finished,
            "seconds": self.seconds,
            "images": self.images,
            "failed": self.failed,
            **{f"{k}_s": self.stages.get(k, 0.0) for k in TIMELINE_STAGES},
        }
