"""What happens to one image: record -> network input and ground truth -> network output ->
the alpha to write and its metric row. One object per job; every caller (the shard loop, the
bench peers, calibration, the report) goes through it, stage by stage.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from modnet_batch.data.dataset import Record, ShardReader, iter_records
from modnet_batch.data.decode import decode_image, decode_matte, opencv_reason, sniff_format
from modnet_batch.errors import ModnetBatchError
from modnet_batch.metrics import ImageMetrics, ImageRow, image_metrics
from modnet_batch.pipeline.decode_mode import DecodeMode, auto_reduce
from modnet_batch.protocol import Protocol, ScoredAlpha, get_protocol
from modnet_batch.storage import AnyPath

# Every stage an image goes through, in order; the shard loop and the naive peer time each.
STAGES = ("read", "decode", "preprocess", "infer", "postprocess", "score", "write")


@dataclass(frozen=True)
class Decoded:
    """`rgb` HxWx3 uint8, `matte` HxW uint8 or None (no ground truth)."""

    rgb: npt.NDArray[np.uint8]
    matte: npt.NDArray[np.uint8] | None


@dataclass(frozen=True)
class NetworkInput:
    """`tensor` 3xhxw float32 in [-1, 1]; `gt` float64 in [0, 1] at the scoring size, or None.

    For an engine that normalises and scores on its device (ImagePipeline(device_inputs=True)),
    `tensor` is None and `pixels` (hxwx3 uint8 at the network size) and `gt_pixels` (uint8 at
    the scoring size) travel instead: a quarter and an eighth of the bytes.
    """

    tensor: npt.NDArray[np.float32] | None
    gt: npt.NDArray[np.float64] | None
    pixels: npt.NDArray[np.uint8] | None = None
    gt_pixels: npt.NDArray[np.uint8] | None = None
    # `--decoding device`: the 3xhxw float32 input as a tensor on the engine's device (torch;
    # typed loosely so that this layer does not import it)
    on_device: Any = None

    @property
    def shape(self) -> tuple[int, ...]:
        """What batches group by: the input's shape, whichever form it has."""
        for data in (self.tensor, self.pixels, self.on_device):
            if data is not None:
                return tuple(data.shape)
        raise AssertionError("a network input without data")


class ImagePipeline:
    """The per-image steps of one job: its protocol and its (resolved) decode mode.

    Every method is a pure function of its arguments and safe to call from several threads.
    Errors are raised; the caller turns them into the image's error row.
    """

    def __init__(
        self,
        protocol: Protocol | str,
        decode: DecodeMode = DecodeMode.EXACT,
        *,
        device_inputs: bool = False,
    ) -> None:
        self.protocol = get_protocol(protocol) if isinstance(protocol, str) else protocol
        self.decode_mode = decode
        if device_inputs and not self.protocol.pixels_on_device:
            raise ModnetBatchError(
                f"protocol {self.protocol.name} cannot be normalised and scored on the device "
                "(it normalises before resizing, or scores at the photo's size)"
            )
        self.device_inputs = device_inputs

    # --- read ---------------------------------------------------------------------------------
    def records(
        self,
        shard: str | AnyPath,
        *,
        prepared: bool = True,
        row_groups: list[int] | None = None,
        reader: ShardReader | None = None,
    ) -> Iterator[Record]:
        """A shard's records (of `row_groups` only, when given: a work unit); inputs stored by
        `ingest --prepare` for this protocol are used unless `prepared` is False (the original
        photo is needed). `reader` reads Parquet that modnet-batch did not write."""
        return iter_records(
            shard,
            prepared_for=self.protocol.name if prepared else None,
            row_groups=row_groups,
            reader=reader,
        )

    # --- decode -------------------------------------------------------------------------------
    def reduce_for(self, record: Record, *, matte: bool = False) -> int:
        """The JPEG reduce factor for the record's image (or matte) under this decode mode."""
        if self.decode_mode is not DecodeMode.AUTO:
            return 1 if matte else self.decode_mode.factor  # a fixed factor: the image only
        data = record.matte if matte else record.image
        if data is None or sniff_format(data) != "jpeg":
            return 1  # other formats decode at full size anyway; resizing twice only costs
        return auto_reduce(self.protocol, record.height, record.width, matte=matte)

    def decode(self, record: Record, *, with_matte: bool = True) -> Decoded:
        """The record's pixels: decoded, or as stored by `ingest --prepare`."""
        if record.read_error is not None:  # its file or its row could not be read
            raise record.read_error
        if record.prepared is not None:  # stored at the protocol's size: nothing to decode
            return Decoded(record.prepared.image, record.prepared.matte if with_matte else None)
        r = self.reduce_for(record)
        rgb = decode_image(record.image, name=record.image_id, reduce=r)
        header = record.sized_by_header or record.output_name is not None  # file lists too
        if header and rgb.shape[:2] != (
            -(-record.height // r),
            -(-record.width // r),
        ):  # the size came from the file's header: never stretch a matte to it
            raise ModnetBatchError(
                f"{record.output_name or record.image_id}: its header says "
                f"{record.width}x{record.height} but it decodes as "
                f"{rgb.shape[1] * r}x{rgb.shape[0] * r} (an orientation tag the decoder does not "
                "apply?); re-save the photo upright"
            )
        matte = self.decode_matte(record) if with_matte else None
        return Decoded(rgb, matte)

    def decode_matte(self, record: Record) -> npt.NDArray[np.uint8] | None:
        """The record's matte decoded (None without one), checked against the image's size."""
        if record.matte is None:
            return None
        r = self.reduce_for(record, matte=True)
        matte = decode_matte(record.matte, name=f"{record.image_id} (matte)", reduce=r)
        if matte.shape != (-(-record.height // r), -(-record.width // r)):
            raise ModnetBatchError(
                f"matte of {record.image_id} is {matte.shape[1]}x{matte.shape[0]}, "
                f"image is {record.width}x{record.height}"
            )
        return matte

    # --- preprocess ---------------------------------------------------------------------------
    def preprocess(self, decoded: Decoded) -> NetworkInput:
        if self.device_inputs:
            gt_pixels = None
            if decoded.matte is not None:
                gt_pixels = self.protocol.ground_truth_pixels(decoded.matte)
            gt = None if gt_pixels is None else gt_pixels.astype(np.float64) / 255.0
            pixels = self.protocol.network_pixels(decoded.rgb)
            return NetworkInput(None, gt, pixels=pixels, gt_pixels=gt_pixels)
        gt = None if decoded.matte is None else self.ground_truth(decoded.matte)
        return NetworkInput(self.protocol.preprocess(decoded.rgb), gt)

    def ground_truth(self, matte: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
        """HxW uint8 matte -> float64 in [0, 1] at the scoring size."""
        return self.protocol.ground_truth(matte)

    def network_input(self, record: Record) -> npt.NDArray[np.float32]:
        """The record's network input alone (no ground truth): bench samples, calibration."""
        return self.protocol.preprocess(self.decode(record, with_matte=False).rgb)

    # --- after the network --------------------------------------------------------------------
    def postprocess(
        self,
        output: npt.NDArray[np.float32],
        record: Record,
        resized: npt.NDArray[np.float32] | None = None,
    ) -> ScoredAlpha:
        """Network output hxw float32 in [0, 1] -> the alpha at the scoring resolution;
        `resized`: the output already resized to the photo's size (on a device)."""
        return self.protocol.postprocess(output, record.height, record.width, resized)

    def source_alpha(
        self,
        output: npt.NDArray[np.float32],
        record: Record,
        resized: npt.NDArray[np.float32] | None = None,
    ) -> npt.NDArray[np.float32]:
        """The alpha at the photo's own size, in [0, 1], for a protocol that scores at another
        size: the network output resized back with INTER_AREA as MODNet's inference_onnx.py
        does (float, no 8-bit step before it), or as a device resized it (`resized`)."""
        if resized is not None:
            return resized
        size = (record.width, record.height)
        return np.asarray(cv2.resize(output, size, interpolation=cv2.INTER_AREA), np.float32)

    def score(self, alpha: ScoredAlpha, gt: npt.NDArray[np.float64]) -> ImageMetrics:
        fg = self.protocol.foreground
        return image_metrics(alpha.score, gt, fg(alpha.score), fg(gt))

    @staticmethod
    def row(
        record: Record,
        metrics: ImageMetrics | None = None,
        error: BaseException | None = None,
    ) -> ImageRow:
        """The image's row; an error becomes its text and whether a retry may succeed."""
        if error is None:
            return ImageRow(record.image_id, record.width, record.height, metrics)
        return ImageRow(
            record.image_id,
            record.width,
            record.height,
            metrics,
            error_text(error),
            is_transient(error),
        )


def error_text(exc: BaseException) -> str:
    """How an exception reads in an image's error row (OpenCV's as a sentence, not its dump)."""
    if isinstance(exc, cv2.error):
        return f"OpenCV could not process the image: {opencv_reason(exc)}"
    return f"{type(exc).__name__}: {exc}"


def is_transient(exc: BaseException) -> bool:
    """Whether a failure may pass on a retry: the file system and memory (a full or read-only
    disk, an I/O error, a lost mount, no memory for now). The image's own bytes and the model's
    output fail the same way every time (undecodable, wrong size): those are kept as errors."""
    gone = FileNotFoundError | IsADirectoryError | NotADirectoryError  # the same on every retry
    return isinstance(exc, OSError | MemoryError) and not isinstance(exc, gone)
