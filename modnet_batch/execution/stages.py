"""The stages of the unit loop by name, their clocks, and the image that travels between them.

UnitResult.stages holds two views. The unit loop's thread, whose parts add up to
UnitResult.seconds (LOOP_STAGES): reading the unit, waiting for prepared inputs, decoding and
resizing on the engine's device (`--decoding device`; 0 otherwise), inferring, waiting for
finishing (postprocess, score, write) to catch up, and the rest (batching, bookkeeping). And, as
`cpu_<stage>` (POOL_STAGES), the CPU seconds the pool threads spent per pipeline stage
(time.thread_time: work, not waiting for a core). When units queue in one worker, `read_ahead`
(reading before the loop was free) and `drain_overlapped` (waiting for the last scores after
handing the loop over) overlap another unit's seconds, so they are reported but not part of
this unit's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from modnet_batch.data.dataset import Record
from modnet_batch.data.decode import EncodedBytes
from modnet_batch.metrics import ImageRow
from modnet_batch.pipeline import NetworkInput
from modnet_batch.results import ReturnedFile

LOOP_STAGES = ("read", "wait_decode", "device_decode", "infer", "wait_write", "other")
POOL_STAGES = ("decode", "preprocess", "postprocess", "score", "write")


@dataclass
class Item:
    """One image between the stages: its network input, or the error that stopped it."""

    record: Record
    inputs: NetworkInput | None = None
    rgb: npt.NDArray[np.uint8] | None = None  # kept only for outputs that need the photo
    kept: bool = False  # done by an earlier attempt (Writes.keep_existing)
    error: BaseException | None = None
    cpu: dict[str, float] = field(default_factory=dict)  # pool seconds per POOL_STAGES entry
    # `--decoding device`: the photo's bytes, for the loop to decode on the device (its ground
    # truth, if any, is already decoded on the pool: `gt`)
    encoded: EncodedBytes | None = None
    gt: npt.NDArray[np.float64] | None = None
    # "device", or "cpu: <why>"; empty for an image that was not decoded (unreadable, kept)
    decoded_by: str = ""


@dataclass
class Finished:
    """One image out of the finish stage: its row, the pool's seconds, the files to return."""

    row: ImageRow
    cpu: dict[str, float] = field(default_factory=dict)
    files: list[ReturnedFile] = field(default_factory=list)


class StageClock:
    """Wall seconds of the loop's thread per LOOP_STAGES entry and CPU seconds of the pool
    threads per POOL_STAGES entry."""

    def __init__(self) -> None:
        self.wall = dict.fromkeys(LOOP_STAGES, 0.0)
        self.cpu = dict.fromkeys(POOL_STAGES, 0.0)

    def add(self, stage: str, since: float) -> float:
        """Count the wall time since `since` (a perf_counter) to `stage`; returns now."""
        now = time.perf_counter()
        self.wall[stage] += now - since
        return now

    def add_cpu(self, spent: dict[str, float]) -> None:
        for stage, seconds in spent.items():
            self.cpu[stage] += seconds

    def take(self, stage: str) -> float:
        """The wall seconds of `stage` so far, reset to 0 (time that overlapped another unit)."""
        seconds, self.wall[stage] = self.wall[stage], 0.0
        return seconds

    def stages(self, seconds: float, extra: dict[str, float]) -> dict[str, float]:
        """UnitResult.stages of a unit that held the loop `seconds`."""
        out = dict(self.wall)
        out["other"] = max(0.0, seconds - sum(out.values()))
        out.update({f"cpu_{k}": v for k, v in self.cpu.items()})
        out.update(extra)
        return out
