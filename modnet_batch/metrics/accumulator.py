"""Exact, mergeable reduction of per-image metrics: the result is bit-identical whatever the
order or partitioning in which actors' partial sums are merged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from modnet_batch.errors import ModnetBatchError
from modnet_batch.metrics.matting import CONFUSION, PER_IMAGE, ImageMetrics

# Every finite double is an integer multiple of 2**-1074 (the smallest subnormal), so a sum of
# doubles scaled by 2**1074 is an exact Python int, and int addition is associative.
_SCALE_BITS = 1074

SUMMED = PER_IMAGE
COUNTS = CONFUSION


def _scaled(x: float, what: str = "value") -> int:
    """x * 2**1074 as an exact int; raises on NaN or infinity."""
    xf = float(x)
    if not math.isfinite(xf):
        raise ModnetBatchError(
            f"{what} {xf!r}: expected a finite float; the image's metric is broken, "
            "record it as an error row instead of adding it"
        )
    num, den = xf.as_integer_ratio()  # den is a power of two <= 2**1074
    return num << (_SCALE_BITS - (den.bit_length() - 1))


def _round(num: int, den: int) -> float:
    """num / den correctly rounded to the nearest double."""
    try:
        return float(Fraction(num, den))
    except OverflowError as exc:
        raise ModnetBatchError(
            f"exact sum {num}/{den} does not fit in a float64; expected metric values far below "
            "1e308, check the per-image values"
        ) from exc


@dataclass
class ExactSum:
    """The exact sum of float64 values; `scaled` is the sum times 2**1074."""

    scaled: int = 0

    def add(self, x: float) -> None:
        """Add one finite float; raises ModnetBatchError on NaN or infinity."""
        self.scaled += _scaled(x)

    def merge(self, other: ExactSum) -> None:
        """Add another partial sum, in place."""
        self.scaled += other.scaled

    def value(self) -> float:
        """The sum, correctly rounded to float64."""
        return _round(self.scaled, 1 << _SCALE_BITS)

    def mean(self, n: int) -> float:
        """The sum divided by `n` (a positive count), correctly rounded to float64."""
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ModnetBatchError(f"count {n!r}: expected a positive int to average over")
        return _round(self.scaled, n << _SCALE_BITS)

    def to_json(self) -> str:
        """The scaled sum as a decimal string (JSON numbers would lose its precision)."""
        return str(self.scaled)

    @classmethod
    def from_json(cls, text: str) -> ExactSum:
        """Inverse of `to_json`."""
        if not isinstance(text, str):
            raise ModnetBatchError(
                f"exact sum {text!r}: expected the decimal string written by ExactSum.to_json"
            )
        try:
            return cls(int(text, 10))
        except ValueError as exc:
            raise ModnetBatchError(
                f"exact sum {text[:40]!r}: expected the decimal string written by "
                "ExactSum.to_json; the file is damaged, re-run the shard"
            ) from exc


def _iou(inter: int, union: int) -> Fraction:
    # A class absent from both prediction and ground truth was segmented perfectly: IoU 1.
    return Fraction(1) if union == 0 else Fraction(inter, union)


@dataclass
class MetricAccumulator:
    """Per-metric exact sums, the scored-image count and the pooled IoU confusion counts.

    Actors `update` one per image and return it; the driver `merge`s them in any order.
    """

    mse: ExactSum = field(default_factory=ExactSum)
    mad: ExactSum = field(default_factory=ExactSum)
    sad: ExactSum = field(default_factory=ExactSum)
    grad: ExactSum = field(default_factory=ExactSum)
    conn: ExactSum = field(default_factory=ExactSum)
    scored: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def update(self, m: ImageMetrics) -> None:
        """Add one image's metrics; on a NaN/inf value or a bad count nothing is added."""
        sums = [_scaled(getattr(m, name), f"metric {name}") for name in SUMMED]
        counts = [getattr(m, name) for name in COUNTS]
        for name, c in zip(COUNTS, counts, strict=True):
            if isinstance(c, bool) or not isinstance(c, int) or c < 0:
                raise ModnetBatchError(
                    f"confusion count {name}={c!r}: expected a non-negative int from "
                    "metrics.confusion()"
                )
        for name, s in zip(SUMMED, sums, strict=True):
            getattr(self, name).scaled += s
        for name, c in zip(COUNTS, counts, strict=True):
            setattr(self, name, getattr(self, name) + c)
        self.scored += 1

    def merge(self, other: MetricAccumulator) -> None:
        """Add another accumulator's contents, in place."""
        for name in SUMMED:
            getattr(self, name).merge(getattr(other, name))
        for name in (*COUNTS, "scored"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def __add__(self, other: MetricAccumulator) -> MetricAccumulator:
        out = MetricAccumulator.from_dict(self.to_dict())
        out.merge(other)
        return out

    def summary(self) -> dict[str, float | int | None]:
        """Dataset-level numbers.

        mse, mad, sad, grad, conn: the mean of the per-image values, correctly rounded (None when
        nothing was scored). miou: the mean over foreground and background of the IoU of the
        confusion matrix pooled over every pixel of every image (fg tp/(tp+fp+fn), bg
        tn/(tn+fp+fn)); a class with an empty union in both counts as IoU 1.0. scored: the count.
        """
        out: dict[str, float | int | None] = {}
        for name in SUMMED:
            out[name] = getattr(self, name).mean(self.scored) if self.scored else None
        if self.scored:
            fg = _iou(self.tp, self.tp + self.fp + self.fn)
            bg = _iou(self.tn, self.tn + self.fp + self.fn)
            out["miou"] = float((fg + bg) / 2)
        else:
            out["miou"] = None
        out["scored"] = self.scored
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: exact sums as decimal strings, counts as ints."""
        d: dict[str, Any] = {name: getattr(self, name).to_json() for name in SUMMED}
        for name in ("scored", *COUNTS):
            d[name] = getattr(self, name)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MetricAccumulator:
        """Inverse of `to_dict`; raises ModnetBatchError on a missing key or a wrong type."""
        expected = {*SUMMED, "scored", *COUNTS}
        if not isinstance(d, dict) or set(d) != expected:
            keys = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise ModnetBatchError(
                f"accumulator keys {keys}: expected exactly {sorted(expected)} as written by "
                "MetricAccumulator.to_dict; the file is damaged, re-run the shard"
            )
        for name in ("scored", *COUNTS):
            v = d[name]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ModnetBatchError(
                    f"accumulator count {name}={v!r}: expected a non-negative int as written by "
                    "MetricAccumulator.to_dict"
                )
        return cls(
            mse=ExactSum.from_json(d["mse"]),
            mad=ExactSum.from_json(d["mad"]),
            sad=ExactSum.from_json(d["sad"]),
            grad=ExactSum.from_json(d["grad"]),
            conn=ExactSum.from_json(d["conn"]),
            scored=d["scored"],
            tp=d["tp"],
            fp=d["fp"],
            fn=d["fn"],
            tn=d["tn"],
        )
