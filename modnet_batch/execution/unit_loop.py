"""One work unit's run through the stages: read -> prepare (pool threads, or the engine's
device) -> batch -> infer (this thread) -> finish (pool threads) -> the unit's result.

Back-pressure is explicit: at most `LoopParts.max_prepared` images are read ahead of the
network (prepared or being prepared), and at most as many inferred images wait for the finish
stage before the loop waits for it; so memory stays bounded whatever the unit's size.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from modnet_batch.data.dataset import Record
from modnet_batch.execution import signals
from modnet_batch.execution.device_prepare import DeviceGroups
from modnet_batch.execution.finish import Finisher
from modnet_batch.execution.infer import Inference
from modnet_batch.execution.prepare import Preparer
from modnet_batch.execution.shard_check import ShardReadError, ShardUnreadable
from modnet_batch.execution.stages import Finished, Item, StageClock
from modnet_batch.metrics import ImageRow, MetricAccumulator
from modnet_batch.pipeline import ImagePipeline, error_text, is_transient
from modnet_batch.results import ReturnedFile, UnitResult, WorkUnit
from modnet_batch.storage import shown


@dataclass(frozen=True)
class LoopParts:
    """What every unit's run shares in one worker: the stages and their bounds."""

    pipeline: ImagePipeline
    pool: ThreadPoolExecutor  # the prepare and finish stages run here
    preparer: Preparer
    inference: Inference
    finisher: Finisher
    batch_size: int
    max_prepared: int  # images read ahead of the network; also inferred ones awaiting finish
    model: str  # named in the error of a model whose output is not MODNet's
    label: str  # the worker, in the unit's result
    needs_pixels: bool  # outputs that need the photo: read the original bytes, not prepared
    open_groups: Callable[[], DeviceGroups] | None = None  # `--decoding device`
    # called between images: raises to stop the unit (a signal; the worker being stopped)
    check: Callable[[], None] = signals.check


class UnitRun:
    """One work unit through the stages; `count()` is called once per image done."""

    def __init__(self, parts: LoopParts, unit: WorkUnit, count: Callable[[], None]) -> None:
        self.parts = parts
        self.unit = unit
        self.count = count
        self.clock = StageClock()
        self.records: Iterator[Record] = parts.pipeline.records(
            unit.path,
            prepared=not parts.needs_pixels,
            row_groups=None if unit.row_groups is None else list(unit.row_groups),
            reader=unit.reader,
        )
        self.only = None if unit.only is None else set(unit.only)
        self.exhausted = False
        self.preparing: deque[Future[Item]] = deque()  # bounded by parts.max_prepared
        self.finishing: deque[Future[Finished]] = deque()  # bounded likewise
        self.groups = None if parts.open_groups is None else parts.open_groups()
        self.batch: list[Item] = []
        self.shape: tuple[int, ...] = ()  # of the batch's inputs
        self.rows: list[ImageRow] = []
        self.returned: list[ReturnedFile] = []
        self.kept = 0  # images an earlier attempt finished
        self.decoded: dict[str, int] = {}  # images per decoder (`--decoding device`)

    # --- read ---------------------------------------------------------------------------------
    def read(self) -> None:
        """Read records and hand them to the prepare stage until `max_prepared` are ahead."""
        t = time.perf_counter()
        while not self.exhausted and len(self.preparing) < self.parts.max_prepared:
            record = self._next_record()
            if record is None:
                self.exhausted = True
            elif self.only is None or record.image_id in self.only:  # else a resume's retry
                self.preparing.append(self.parts.pool.submit(self.parts.preparer.prepare, record))
        self.clock.add("read", t)

    def _next_record(self) -> Record | None:
        try:
            return next(self.records, None)
        except Exception as exc:  # pyarrow on a damaged file: name the shard, not a trace
            unit = self.unit
            if is_transient(exc):  # the bytes were checked: the storage failed
                raise ShardReadError(
                    f"reading shard {unit.name} ({shown(unit.path)}) failed: {error_text(exc)}"
                ) from None
            raise ShardUnreadable(
                f"shard {unit.name} ({shown(unit.path)}) is unreadable: {error_text(exc)}; "
                "re-create the dataset (`modnet-batch verify` checks every shard)"
            ) from None

    def read_ahead(self) -> float:
        """Read (and start preparing) before the loop is free; returns the seconds, which
        overlap another unit's and are kept out of this one's."""
        self.read()
        return self.clock.take("read")

    # --- the loop -----------------------------------------------------------------------------
    def run(self) -> None:
        """Every image through the stages up to handing it to the finish stage."""
        while True:
            self.parts.check()  # a SIGTERM, a Ctrl-C or a stopped worker stops between images
            self.read()
            if not self.preparing:
                break
            t = time.perf_counter()
            item = self.preparing.popleft().result()
            self.clock.add("wait_decode", t)
            self.clock.add_cpu(item.cpu)
            if item.encoded is not None and self.groups is not None:
                self._to_device(item, self.groups)
            else:
                self.settle(item)
        if self.groups is not None and self.groups.group:
            self._decode_group(self.groups)
        if self.batch:
            self.flush()

    def _to_device(self, item: Item, groups: DeviceGroups) -> None:
        """A photo for the device's decoder: it joins the group, which is decoded when full."""
        if groups.full_for(item):
            self._decode_group(groups)
        groups.add(item)

    def _decode_group(self, groups: DeviceGroups) -> None:
        for item in groups.decode(self.clock):
            self.settle(item)

    # --- batch --------------------------------------------------------------------------------
    def settle(self, item: Item) -> None:
        """An image out of the prepare stage: kept, an error row, or into the batch."""
        if item.kept:  # its files were written by an earlier attempt of this job
            self._row(self.parts.pipeline.row(item.record))
            self.kept += 1
            return
        if self.groups is not None and item.decoded_by:
            self.decoded[item.decoded_by] = self.decoded.get(item.decoded_by, 0) + 1
        if item.inputs is None:
            self._row(self.parts.pipeline.row(item.record, error=item.error))
            return
        if self.batch and item.inputs.shape != self.shape:  # sizes differ (paper): one each
            self.flush()
        self.shape = item.inputs.shape
        self.batch.append(item)
        if len(self.batch) >= self.parts.batch_size:
            self.flush()

    # --- infer, then hand to the finish stage -------------------------------------------------
    def flush(self) -> None:
        """Infer the batch and hand each output to the finish stage."""
        batch, self.batch = self.batch, []
        done = self.parts.inference.infer(batch, self.clock)
        wrong = done.wrong_size(self.parts.model)
        if wrong is not None:  # not MODNet: each image says so, named
            for item in batch:
                self._row(self.parts.pipeline.row(item.record, error=wrong))
            return
        for i, (item, output) in enumerate(zip(batch, done.output, strict=True)):
            metrics = None if done.device_metrics is None else done.device_metrics[i]
            resized = None if done.resized is None else done.resized[i]
            finish = self.parts.finisher.finish
            self.finishing.append(self.parts.pool.submit(finish, item, output[0], metrics, resized))
        self.collect(block=False)
        self.collect(block=True, keep=self.parts.max_prepared)  # finishing may lag inference

    # --- finish -------------------------------------------------------------------------------
    def collect(self, block: bool, keep: int = 0) -> None:
        """Take finished images: those done (or, `block`, all but the newest `keep`)."""
        while len(self.finishing) > keep and (block or self.finishing[0].done()):
            t = time.perf_counter()
            finished = self.finishing.popleft().result()
            self.clock.add("wait_write", t)
            self.returned.extend(finished.files)
            self.clock.add_cpu(finished.cpu)
            self._row(finished.row)

    def drain(self) -> None:
        """Wait for the finish stage's last images."""
        self.collect(block=True)

    def drain_overlapped(self) -> float:
        """Drain after the loop went to the next unit; returns the seconds, which overlap
        that unit's and are kept out of this one's."""
        before = self.clock.wall["wait_write"]
        self.collect(block=True)
        overlapped = self.clock.wall["wait_write"] - before
        self.clock.wall["wait_write"] = before
        return overlapped

    def _row(self, row: ImageRow) -> None:
        self.rows.append(row)
        self.count()

    # --- the result ---------------------------------------------------------------------------
    def result(self, seconds: float, started: float, extra: dict[str, float]) -> UnitResult:
        """The unit's result; `seconds`: how long it held the loop, from `started` (epoch)."""
        acc = MetricAccumulator()
        for row in self.rows:
            if row.scored and row.metrics is not None:
                acc.update(row.metrics)
        rows = sorted(self.rows, key=lambda r: r.image_id)
        return UnitResult(
            decoded=self.decoded,
            unit=self.unit.name,
            rows=rows,
            accumulator=acc.to_dict(),
            images=len(rows) - self.kept,  # the work of this attempt: kept images cost nothing
            failed=sum(r.error is not None for r in rows),
            seconds=seconds,
            stages=self.clock.stages(seconds, extra),
            worker=self.parts.label,
            node=socket.gethostname(),
            pid=os.getpid(),
            attempt=self.unit.attempt,
            started=started,
            finished=started + seconds,
            files=self.returned,
        )
