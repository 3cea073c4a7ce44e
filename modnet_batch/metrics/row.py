"""One image's row of a run's metric table: its id, size, metrics or the error that stopped it."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from modnet_batch.metrics.matting import CONFUSION, PER_IMAGE, ImageMetrics

# The flat columns of `metrics.parquet`, in order.
# `transient` is set with `error`: True when the failure may pass (I/O, a lost worker), so that a
# resume retries the image; False when retrying cannot help (undecodable input, wrong model output).
COLUMNS = ("image_id", "width", "height", *PER_IMAGE, *CONFUSION, "error", "transient")
# ImageMetrics' fields in order, looked up once: dataclasses.fields() for every row was a fifth
# of the time a resume of a finished 100k-image run took
_METRIC_FIELDS = tuple(f.name for f in fields(ImageMetrics))


@dataclass(frozen=True)
class ImageRow:
    """`metrics` is None for an image without ground truth or one that failed (`error` set)."""

    image_id: str
    width: int | None = None
    height: int | None = None
    metrics: ImageMetrics | None = None
    error: str | None = None
    transient: bool = False

    @property
    def scored(self) -> bool:
        return self.error is None and self.metrics is not None

    def to_record(self) -> dict[str, Any]:
        """The flat dict of COLUMNS (None where there is no value)."""
        out: dict[str, Any] = {"image_id": self.image_id, "width": self.width}
        out["height"] = self.height
        for name in _METRIC_FIELDS:
            out[name] = None if self.metrics is None else getattr(self.metrics, name)
        out["error"] = self.error
        out["transient"] = None if self.error is None else self.transient
        return out

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ImageRow:
        """Inverse of `to_record`; metrics are present when every metric column holds a value."""
        values: list[Any] = [record.get(name) for name in _METRIC_FIELDS]
        metrics = None if any(v is None for v in values) else ImageMetrics(*values)
        return cls(
            image_id=record["image_id"],
            width=record.get("width"),
            height=record.get("height"),
            metrics=metrics,
            error=record.get("error"),
            transient=bool(record.get("transient")),  # runs from before the column: not retried
        )
