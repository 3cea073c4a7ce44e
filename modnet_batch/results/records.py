"""What the driver sends a worker (a shard task) and what comes back (a shard result)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modnet_batch.metrics import ImageRow


@dataclass(frozen=True)
class ShardTask:
    name: str
    path: str
    rows: int
    attempt: int = 0
    sha256: str | None = None  # as dataset.json records it; checked before the shard is read


@dataclass
class ShardResult:
    """One shard's per-image rows, exact partial sums (MetricAccumulator.to_dict) and timings.

    `stages` holds the shard loop's wall seconds per stage (they add up to `seconds`) and, as
    `cpu_<stage>`, the CPU seconds the pool threads spent per pipeline stage.
    """

    shard: str
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

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the shard's completion marker (rows flat, as in metrics.parquet)."""
        data = dict(self.__dict__)
        data["rows"] = [r.to_record() for r in self.rows]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardResult:
        values = dict(data)
        values["rows"] = [ImageRow.from_record(r) for r in data["rows"]]
        return cls(**values)
