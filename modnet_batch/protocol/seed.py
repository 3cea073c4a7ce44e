"""The seed model zoo's PPM-100 protocol: fixed 3x480x288 input, scored at 480x288.

`seed-area` resizes the input with cv2.INTER_AREA; `seed-linear` with cv2.INTER_LINEAR (the
cv2.resize default, as the model zoo's CPU reference code literally does). The prediction is
`uint8(output * 255)` (truncated), the ground truth is resized to 288x480 with INTER_AREA, and a
pixel is foreground when its 8-bit value is >= 128.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from modnet_batch.protocol.base import InputPlan, Protocol, ScoredAlpha

INPUT_HEIGHT = 480
INPUT_WIDTH = 288


@dataclass(frozen=True)
class SeedProtocol(Protocol):
    name: str
    interpolation: int

    @property
    def reduced_decode(self) -> bool:
        # INTER_AREA averages >= 2x2 reduced pixels per input pixel: measured on ppm100-dev
        # (fp32) within 1e-5 of exact in MSE/MAD. INTER_LINEAR samples single pixels, so a
        # reduced decode would change which pixels it sees: seed-linear stays exact.
        return self.interpolation == cv2.INTER_AREA

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        return INPUT_HEIGHT, INPUT_WIDTH

    def scoring_size(self, height: int, width: int) -> tuple[int, int]:
        return INPUT_HEIGHT, INPUT_WIDTH

    @property
    def pixels_on_device(self) -> bool:
        return True

    @property
    def input_plan(self) -> InputPlan:
        return InputPlan(normalise_first=False, interpolation=self.interpolation)

    def network_pixels(self, rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        small = cv2.resize(rgb, (INPUT_WIDTH, INPUT_HEIGHT), interpolation=self.interpolation)
        return np.asarray(small, dtype=np.uint8)

    def ground_truth_pixels(self, matte: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        small = cv2.resize(matte, (INPUT_WIDTH, INPUT_HEIGHT), interpolation=cv2.INTER_AREA)
        return np.asarray(small, dtype=np.uint8)

    def preprocess(self, rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        small = self.network_pixels(rgb)
        x = (small.astype(np.float32) - np.float32(127.5)) / np.float32(127.5)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def postprocess(
        self,
        output: npt.NDArray[np.float32],
        height: int,
        width: int,
        resized: npt.NDArray[np.float32] | None = None,
    ) -> ScoredAlpha:
        stored = (output * np.float32(255)).astype(np.uint8)  # truncation, as the seed does
        return ScoredAlpha(values=stored.astype(np.float64) / 255.0, stored=stored)

    def ground_truth(self, matte: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
        return self.ground_truth_pixels(matte).astype(np.float64) / 255.0

    def foreground(self, alpha: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        # alpha holds k/255 for 8-bit k; k >= 128 <=> alpha * 255 >= 127.5, robust to rounding
        return alpha * 255.0 >= 127.5
