"""The per-shard pipeline every backend runs: read -> decode -> preprocess -> infer (batched)
-> postprocess -> score -> write npz, with decoding and scoring overlapped with inference.

The numeric work is delegated to `modnet_batch.protocol`, `modnet_batch.metrics` and
`modnet_batch.data.decode`; this module only schedules it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from modnet_batch.data.dataset import Record, iter_records
from modnet_batch.data.decode import decode_image, decode_matte
from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution.rundir import RunDir, write_alpha
from modnet_batch.metrics import ImageMetrics, MetricAccumulator, image_metrics
from modnet_batch.model.session import ModelSession, SessionSpec, open_session
from modnet_batch.protocol import Protocol, get_protocol

METRIC_COLUMNS = ("mse", "mad", "sad", "grad", "conn")
CONFUSION_COLUMNS = ("tp", "fp", "fn", "tn")
STAGES = ("read", "decode", "preprocess", "infer", "postprocess", "score", "write")


@dataclass(frozen=True)
class WorkerSpec:
    """Everything one worker needs; small and picklable (it travels to Ray actors)."""

    model: str
    protocol: str
    run_dir: str
    provider: str = "cpu"
    device_index: int = 0
    threads: int = 1
    batch_size: int = 4
    decode_threads: int = 1
    decode_reduce: int = 1  # 1 = exact decode; 2/4/8 = JPEG DCT-domain downscale
    label: str = "cpu:0"


@dataclass(frozen=True)
class ShardTask:
    name: str
    path: str
    rows: int
    attempt: int = 0


@dataclass
class ShardResult:
    """What a worker returns for one shard: per-image rows, exact partial sums and timings."""

    shard: str
    rows: list[dict[str, Any]]
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
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardResult:
        return cls(**data)


@dataclass
class _Prepared:
    record: Record
    tensor: npt.NDArray[np.float32] | None = None
    gt: npt.NDArray[np.float64] | None = None
    height: int = 0
    width: int = 0
    error: str | None = None
    times: dict[str, float] = field(default_factory=dict)


def _row(image_id: str, width: int, height: int) -> dict[str, Any]:
    row: dict[str, Any] = {"image_id": image_id, "width": width, "height": height}
    row.update(dict.fromkeys(METRIC_COLUMNS))
    row.update(dict.fromkeys(CONFUSION_COLUMNS))
    row["error"] = None
    return row


class ShardProcessor:
    """Loads the model once and turns shards into alpha files and metric rows."""

    def __init__(self, spec: WorkerSpec, session: ModelSession | None = None) -> None:
        self.spec = spec
        self.protocol: Protocol = get_protocol(spec.protocol)
        self.run = RunDir(spec.run_dir)
        self.run.alpha.mkdir(parents=True, exist_ok=True)
        cv2.setNumThreads(1)  # the pool below is the parallelism; never oversubscribe the cores
        t0 = time.perf_counter()
        self.session = session or open_session(
            SessionSpec(
                model=spec.model,
                provider=spec.provider,
                device_index=spec.device_index,
                threads=spec.threads,
                spin=spec.provider != "cpu",
            )
        )
        self.session_seconds = time.perf_counter() - t0
        self._pool = ThreadPoolExecutor(spec.decode_threads, thread_name_prefix="pipeline")
        self.images_done = 0  # read by progress polls from another thread
        self._lock = threading.Lock()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # --- stages run in the pool -------------------------------------------------------------
    def _prepare(self, record: Record) -> _Prepared:
        item = _Prepared(record=record)
        try:
            t = time.perf_counter()
            rgb = decode_image(record.image, name=record.image_id, reduce=self.spec.decode_reduce)
            matte = None
            if record.matte is not None:
                matte = decode_matte(record.matte, name=f"{record.image_id} (matte)")
            t2 = time.perf_counter()
            item.height, item.width = record.height, record.width
            item.tensor = self.protocol.preprocess(rgb)
            if matte is not None:
                if matte.shape != (record.height, record.width):
                    raise ModnetBatchError(
                        f"matte of {record.image_id} is {matte.shape[1]}x{matte.shape[0]}, "
                        f"image is {record.width}x{record.height}"
                    )
                item.gt = self.protocol.ground_truth(matte)
            item.times = {"decode": t2 - t, "preprocess": time.perf_counter() - t2}
        except Exception as exc:  # one bad image becomes an error row; the shard goes on
            item.error = f"{type(exc).__name__}: {exc}"
        return item

    def _finish(self, item: _Prepared, output: npt.NDArray[np.float32]) -> dict[str, Any]:
        row = _row(item.record.image_id, item.width, item.height)
        t = time.perf_counter()
        try:
            alpha = self.protocol.postprocess(output, item.height, item.width)
            t2 = time.perf_counter()
            if item.gt is not None:
                m = image_metrics(
                    alpha.score,
                    item.gt,
                    self.protocol.foreground(alpha.score),
                    self.protocol.foreground(item.gt),
                )
                row.update({k: getattr(m, k) for k in (*METRIC_COLUMNS, *CONFUSION_COLUMNS)})
            t3 = time.perf_counter()
            write_alpha(self.run.alpha_path(item.record.image_id), alpha.stored)
            row["_times"] = {
                "postprocess": t2 - t,
                "score": t3 - t2,
                "write": time.perf_counter() - t3,
            }
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
        return row

    # --- the shard loop (one thread: reads, batches, infers) --------------------------------
    def process(
        self, task: ShardTask, on_image: Callable[[int], None] | None = None
    ) -> ShardResult:
        start = time.perf_counter()
        stages = dict.fromkeys(STAGES, 0.0)
        stages["wait"] = 0.0
        rows: list[dict[str, Any]] = []
        prefetch = max(2 * self.spec.batch_size, 2 * self.spec.decode_threads)
        pending: deque[Future[_Prepared]] = deque()
        finishing: deque[Future[dict[str, Any]]] = deque()
        records = iter_records(task.path)

        def next_record() -> Record | None:
            t = time.perf_counter()
            rec = next(records, None)
            stages["read"] += time.perf_counter() - t
            return rec

        def collect(block: bool, keep: int = 0) -> None:
            while len(finishing) > keep and (block or finishing[0].done()):
                t = time.perf_counter()
                row = finishing.popleft().result()
                stages["wait"] += time.perf_counter() - t
                for k, v in row.pop("_times", {}).items():
                    stages[k] += v
                rows.append(row)
                self._count(on_image)

        def flush(batch: list[_Prepared]) -> None:
            t = time.perf_counter()
            out = self.session.run(np.stack([b.tensor for b in batch]))
            stages["infer"] += time.perf_counter() - t
            for item, o in zip(batch, out, strict=True):
                finishing.append(self._pool.submit(self._finish, item, o[0]))
            collect(block=False)
            collect(block=True, keep=prefetch)  # bounded memory when scoring lags inference

        exhausted = False
        batch: list[_Prepared] = []
        while True:
            while not exhausted and len(pending) < prefetch:
                rec = next_record()
                if rec is None:
                    exhausted = True
                else:
                    pending.append(self._pool.submit(self._prepare, rec))
            if not pending:
                break
            t = time.perf_counter()
            item = pending.popleft().result()
            stages["wait"] += time.perf_counter() - t
            for k, v in item.times.items():
                stages[k] += v
            if item.error is not None:
                row = _row(item.record.image_id, item.record.width, item.record.height)
                row["error"] = item.error
                rows.append(row)
                self._count(on_image)
                continue
            if batch and batch[0].tensor.shape != item.tensor.shape:  # type: ignore[union-attr]
                flush(batch)
                batch = []
            batch.append(item)
            if len(batch) >= self.spec.batch_size:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
        collect(block=True)

        acc = MetricAccumulator()
        for row in rows:
            if row["error"] is None and row["mse"] is not None:
                acc.update(
                    ImageMetrics(**{k: row[k] for k in (*METRIC_COLUMNS, *CONFUSION_COLUMNS)})
                )
        rows.sort(key=lambda r: r["image_id"])
        return ShardResult(
            shard=task.name,
            rows=rows,
            accumulator=acc.to_dict(),
            images=len(rows),
            failed=sum(r["error"] is not None for r in rows),
            seconds=time.perf_counter() - start,
            stages=stages,
            worker=self.spec.label,
            node=socket.gethostname(),
            pid=os.getpid(),
            attempt=task.attempt,
        )

    def _count(self, on_image: Callable[[int], None] | None) -> None:
        with self._lock:
            self.images_done += 1
        if on_image is not None:
            on_image(1)


def iter_tasks(dataset_root: Path, shards: list[Any], done: set[str]) -> Iterator[ShardTask]:
    for shard in shards:
        if shard.name not in done:
            yield ShardTask(name=shard.name, path=str(dataset_root / shard.path), rows=shard.rows)
