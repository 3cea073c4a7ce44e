"""The MODNet paper's protocol, as MODNet's onnx/inference_onnx.py runs the model.

RGB normalised to [-1, 1] in float32 at full size; the ref_size=512 rule (if both sides are above
512 or both below, scale so the short side is 512, else keep), each side floored to a multiple of
32, cv2.INTER_AREA; the float output is resized back to the original size with INTER_AREA (no
uint8 step) and scored at full resolution; foreground is alpha >= 0.5.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from modnet_batch.protocol.base import InputPlan, Protocol, ScoredAlpha, rounded_uint8

REF_SIZE = 512

# (x - 127.5) / 127.5 in float32 for every uint8 x: the normalisation as one table look-up, the
# same float32 values as the arithmetic, in one pass over the photo and no temporaries.
NORMALISED = (np.arange(256, dtype=np.float32) - np.float32(127.5)) / np.float32(127.5)

_scratch = threading.local()


def _float_scratch(shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
    """This thread's float32 buffer, grown to the largest photo it has seen and reused: a fresh
    full-size array costs more in page faults than the pass that fills it."""
    size = int(np.prod(shape))
    buf: npt.NDArray[np.float32] | None = getattr(_scratch, "buf", None)
    if buf is None or buf.size < size:
        buf = np.empty(size, np.float32)
        _scratch.buf = buf
    return buf[:size].reshape(shape)


def normalised(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """HxWx3 uint8 -> (rgb - 127.5) / 127.5 as float32, bit for bit, in this thread's scratch
    buffer (valid until the thread's next call)."""
    src = np.ascontiguousarray(rgb)
    return np.asarray(cv2.LUT(src, NORMALISED, dst=_float_scratch(src.shape)), np.float32)


@dataclass(frozen=True)
class PaperProtocol(Protocol):
    name: str
    ref_size: int = REF_SIZE

    @property
    def reduced_decode(self) -> bool:
        # The matte, the upsampled prediction and Grad/Conn all stay at full resolution (seconds
        # per 20 MP image): a reduced image decode would save ~1% here, so `auto` stays exact.
        return False

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        ref = self.ref_size
        if max(height, width) < ref or min(height, width) > ref:
            if width >= height:
                rh, rw = ref, int(width / height * ref)
            else:
                rh, rw = int(height / width * ref), ref
        else:
            rh, rw = height, width
        return rh - rh % 32, rw - rw % 32

    @property
    def input_plan(self) -> InputPlan:
        return InputPlan(normalise_first=True, interpolation=cv2.INTER_AREA)

    def preprocess(self, rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        h, w = self.network_size(rgb.shape[0], rgb.shape[1])
        x = normalised(rgb)
        small = cv2.resize(x, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32, copy=False)
        return np.ascontiguousarray(small.transpose(2, 0, 1))

    def postprocess(
        self,
        output: npt.NDArray[np.float32],
        height: int,
        width: int,
        resized: npt.NDArray[np.float32] | None = None,
    ) -> ScoredAlpha:
        if resized is not None and resized.shape != (height, width):
            raise ValueError(f"resized output is {resized.shape}, not {(height, width)}")
        full: npt.NDArray[np.floating[Any]] = (
            np.asarray(
                cv2.resize(output, (width, height), interpolation=cv2.INTER_AREA), np.float32
            )
            if resized is None
            else resized
        )
        return ScoredAlpha(values=full, stored=rounded_uint8(full))

    def ground_truth(self, matte: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
        return matte.astype(np.float64) / 255.0

    def foreground(self, alpha: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        return alpha >= 0.5
