"""What an engine does on its device besides inference (`Session.device_work`): decode and
prepare photos there (`--decoding device`), score there (`--scoring device`), and resize outputs
back to each photo's size there. An engine without it (onnxruntime) leaves all of that to the
CPU threads; the unit loop asks this interface, never the engine's own types.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from modnet_batch.data.decode import EncodedBytes
from modnet_batch.errors import ModnetBatchError
from modnet_batch.protocol import Protocol as EvaluationProtocol


class DeviceOutOfMemory(ModnetBatchError):
    """The device had too little free memory for one image's step: that step runs on the CPU."""


@dataclass(frozen=True)
class EncodedPhoto:
    """A photo's encoded bytes and the size its header gives (what the device must decode)."""

    data: EncodedBytes
    height: int
    width: int


@dataclass
class DevicePrepared:
    """A photo decoded and prepared on the device: its [3,h,w] float32 network input there (the
    engine's own tensor, opaque here but for its `shape`) and, when asked, its RGB on the host."""

    network_input: Any
    rgb: npt.NDArray[np.uint8] | None = None


@dataclass(frozen=True)
class DeviceFallback:
    """Why the device did not decode a photo: it is decoded on the CPU instead."""

    reason: str


# per photo: prepared, left to the CPU (and why), or the error that makes its error row
DeviceOutcome = DevicePrepared | DeviceFallback | Exception


@dataclass
class DeviceBatch:
    """A batch inferred on the device: the outputs on the host, and on the device for
    `DeviceWork.resize_back`."""

    output: npt.NDArray[np.float32]  # [B,1,h,w]
    input_hw: tuple[int, int]
    on_device: Any


class DevicePreparer(Protocol):
    """Decodes groups of photos on the device and turns them into network inputs there."""

    @property
    def name(self) -> str:
        """What decodes, shown in the summary."""
        ...

    @property
    def group_pixels(self) -> int:
        """The decoded pixels one group may hold (a larger photo is a group alone)."""
        ...

    def prepare(
        self, photos: Sequence[EncodedPhoto], protocol: EvaluationProtocol, keep_rgb: bool
    ) -> list[DeviceOutcome]:
        """One outcome per photo, in order; `keep_rgb`: bring each decoded photo to the host."""
        ...


class DeviceWork(Protocol):
    """The work an engine can do on its device besides `Session.run`."""

    def open_preparer(self, pixels: int) -> DevicePreparer:
        """The device's photo decoder, in groups of at most `pixels` (fewer where the device's
        free memory holds fewer); raise ModnetBatchError where the device cannot decode."""
        ...

    def infer(self, inputs: Sequence[Any]) -> DeviceBatch:
        """Infer one batch: each input a `DevicePrepared.network_input` or a [3,h,w] float32
        array on the host (a photo the CPU prepared)."""
        ...

    def resize_back(
        self, batch: DeviceBatch, index: int, height: int, width: int
    ) -> npt.NDArray[np.float32]:
        """Output `index` of `batch` resized on the device to height x width (INTER_AREA), on
        the host; raise DeviceOutOfMemory where the device cannot hold it."""
        ...

    def run_scored(
        self,
        pixels: npt.NDArray[np.uint8],
        gt_pixels: npt.NDArray[np.uint8] | None,
        protocol: EvaluationProtocol,
    ) -> tuple[npt.NDArray[np.float32], list[dict[str, Any]] | None]:
        """[B,h,w,3] uint8 at the network size -> the [B,1,h,w] outputs on the host and, with
        ground truth ([B,H,W] uint8 at the scoring size), each image's metrics but Conn."""
        ...
