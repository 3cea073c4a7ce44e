"""The per-shard pipeline every backend runs: read -> decode -> preprocess -> infer (batched)
-> postprocess -> score -> write npz. Decoding and scoring run on a small thread pool while the
shard loop's thread infers, so the network waits only when the pool cannot keep up.

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
from modnet_batch.data.decode import decode_image, decode_matte, sniff_format
from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution.rundir import RunDir, write_alpha
from modnet_batch.metrics import ImageMetrics, MetricAccumulator, image_metrics
from modnet_batch.model.session import ModelSession, SessionSpec, open_session
from modnet_batch.protocol import Protocol, get_protocol

METRIC_COLUMNS = ("mse", "mad", "sad", "grad", "conn")
CONFUSION_COLUMNS = ("tp", "fp", "fn", "tn")
# Every stage an image goes through (the naive peer in bench/naive.py times each of them).
STAGES = ("read", "decode", "preprocess", "infer", "postprocess", "score", "write")
# ShardResult.stages holds two views. The shard loop's thread, whose parts add up to
# ShardResult.seconds: reading the shard, waiting for decoded inputs, inferring, waiting for
# scoring/writing to catch up, and the rest (batching, bookkeeping). And, as `cpu_<stage>`, the
# CPU seconds the pool threads spent per stage (time.thread_time: work, not waiting for a core).
# When shards queue in one actor, `read_ahead` (reading before the loop was free) and
# `drain_overlapped` (waiting for the last scores after handing the loop over) overlap another
# shard's seconds, so they are reported but not part of this shard's.
LOOP_STAGES = ("read", "wait_decode", "infer", "wait_write", "other")
POOL_STAGES = ("decode", "preprocess", "postprocess", "score", "write")

AUTO_REDUCE = 0  # WorkerSpec.decode_reduce: pick the JPEG reduce factor per image
# "auto" keeps the reduced image at least this many times the network input on each side, so the
# protocol's area resize still averages >= 2x2 decoded pixels and hides how libjpeg's scaled IDCT
# differs from a box filter. Measured on ppm100-dev (seed-area, fp32): margin 1 moves the mean MSE
# by -9.3e-4, margin 2 by +1.0e-5 (MAD +2.6e-5); MODNet flips a few images on sub-level changes.
# The matte (the ground truth) is reduced by the same rule against the scoring size: alone it
# moves MSE by -5.4e-6, MAD by +3.1e-6, mIoU by -2.4e-5 there.
AUTO_MARGIN = 2


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
    decode_reduce: int = 1  # 1 = exact decode; 2/4/8 = JPEG DCT-domain downscale; 0 = auto
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
    stages: dict[str, float]  # LOOP_STAGES (sum = seconds) and cpu_<POOL_STAGES>
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
    cpu: dict[str, float] = field(default_factory=dict)


def _row(image_id: str, width: int, height: int) -> dict[str, Any]:
    row: dict[str, Any] = {"image_id": image_id, "width": width, "height": height}
    row.update(dict.fromkeys(METRIC_COLUMNS))
    row.update(dict.fromkeys(CONFUSION_COLUMNS))
    row["error"] = None
    return row


def auto_reduce(protocol: Protocol, height: int, width: int, *, matte: bool = False) -> int:
    """The largest JPEG reduce factor (8, 4, 2, else 1) for an image (or, with `matte`, its
    matte) of this size under `protocol`.

    The decoded image must stay at least AUTO_MARGIN times the network input on each side and
    give the protocol the same network input size; a matte likewise for the scoring size (so
    a protocol scoring at full resolution never reduces it).
    """
    size = protocol.scoring_size if matte else protocol.network_size
    nh, nw = size(height, width)
    for r in (8, 4, 2):
        h, w = -(-height // r), -(-width // r)
        if h >= AUTO_MARGIN * nh and w >= AUTO_MARGIN * nw and size(h, w) == (nh, nw):
            return r
    return 1


class _Clock:
    """Wall time of the shard loop's thread per LOOP_STAGES entry."""

    def __init__(self) -> None:
        self.totals = dict.fromkeys(LOOP_STAGES, 0.0)

    def add(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.totals[stage] += now - since
        return now


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
                # spinning threads would take the cores from the decode/score pool
                spin=spec.provider != "cpu",
            )
        )
        self.session_seconds = time.perf_counter() - t0
        self._pool = ThreadPoolExecutor(spec.decode_threads, thread_name_prefix="pipeline")
        self.images_done = 0  # read by progress polls from another thread
        self._lock = threading.Lock()
        # A threaded Ray actor may call process() for a queued shard while one runs: the loops
        # take turns (one session, one pool), but the queued one starts decoding first.
        self._loop_lock = threading.Lock()
        self._waiting = 0  # process() calls waiting for the loop

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # --- stages run in the pool -------------------------------------------------------------
    def _reduce_for(self, record: Record, matte: bool = False) -> int:
        if self.spec.decode_reduce != AUTO_REDUCE:
            return 1 if matte else self.spec.decode_reduce  # a fixed factor: the image only
        data = record.matte if matte else record.image
        if data is None or sniff_format(data) != "jpeg":
            return 1  # other formats decode at full size anyway; resizing twice only costs
        return auto_reduce(self.protocol, record.height, record.width, matte=matte)

    def _prepare(self, record: Record) -> _Prepared:
        item = _Prepared(record=record, height=record.height, width=record.width)
        try:
            t0 = time.thread_time()
            matte: npt.NDArray[np.uint8] | None
            if record.prepared is not None:  # ingest --prepare: stored at the protocol's size
                rgb, matte = record.prepared.image, record.prepared.matte
            else:
                reduce = self._reduce_for(record)
                rgb = decode_image(record.image, name=record.image_id, reduce=reduce)
                matte = None
                if record.matte is not None:
                    r = self._reduce_for(record, matte=True)
                    matte = decode_matte(record.matte, name=f"{record.image_id} (matte)", reduce=r)
                    if matte.shape != (-(-record.height // r), -(-record.width // r)):
                        raise ModnetBatchError(
                            f"matte of {record.image_id} is {matte.shape[1]}x{matte.shape[0]}, "
                            f"image is {record.width}x{record.height}"
                        )
            t1 = time.thread_time()
            item.tensor = self.protocol.preprocess(rgb)
            if matte is not None:
                item.gt = self.protocol.ground_truth(matte)
            item.cpu = {"decode": t1 - t0, "preprocess": time.thread_time() - t1}
        except Exception as exc:  # one bad image becomes an error row; the shard goes on
            item.error = f"{type(exc).__name__}: {exc}"
        return item

    def _finish(self, item: _Prepared, output: npt.NDArray[np.float32]) -> dict[str, Any]:
        row = _row(item.record.image_id, item.width, item.height)
        t0 = time.thread_time()
        try:
            alpha = self.protocol.postprocess(output, item.height, item.width)
            t1 = time.thread_time()
            if item.gt is not None:
                m = image_metrics(
                    alpha.score,
                    item.gt,
                    self.protocol.foreground(alpha.score),
                    self.protocol.foreground(item.gt),
                )
                row.update({k: getattr(m, k) for k in (*METRIC_COLUMNS, *CONFUSION_COLUMNS)})
            t2 = time.thread_time()
            write_alpha(self.run.alpha_path(item.record.image_id), alpha.stored)
            row["_cpu"] = {
                "postprocess": t1 - t0,
                "score": t2 - t1,
                "write": time.thread_time() - t2,
            }
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
        return row

    # --- the shard loop (one thread: reads, batches, infers) --------------------------------
    def process(
        self, task: ShardTask, on_image: Callable[[int], None] | None = None
    ) -> ShardResult:
        clock = _Clock()
        cpu = dict.fromkeys(POOL_STAGES, 0.0)
        rows: list[dict[str, Any]] = []
        prefetch = max(2 * self.spec.batch_size, 2 * self.spec.decode_threads)
        pending: deque[Future[_Prepared]] = deque()
        finishing: deque[Future[dict[str, Any]]] = deque()
        records = iter_records(task.path, prepared_for=self.spec.protocol)
        exhausted = False

        def fill() -> None:
            nonlocal exhausted
            t = time.perf_counter()
            while not exhausted and len(pending) < prefetch:
                rec = next(records, None)
                if rec is None:
                    exhausted = True
                else:
                    pending.append(self._pool.submit(self._prepare, rec))
            clock.add("read", t)

        def collect(block: bool, keep: int = 0) -> None:
            while len(finishing) > keep and (block or finishing[0].done()):
                t = time.perf_counter()
                row = finishing.popleft().result()
                clock.add("wait_write", t)
                for k, v in row.pop("_cpu", {}).items():
                    cpu[k] += v
                rows.append(row)
                self._count(on_image)

        def flush(batch: list[_Prepared]) -> None:
            tensors = [b.tensor for b in batch if b.tensor is not None]
            x = tensors[0][None] if len(tensors) == 1 else np.stack(tensors)  # [None]: no copy
            t = time.perf_counter()
            out = self.session.run(x)
            clock.add("infer", t)
            for item, o in zip(batch, out, strict=True):
                finishing.append(self._pool.submit(self._finish, item, o[0]))
            collect(block=False)
            collect(block=True, keep=prefetch)  # bounded memory when scoring lags inference

        extra: dict[str, float] = {}
        if self._loop_lock.acquire(blocking=False):
            start = time.perf_counter()
        else:
            # Another shard holds the loop (a threaded Ray actor runs the queued one): start
            # decoding now so that our first images are ready when it ends. This reading
            # overlaps the other shard's time, so it is kept out of ours (read_ahead).
            fill()
            extra["read_ahead"], clock.totals["read"] = clock.totals["read"], 0.0
            with self._lock:
                self._waiting += 1
            self._loop_lock.acquire()
            with self._lock:
                self._waiting -= 1
            start = time.perf_counter()
        held = True
        try:
            batch: list[_Prepared] = []
            shape: tuple[int, ...] = ()
            while True:
                fill()
                if not pending:
                    break
                t = time.perf_counter()
                item = pending.popleft().result()
                clock.add("wait_decode", t)
                for k, v in item.cpu.items():
                    cpu[k] += v
                if item.error is not None or item.tensor is None:
                    row = _row(item.record.image_id, item.record.width, item.record.height)
                    row["error"] = item.error
                    rows.append(row)
                    self._count(on_image)
                    continue
                if batch and item.tensor.shape != shape:  # sizes differ (paper): one batch each
                    flush(batch)
                    batch = []
                shape = item.tensor.shape
                batch.append(item)
                if len(batch) >= self.spec.batch_size:
                    flush(batch)
                    batch = []
            if batch:
                flush(batch)
            if self._waiting:
                # the next shard infers while our last images are scored: hand the loop over
                seconds = time.perf_counter() - start
                self._loop_lock.release()
                held = False
                before = clock.totals["wait_write"]
                collect(block=True)
                extra["drain_overlapped"] = clock.totals["wait_write"] - before
                clock.totals["wait_write"] = before
            else:
                collect(block=True)
                seconds = time.perf_counter() - start
        finally:
            if held:
                self._loop_lock.release()

        acc = MetricAccumulator()
        for row in rows:
            if row["error"] is None and row["mse"] is not None:
                acc.update(
                    ImageMetrics(**{k: row[k] for k in (*METRIC_COLUMNS, *CONFUSION_COLUMNS)})
                )
        rows.sort(key=lambda r: r["image_id"])
        stages = dict(clock.totals)
        stages["other"] = max(0.0, seconds - sum(stages.values()))
        stages.update({f"cpu_{k}": v for k, v in cpu.items()})
        stages.update(extra)
        return ShardResult(
            shard=task.name,
            rows=rows,
            accumulator=acc.to_dict(),
            images=len(rows),
            failed=sum(r["error"] is not None for r in rows),
            seconds=seconds,
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
