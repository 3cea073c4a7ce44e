"""The infer stage, on the unit loop's thread: one batch through the engine, in the form the
job's inputs take. Host float inputs go to `Session.run`; with `--scoring device` uint8 pixels
are normalised, inferred and scored on the engine's device; with `--decoding device` inputs
already on the device are inferred there and outputs resized back there (engine.device_work).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from modnet_batch.engine import Session
from modnet_batch.engine.device_work import DeviceBatch, DeviceOutOfMemory, DeviceWork
from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution.stages import Item, StageClock
from modnet_batch.execution.worker_spec import DeviceStages
from modnet_batch.pipeline import ImagePipeline
from modnet_batch.results.outputs import OutputSize, OutputSpec


@dataclass
class Inferred:
    """A batch's [B,1,h,w] outputs on the host and what else the engine's device did for it."""

    output: npt.NDArray[np.float32]
    input_hw: tuple[int, ...]
    # `--scoring device`: each image's metrics but Conn (None without ground truth)
    device_metrics: list[dict[str, Any]] | None = None
    # `--decoding device`: each output at its photo's size, where resized on the device
    resized: list[npt.NDArray[np.float32] | None] | None = None

    def wrong_size(self, model: str) -> ModnetBatchError | None:
        """The error of every image of a batch whose output is not its input's size (not
        MODNet), or None."""
        if tuple(self.output.shape[-2:]) == tuple(self.input_hw):
            return None
        (h, w), (ih, iw) = self.output.shape[-2:], self.input_hw
        return ModnetBatchError(
            f"the model's output is {w}x{h} for a {iw}x{ih} input (MODNet's alpha has "
            f"its input's size); check the model {model}"
        )


class Inference(Protocol):
    def infer(self, batch: list[Item], clock: StageClock) -> Inferred:
        """Infer `batch` (every item has inputs), its time counted on `clock`."""
        ...


class HostInference:
    """Float32 inputs prepared on the pool threads, through `Session.run`."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def infer(self, batch: list[Item], clock: StageClock) -> Inferred:
        t = time.perf_counter()
        tensors = [b.inputs.tensor for b in batch if b.inputs and b.inputs.tensor is not None]
        x = tensors[0][None] if len(tensors) == 1 else np.stack(tensors)  # one: no copy
        out = self.session.run(x)
        clock.add("infer", t)
        return Inferred(out, tuple(x.shape[-2:]))


class ScoredInference:
    """uint8 pixels normalised, inferred and scored on the device (`--scoring device`); a batch
    where every image has ground truth is scored there."""

    def __init__(self, work: DeviceWork, pipeline: ImagePipeline) -> None:
        self.work = work
        self.pipeline = pipeline

    def infer(self, batch: list[Item], clock: StageClock) -> Inferred:
        t = time.perf_counter()
        inputs = [b.inputs for b in batch if b.inputs is not None]
        pixels = np.stack([i.pixels for i in inputs if i.pixels is not None])
        gts = [i.gt_pixels for i in inputs if i.gt_pixels is not None]
        gt = np.stack(gts) if len(gts) == len(inputs) else None
        out, metrics = self.work.run_scored(pixels, gt, self.pipeline.protocol)
        clock.add("infer", t)
        return Inferred(out, tuple(pixels.shape[1:3]), device_metrics=metrics)


class DeviceInputInference:
    """Inputs prepared on the device (`--decoding device`; fallbacks from the host), inferred
    there; each output is resized back there where its photo's size is written or scored."""

    def __init__(self, work: DeviceWork, pipeline: ImagePipeline, outputs: OutputSpec) -> None:
        self.work = work
        self.pipeline = pipeline
        self.source_files = bool(outputs.files) and outputs.size is OutputSize.SOURCE

    def infer(self, batch: list[Item], clock: StageClock) -> Inferred:
        t = time.perf_counter()
        xs = [_input_of(b) for b in batch if b.inputs is not None]
        done = self.work.infer(xs)
        t = clock.add("infer", t)
        resized: list[npt.NDArray[np.float32] | None] = [None] * len(batch)
        if tuple(done.output.shape[-2:]) == done.input_hw:
            for i, item in enumerate(batch):
                resized[i] = self._resized(done, i, (item.record.height, item.record.width))
        for item in batch:  # device memory freed
            if item.inputs is not None and item.inputs.on_device is not None:
                item.inputs = replace(item.inputs, on_device=None)
        clock.add("device_decode", t)
        return Inferred(done.output, done.input_hw, resized=resized)

    def _resized(
        self, done: DeviceBatch, index: int, size: tuple[int, int]
    ) -> npt.NDArray[np.float32] | None:
        at_source = self.pipeline.protocol.scoring_size(*size) == size
        if size == tuple(done.output.shape[-2:]) or not (self.source_files or at_source):
            return None
        try:
            return self.work.resize_back(done, index, *size)
        except DeviceOutOfMemory:  # the finish stage resizes it on the CPU
            return None


def _input_of(item: Item) -> Any:
    assert item.inputs is not None
    on_device = item.inputs.on_device
    return on_device if on_device is not None else item.inputs.tensor


def inference_for(
    session: Session, pipeline: ImagePipeline, outputs: OutputSpec, stages: DeviceStages
) -> Inference:
    """The infer stage for a job whose `stages` run on the engine's device (where it has
    device work at all)."""
    work = session.device_work
    if work is not None and stages.prepare:
        return DeviceInputInference(work, pipeline, outputs)
    if work is not None and stages.score:
        return ScoredInference(work, pipeline)
    return HostInference(session)
