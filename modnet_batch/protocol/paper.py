"""The MODNet paper's protocol, as MODNet's onnx/inference_onnx.py runs the model.

RGB normalised to [-1, 1] in float32 at full size; the ref_size=512 rule (if both sides are above
512 or both below, scale so the short side is 512, else keep), each side floored to a multiple of
32, cv2.INTER_AREA; the float output is resized back to the original size with INTER_AREA (no
uint8 step) and scored at full resolution; foreground is alpha >= 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from modnet_batch.protocol.base import InputPlan, Protocol, ScoredAlpha

REF_SIZE = 512


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
        x = (rgb.astype(np.float32) - np.float32(127.5)) / np.float32(127.5)
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
        full = (
            cv2.resize(output, (width, height), interpolation=cv2.INTER_AREA)
            if resized is None
            else resized
        )
        score = full.astype(np.float64)
        stored = np.clip(np.rint(score * 255.0), 0, 255).astype(np.uint8)
        return ScoredAlpha(score=score, stored=stored)

    def ground_truth(self, matte: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
        return matte.astype(np.float64) / 255.0

    def foreground(self, alpha: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        return alpha >= 0.5
