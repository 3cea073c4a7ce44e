"""Decode and resize on the torch engine's device (`--decoding device`).

Encoded JPEGs go to the device in groups and are decoded there: on CUDA by the GPU's JPEG
decoder through torchvision (`torchvision.io.decode_jpeg(..., device="cuda")`, batched); on the
CPU by OpenCV into torch tensors, a stand-in that runs the same path so that it is tested where
there is no GPU (it is exact, and not faster than `--decoding cpu`). The photo is then turned
into the protocol's network input there, with OpenCV's resize semantics (engine.torch.resize),
and the network's output is resized back there to the photo's size (INTER_AREA, as MODNet's
inference_onnx.py and the CPU path do).

Which images a device decoder takes is decided from the header (data.jpeg_header); the rest, and
any image the device decoder refuses, are decoded on the CPU as usual.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
import torch

from modnet_batch.data.decode import EncodedBytes, decode_image
from modnet_batch.engine.torch.resize import resize
from modnet_batch.errors import ModnetBatchError
from modnet_batch.protocol import Protocol

_OFFSET = 127.5  # every protocol's normalisation, (x - 127.5) / 127.5 in float32
# Bytes of device memory one decoded pixel may cost while a group is turned into network inputs:
# the group's RGB (3) and, for its largest image, float32 copies and the resize's intermediates.
_BYTES_PER_PIXEL = 16
_FREE_SHARE = 0.5  # of the device's free memory, at most, for one group
INSTALL_HINT = (
    "install torchvision built for this torch with CUDA (pip install "
    "'modnet-batch[device-decode]', or torchvision from the index this torch came from), or use "
    "--decoding cpu"
)

Decoded = torch.Tensor | Exception  # [3,H,W] uint8 on the device, or why it failed


@dataclass(frozen=True)
class DeviceDecoder:
    """`decode(images)`: each encoded JPEG as a [3,H,W] uint8 RGB tensor on `device`, or the
    exception that stopped it (that image then goes to the CPU decode)."""

    name: str
    device: torch.device
    decode: Callable[[Sequence[EncodedBytes]], list[Decoded]]


def open_decoder(device: torch.device) -> DeviceDecoder:
    """The JPEG decoder of `device`: the GPU's through torchvision on CUDA, OpenCV on the CPU."""
    if device.type == "cpu":
        return DeviceDecoder("opencv (cpu stand-in)", device, _opencv_decode)
    if device.type != "cuda":
        raise ModnetBatchError(
            f"--decoding device runs on CUDA (or the CPU, for tests), not on {device}; "
            "use --decoding cpu"
        )
    try:
        import torchvision
        from torchvision.io import ImageReadMode, decode_jpeg
    except Exception as exc:  # ImportError, or a torchvision built for another torch
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModnetBatchError(
            f"--decoding device needs torchvision, which did not import ({first}); {INSTALL_HINT}"
        ) from None

    def gpu_decode(images: Sequence[EncodedBytes]) -> list[Decoded]:
        data = [_tensor(b) for b in images]
        # torchvision's CUDA decoder writes its outputs from its own stream without waiting for
        # ours (pytorch/vision#9606): memory the previous group freed may still be read by
        # queued resize kernels, so they finish first
        torch.cuda.current_stream(device).synchronize()
        try:  # one call for the group: the decoder batches on the device
            return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:  # one image spoiled the group: find it, keep the others
            out: list[Decoded] = []
            for d in data:
                try:
                    out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
                except RuntimeError as exc:  # without its traceback: no cycle holding `out`
                    out.append(exc.with_traceback(None))
            return out

    return DeviceDecoder(
        f"nvjpeg (torchvision {torchvision.__version__}, {device})", device, gpu_decode
    )


def _tensor(data: EncodedBytes) -> torch.Tensor:
    """The encoded bytes as a 1-D uint8 CPU tensor (one copy: torch wants writable memory)."""
    flat = data.reshape(-1) if isinstance(data, np.ndarray) else np.frombuffer(data, np.uint8)
    return torch.from_numpy(np.array(flat, dtype=np.uint8, copy=True))


def _opencv_decode(images: Sequence[EncodedBytes]) -> list[Decoded]:
    out: list[Decoded] = []
    for i, data in enumerate(images):
        try:
            rgb = decode_image(data, name=f"image {i} of the group")
        except Exception as exc:
            out.append(exc.with_traceback(None))
            continue
        out.append(torch.from_numpy(rgb).permute(2, 0, 1))
    return out


def group_pixels(device: torch.device, requested: int) -> int:
    """The pixels one group may hold: `requested`, less where the device's free memory would
    not hold them (CUDA); at least one pixel (a larger image is then a group alone)."""
    if device.type != "cuda":
        return max(1, requested)
    torch.cuda.empty_cache()  # what batch measuring left cached is free for the decoder too
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(requested, int(free * _FREE_SHARE / _BYTES_PER_PIXEL)))


def network_input(protocol: Protocol, rgb: torch.Tensor) -> torch.Tensor:
    """[3,H,W] uint8 on the device -> the protocol's [3,h,w] float32 input there, computed as
    `protocol.preprocess` computes it on the CPU (within engine.torch.resize's tolerance)."""
    plan = protocol.input_plan
    if plan is None:
        raise ModnetBatchError(
            f"protocol {protocol.name} has no device preprocessing; use --decoding cpu"
        )
    h, w = protocol.network_size(int(rgb.shape[1]), int(rgb.shape[2]))
    offset = torch.tensor(_OFFSET, dtype=torch.float32, device=rgb.device)
    if plan.normalise_first:  # the paper: normalise at full size, then a float resize
        x = (rgb.to(torch.float32) - offset) / offset
        return resize(x, (h, w), plan.interpolation)
    small = resize(rgb, (h, w), plan.interpolation)  # the seed protocols: a uint8 resize
    return (small.to(torch.float32) - offset) / offset


def to_source(output: torch.Tensor, height: int, width: int) -> npt.NDArray[np.float32]:
    """A [h,w] float32 network output on the device, resized there to the photo's size with
    INTER_AREA and brought to the host (the CPU path's `cv2.resize(output, (W, H), INTER_AREA)`)."""
    full = resize(output.to(torch.float32), (height, width), cv2.INTER_AREA)
    return np.ascontiguousarray(full.cpu().numpy())


def host_rgb(rgb: torch.Tensor) -> npt.NDArray[np.uint8]:
    """[3,H,W] uint8 on the device -> HxWx3 on the host (for cutouts and composites)."""
    return np.ascontiguousarray(rgb.permute(1, 2, 0).cpu().numpy())
