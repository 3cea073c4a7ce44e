"""Exact accumulation: order- and partition-independent, JSON round trip, NaN rejected."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest

from modnet_batch.errors import ModnetBatchError
from modnet_batch.metrics import ExactSum, ImageMetrics, MetricAccumulator


def _values(seed: int, n: int) -> list[float]:
    """Non-negative values spread over 30 orders of magnitude: naive float sums lose digits."""
    rng = np.random.default_rng(seed)
    return [float(v) for v in 10.0 ** rng.uniform(-15, 15, n) * rng.random(n)]


def _metrics(seed: int, n: int) -> list[ImageMetrics]:
    rng = np.random.default_rng(seed)
    cols = {
        name: _values(seed + k, n) for k, name in enumerate(("mse", "mad", "sad", "grad", "conn"))
    }
    counts = rng.integers(0, 10**7, size=(n, 4))
    return [
        ImageMetrics(
            **{name: cols[name][i] for name in cols},
            tp=int(counts[i, 0]),
            fp=int(counts[i, 1]),
            fn=int(counts[i, 2]),
            tn=int(counts[i, 3]),
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_sum_is_correctly_rounded(seed: int) -> None:
    values = _values(seed, 500)
    s = ExactSum()
    for v in values:
        s.add(v)
    assert s.value() == math.fsum(values)  # fsum is the correctly rounded exact sum
    exact = sum((Fraction(v) for v in values), Fraction(0))
    assert s.scaled == exact * 2**1074
    assert s.mean(len(values)) == float(exact / len(values))


def test_exact_sum_handles_signs_subnormals_and_cancellation() -> None:
    values = [1e300, 5e-324, -1e300, 1.0, -0.0, 2.5e-310]
    s = ExactSum()
    for v in values:
        s.add(v)
    assert s.value() == math.fsum(values) == 1.0
    assert s.scaled == int(sum(Fraction(v) for v in values) * 2**1074)


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_merging_shuffled_partitions_is_bit_identical(seed: int) -> None:
    rows = _metrics(seed, 300)
    # the data is chosen so that the order of a naive float sum changes the result
    rng = np.random.default_rng(seed)
    naive = {sum(rows[i].mse for i in rng.permutation(len(rows))) for _ in range(20)}
    assert len(naive) > 1

    whole = MetricAccumulator()
    for m in rows:
        whole.update(m)
    want = whole.summary()
    assert want["mse"] == float(sum(Fraction(m.mse) for m in rows) / len(rows))

    for _ in range(10):
        order = rng.permutation(len(rows))
        cuts = np.sort(rng.choice(np.arange(1, len(rows)), size=rng.integers(1, 12), replace=False))
        parts = []
        for chunk in np.split(order, cuts):
            acc = MetricAccumulator()
            for i in chunk:
                acc.update(rows[i])
            parts.append(acc)
        merged = MetricAccumulator()
        for j in rng.permutation(len(parts)):
            merged.merge(parts[j])
        assert merged == whole
        assert merged.summary() == want
        total = sum(parts[1:], parts[0])
        assert total.summary() == want


@pytest.mark.parametrize(
    ("counts", "want"),
    [
        ((1, 1, 1, 1), 1 / 3),  # fg 1/3, bg 1/3
        ((4, 0, 0, 0), 1.0),  # no background anywhere: bg IoU counts as 1
        ((0, 0, 0, 4), 1.0),  # no foreground anywhere: fg IoU counts as 1
        ((0, 0, 4, 0), 0.0),  # everything missed
        ((6, 2, 0, 2), (6 / 8 + 2 / 4) / 2),
    ],
)
def test_miou_by_hand(counts: tuple[int, int, int, int], want: float) -> None:
    tp, fp, fn, tn = counts
    acc = MetricAccumulator()
    acc.update(ImageMetrics(0.0, 0.0, 0.0, 0.0, 0.0, tp, fp, fn, tn))
    assert acc.summary()["miou"] == pytest.approx(want, rel=1e-15, abs=0)


def test_miou_pools_pixels_over_images() -> None:
    # per image: fg IoU 1.0 and 0.0; pooled: 1 / (1 + 3) rather than their mean 0.5
    acc = MetricAccumulator()
    acc.update(ImageMetrics(0.0, 0.0, 0.0, 0.0, 0.0, tp=1, fp=0, fn=0, tn=3))
    acc.update(ImageMetrics(0.0, 0.0, 0.0, 0.0, 0.0, tp=0, fp=0, fn=3, tn=1))
    fg, bg = 1 / 4, 4 / 7
    assert acc.summary()["miou"] == pytest.approx((fg + bg) / 2, rel=1e-15, abs=0)


def test_summary_of_nothing_is_none() -> None:
    assert MetricAccumulator().summary() == {
        "mse": None,
        "mad": None,
        "sad": None,
        "grad": None,
        "conn": None,
        "miou": None,
        "scored": 0,
    }


def test_summary_means_by_hand() -> None:
    acc = MetricAccumulator()
    acc.update(ImageMetrics(0.1, 0.25, 3.0, 4.0, 5.0, 1, 0, 0, 1))
    acc.update(ImageMetrics(0.3, 0.5, 1.0, 2.0, 1.0, 1, 0, 0, 1))
    acc.update(ImageMetrics(0.2, 0.75, 2.0, 0.0, 0.0, 1, 0, 0, 1))
    s = acc.summary()
    assert (s["mad"], s["sad"], s["grad"], s["conn"], s["scored"]) == (0.5, 2.0, 2.0, 2.0, 3)
    # 0.1, 0.2, 0.3 are not dyadic: the mean is the correctly rounded exact one, which a naive
    # (0.1 + 0.3 + 0.2) / 3 misses by one ulp
    assert s["mse"] == float((Fraction(0.1) + Fraction(0.3) + Fraction(0.2)) / 3) == 0.2
    assert (0.1 + 0.3 + 0.2) / 3 != 0.2


def test_to_dict_round_trip_is_exact_through_json() -> None:
    acc = MetricAccumulator()
    for m in _metrics(40, 50):
        acc.update(m)
    text = json.dumps(acc.to_dict())
    back = MetricAccumulator.from_dict(json.loads(text))
    assert back == acc
    assert back.summary() == acc.summary()
    assert ExactSum.from_json(json.loads(json.dumps(acc.grad.to_json()))) == acc.grad


def test_add_leaves_operands_unchanged() -> None:
    a, b = MetricAccumulator(), MetricAccumulator()
    a.update(_metrics(50, 1)[0])
    b.update(_metrics(51, 1)[0])
    a0, b0 = a.to_dict(), b.to_dict()
    c = a + b
    assert c.scored == 2
    assert (a.to_dict(), b.to_dict()) == (a0, b0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_are_rejected(bad: float) -> None:
    s = ExactSum()
    with pytest.raises(ModnetBatchError, match="finite"):
        s.add(bad)
    acc = MetricAccumulator()
    acc.update(ImageMetrics(0.1, 0.1, 0.1, 0.1, 0.1, 1, 1, 1, 1))
    before = acc.to_dict()
    with pytest.raises(ModnetBatchError, match="metric conn"):
        acc.update(ImageMetrics(0.1, 0.1, 0.1, 0.1, bad, 1, 1, 1, 1))
    assert acc.to_dict() == before  # a rejected image adds nothing


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ModnetBatchError, match="positive int"):
        ExactSum().mean(0)
    with pytest.raises(ModnetBatchError, match="decimal string"):
        ExactSum.from_json("1.5")
    with pytest.raises(ModnetBatchError, match="non-negative int"):
        MetricAccumulator().update(ImageMetrics(0.0, 0.0, 0.0, 0.0, 0.0, -1, 0, 0, 0))
    d = MetricAccumulator().to_dict()
    del d["tn"]
    with pytest.raises(ModnetBatchError, match="expected exactly"):
        MetricAccumulator.from_dict(d)
    d = MetricAccumulator().to_dict() | {"scored": 1.0}
    with pytest.raises(ModnetBatchError, match="scored"):
        MetricAccumulator.from_dict(d)
