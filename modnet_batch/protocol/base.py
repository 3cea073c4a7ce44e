"""The protocol interface shared by every evaluation protocol."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class ScoredAlpha:
    """A prediction at the protocol's scoring resolution.

    `values`: float32 or float64 HxW in [0, 1], the prediction.
    `stored`: uint8 HxW, what `alpha/<image_id>.npz` holds.
    """

    values: npt.NDArray[np.floating[Any]]
    stored: npt.NDArray[np.uint8]

    @cached_property
    def score(self) -> npt.NDArray[np.float64]:
        """The values as float64, what the metrics see; made on first use (a job that only
        writes files never needs this full-size copy)."""
        return self.values.astype(np.float64, copy=False)


# Rows of a float64 band in `rounded_uint8`: ~512 KiB, small enough to stay in the CPU's cache.
_BAND_VALUES = 1 << 16


def rounded_uint8(values: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.uint8]:
    """`clip(rint(float64(values) * 255), 0, 255)` as uint8, computed exactly so, one band of
    rows at a time: no full-size float64 temporaries."""
    out = np.empty(values.shape, np.uint8)
    if values.size == 0:
        return out
    width = values.shape[1] if values.ndim > 1 else values.size
    rows = max(1, _BAND_VALUES // max(1, width))
    band = np.empty((rows, *values.shape[1:]), np.float64)
    for start in range(0, values.shape[0], rows):
        part = values[start : start + rows]
        tmp = band[: len(part)]
        np.multiply(part, 255.0, out=tmp, dtype=np.float64)
        np.rint(tmp, out=tmp)
        np.clip(tmp, 0.0, 255.0, out=tmp)
        out[start : start + rows] = tmp
    return out


@dataclass(frozen=True)
class InputPlan:
    """How a protocol makes its network input from uint8 RGB, for a device that repeats it:
    normalise to [-1, 1] then resize in float32 (`normalise_first`), or resize the uint8 image
    then normalise; `interpolation` is the cv2 flag of the resize."""

    normalise_first: bool
    interpolation: int


class Protocol(ABC):
    """Preprocess, postprocess and ground-truth transform of one evaluation protocol.

    Every method is a pure function of its arguments; a protocol object is frozen and picklable.
    """

    name: str

    @abstractmethod
    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) of the network input for an image of this size."""

    @abstractmethod
    def preprocess(self, rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """HxWx3 uint8 RGB -> 3xhxw float32 in [-1, 1], h x w = `network_size(H, W)`."""

    @abstractmethod
    def postprocess(
        self,
        output: npt.NDArray[np.float32],
        height: int,
        width: int,
        resized: npt.NDArray[np.float32] | None = None,
    ) -> ScoredAlpha:
        """Network output hxw float32 in [0, 1] -> the alpha at the scoring resolution.

        `resized`: the output already resized to height x width with INTER_AREA (on a device,
        `--decoding device`), used where the protocol scores at the photo's size."""

    @abstractmethod
    def ground_truth(self, matte: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
        """HxW uint8 matte -> float64 in [0, 1] at the scoring resolution."""

    @abstractmethod
    def foreground(self, alpha: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        """The foreground mask used for IoU, for a prediction or a ground truth in [0, 1]."""

    @property
    def reduced_decode(self) -> bool:
        """Whether `--decode-reduce auto` may decode large JPEGs at 1/2..1/8 for this protocol.

        Only where the input resize averages areas (a DCT-domain pre-reduction keeping >= 2x
        the network input then barely moves the result) and the saving matters; every other
        protocol decodes exactly under `auto`.
        """
        return False

    @property
    def pixels_on_device(self) -> bool:
        """Whether the network input is a uint8 image at the network size, normalised as a
        whole (`network_pixels`), and scored at that size: an engine may then normalise and
        score on its device. Not where the input is normalised before a float resize (paper)."""
        return False

    @property
    def input_plan(self) -> InputPlan | None:
        """How `preprocess` resizes and normalises, for a device to repeat (None: it cannot)."""
        return None

    def network_pixels(self, rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        """HxWx3 uint8 RGB -> hxwx3 uint8 at the network size (where `pixels_on_device`)."""
        raise NotImplementedError(f"protocol {self.name} normalises before it resizes")

    def ground_truth_pixels(self, matte: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        """HxW uint8 matte -> uint8 at the scoring size, ground_truth() * 255 exactly."""
        raise NotImplementedError(f"protocol {self.name} scores a float ground truth")

    def scoring_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) at which this protocol scores an image of this size."""
        return height, width
