"""The torch engine's work on its device besides inference (engine.device_work.DeviceWork):
photos decoded and prepared there (engine.torch.decode), batches inferred from inputs already
there, outputs resized back there, and seed-protocol batches scored there
(engine.torch.scoring)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from modnet_batch.engine.device_work import (
    DeviceBatch,
    DeviceFallback,
    DeviceOutcome,
    DeviceOutOfMemory,
    DevicePrepared,
    EncodedPhoto,
)
from modnet_batch.engine.torch import decode, scoring
from modnet_batch.pipeline import error_text
from modnet_batch.protocol import Protocol

Infer = Callable[[torch.Tensor], torch.Tensor]  # normalised [B,3,h,w] -> [B,1,h,w], on device


@dataclass
class TorchPreparer:
    """Decodes groups of photos with the device's decoder (engine.torch.decode.open_decoder)
    and makes their network inputs there; what it decodes wrongly goes to the CPU, named."""

    decoder: decode.DeviceDecoder
    group_pixels: int

    @property
    def name(self) -> str:
        return self.decoder.name

    def prepare(
        self, photos: Sequence[EncodedPhoto], protocol: Protocol, keep_rgb: bool
    ) -> list[DeviceOutcome]:
        with torch.inference_mode():
            decoded = self.decoder.decode([p.data for p in photos])
            return [
                _prepared(photo, rgb, protocol, keep_rgb)
                for photo, rgb in zip(photos, decoded, strict=True)
            ]  # the group's full-size pixels are freed on return, before the next group


def _refusal(photo: EncodedPhoto, rgb: decode.Decoded) -> str | None:
    """Why a decoded photo cannot be used (the CPU decodes it instead), or None."""
    if isinstance(rgb, Exception):
        return f"the device decoder failed ({error_text(rgb)})"
    if rgb.dim() != 3 or rgb.shape[0] != 3 or rgb.dtype != torch.uint8:
        return f"the device decoded {rgb.dtype} {list(rgb.shape)}, not RGB"
    if tuple(rgb.shape[1:]) != (photo.height, photo.width):
        return f"the device decoded {rgb.shape[2]}x{rgb.shape[1]}"
    return None


def _prepared(
    photo: EncodedPhoto, rgb: decode.Decoded, protocol: Protocol, keep_rgb: bool
) -> DeviceOutcome:
    reason = _refusal(photo, rgb)
    if reason is not None:
        return DeviceFallback(reason)
    assert isinstance(rgb, torch.Tensor)  # not a refusal
    try:
        x = decode.network_input(protocol, rgb)
        return DevicePrepared(x, decode.host_rgb(rgb) if keep_rgb else None)
    except torch.cuda.OutOfMemoryError:  # a photo too large for what is free
        return DeviceFallback("the device ran out of memory")
    except Exception as exc:  # an error row for this photo; the group goes on
        return exc


@dataclass
class TorchDeviceWork:
    """DeviceWork of one torch session: `infer` is its forward on device tensors."""

    device: torch.device
    infer_tensor: Infer

    def open_preparer(self, pixels: int) -> TorchPreparer:
        return TorchPreparer(
            decode.open_decoder(self.device), decode.group_pixels(self.device, pixels)
        )

    def infer(self, inputs: Sequence[Any]) -> DeviceBatch:
        with torch.inference_mode():
            xs = [
                x if isinstance(x, torch.Tensor) else torch.from_numpy(x).to(self.device)
                for x in inputs
            ]
            x = torch.stack(xs)
            out = self.infer_tensor(x)
            host = np.ascontiguousarray(out.cpu().numpy())
        return DeviceBatch(host, (int(x.shape[-2]), int(x.shape[-1])), out)

    def resize_back(
        self, batch: DeviceBatch, index: int, height: int, width: int
    ) -> npt.NDArray[np.float32]:
        try:
            with torch.inference_mode():
                return decode.to_source(batch.on_device[index, 0], height, width)
        except torch.cuda.OutOfMemoryError:
            raise DeviceOutOfMemory(
                f"the device has no memory left to resize an output to {width}x{height}"
            ) from None

    def run_scored(
        self,
        pixels: npt.NDArray[np.uint8],
        gt_pixels: npt.NDArray[np.uint8] | None,
        protocol: Protocol,
    ) -> tuple[npt.NDArray[np.float32], list[dict[str, Any]] | None]:
        return scoring.run_scored(self.infer_tensor, self.device, pixels, gt_pixels, protocol)
