"""How far a reduced decode moved a scored job's metrics: a sample of its scored images is run
again in the driver with an exact decode, and both sets of metrics are reduced over that sample.

A reduced decode is a speed choice; MODNet flips regions on sub-level input changes, so its
error depends on the images and cannot be bounded in advance. This measures it on the job's own
images, so that the summary says by how much, not only that, the metrics are approximate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from modnet_batch.data.dataset import Dataset, Record, iter_records
from modnet_batch.engine import EngineSpec, open_session
from modnet_batch.execution.resources import available_cpus
from modnet_batch.metrics import DATASET, ImageRow, MetricAccumulator
from modnet_batch.pipeline import DecodeMode, ImagePipeline


@dataclass(frozen=True)
class DecodeCheck:
    """Metrics over the sampled images as the job measured them and with an exact decode."""

    images: list[str]
    job: dict[str, float | None]
    exact: dict[str, float | None]
    max_abs_mse: float  # the largest per-image |MSE(job) - MSE(exact)|
    seconds: float

    @property
    def delta(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for k in DATASET:
            a, b = self.job[k], self.exact[k]
            out[k] = None if a is None or b is None else a - b
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "job": self.job,
            "exact": self.exact,
            "delta": self.delta,
            "max_abs_mse": self.max_abs_mse,
            "seconds": self.seconds,
        }


def sample(dataset: Dataset, rows: list[ImageRow], images: int) -> dict[str, list[str]]:
    """Up to `images` scored ids from shards spread evenly over the dataset (shard -> ids), so
    that the check reads a few shards, not the dataset."""
    scored = {r.image_id for r in rows if r.scored}
    shards = dataset.shards
    if images <= 0 or not scored or not shards:
        return {}
    last = len(shards) - 1
    spread = sorted({round(i * last / max(images - 1, 1)) for i in range(images)})
    picked: dict[str, list[str]] = {}
    for k, index in enumerate(spread):  # `images` split as evenly as the shards allow
        take = images // len(spread) + (k < images % len(spread))
        try:
            ids = [i for i in dataset.image_ids(shards[index]) if i in scored]
        except Exception:  # an unreadable shard has no scored rows to compare
            continue
        if ids and take:
            picked[shards[index].name] = ids[:: max(1, len(ids) // take)][:take]
    return picked


def measure(
    dataset: Dataset,
    rows: list[ImageRow],
    protocol: str,
    model: str,
    images: int,
    engine: str,
) -> DecodeCheck | None:
    """Re-run the sample with an exact decode on the driver's CPU; None when there is nothing
    to compare (no scored image)."""
    t0 = time.perf_counter()
    chosen = sample(dataset, rows, images)
    if not chosen:
        return None
    pipeline = ImagePipeline(protocol, DecodeMode.EXACT)
    session = open_session(EngineSpec(model=model, threads=available_cpus(), spin=False), engine)
    by_id = {r.image_id: r for r in rows}
    shards = {s.name: s for s in dataset.shards}
    job_acc, exact_acc = MetricAccumulator(), MetricAccumulator()
    worst = 0.0
    done: list[str] = []
    for shard_name, ids in chosen.items():
        wanted = set(ids)
        records: list[Record] = [
            r
            for r in iter_records(dataset.shard_path(shards[shard_name]), reader=dataset.reader)
            if r.image_id in wanted
        ]
        for record in records:
            inputs = pipeline.preprocess(pipeline.decode(record))
            assert inputs.gt is not None  # sampled from scored rows
            assert inputs.tensor is not None  # a host pipeline: float inputs
            out = session.run(inputs.tensor[None])[0, 0]
            exact = pipeline.score(pipeline.postprocess(out, record), inputs.gt)
            reduced = by_id[record.image_id].metrics
            assert reduced is not None
            job_acc.update(reduced)
            exact_acc.update(exact)
            worst = max(worst, abs(reduced.mse - exact.mse))
            done.append(record.image_id)
    job, ex = job_acc.summary(), exact_acc.summary()
    return DecodeCheck(
        images=sorted(done),
        job={k: _float(job[k]) for k in DATASET},
        exact={k: _float(ex[k]) for k in DATASET},
        max_abs_mse=float(np.float64(worst)),
        seconds=time.perf_counter() - t0,
    )


def _float(value: float | int | None) -> float | None:
    return None if value is None else float(value)
