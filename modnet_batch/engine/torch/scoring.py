"""Normalise, infer and score a batch on the torch engine's device (WorkerSpec.on_device.score).

uint8 pixels at the network size go to the device (a quarter of float32's bytes), are
normalised there exactly as the seed protocols do on the CPU, and the network's output is turned
into the protocol's 8-bit prediction and scored there against the uint8 ground truth: MSE, MAD,
SAD, Grad and the IoU counts in float64 (engine.torch.metrics; equal to the CPU's within an ulp).
The output also comes back to the host, where the pool threads compute Conn and write files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from modnet_batch.engine.torch.metrics import foreground_for, score_batch
from modnet_batch.errors import ModnetBatchError
from modnet_batch.protocol import Protocol
from modnet_batch.protocol.seed import SeedProtocol

_OFFSET = 127.5  # the seed protocols' normalisation, (x - 127.5) / 127.5 in float32


def scored_alpha_for(protocol: Protocol) -> Callable[[torch.Tensor], torch.Tensor]:
    """The torch twin of `protocol.postprocess(...).score` for a [B,h,w] float32 output."""
    if isinstance(protocol, SeedProtocol):
        scale = 255.0

        def seed(out: torch.Tensor) -> torch.Tensor:
            # uint8(output * 255): a float32 product truncated, as numpy's astype(uint8) does
            stored = (out * torch.tensor(scale, dtype=torch.float32, device=out.device)).to(
                torch.uint8
            )
            return stored.to(torch.float64) / scale

        return seed
    raise ModnetBatchError(
        f"protocol {protocol.name!r} is not scored on the device (it scores at each photo's "
        "size); run it with --scoring cpu"
    )


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """[B,h,w,3] uint8 on the device -> [B,3,h,w] float32 in [-1, 1], as SeedProtocol does:
    two correctly rounded float32 operations (a division by a tensor, not by its reciprocal)."""
    offset = torch.tensor(_OFFSET, dtype=torch.float32, device=pixels.device)
    return (pixels.permute(0, 3, 1, 2).to(torch.float32) - offset) / offset


def run_scored(
    infer: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    pixels: npt.NDArray[np.uint8],
    gt_pixels: npt.NDArray[np.uint8] | None,
    protocol: Protocol,
) -> tuple[npt.NDArray[np.float32], list[dict[str, Any]] | None]:
    """`infer`: normalised [B,3,h,w] float32 on `device` -> [B,1,h,w] float32 there.

    Returns the outputs on the host and, with ground truth, one dict of metrics but Conn per
    image (mse, mad, sad, grad, tp, fp, fn, tn: the ImageMetrics fields)."""
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[3] != 3:
        raise ModnetBatchError(
            f"device scoring takes a [B,H,W,3] uint8 RGB batch; got {pixels.dtype} "
            f"{list(pixels.shape)}"
        )
    with torch.inference_mode():
        x = normalise(torch.from_numpy(np.ascontiguousarray(pixels)).to(device))
        out = infer(x).to(torch.float32)
        host = np.ascontiguousarray(out.cpu().numpy())
        if gt_pixels is None:
            return host, None
        if gt_pixels.shape != (pixels.shape[0], *out.shape[-2:]):
            return host, None  # not MODNet's output size: the caller names the error per image
        pred = scored_alpha_for(protocol)(out[:, 0])
        gt = torch.from_numpy(np.ascontiguousarray(gt_pixels)).to(device).to(torch.float64) / 255.0
        metrics = score_batch(pred, gt, foreground=foreground_for(protocol), dtype=torch.float64)
        values = {k: v.cpu().tolist() for k, v in metrics.as_dict().items()}
    n = pixels.shape[0]
    return host, [{k: values[k][i] for k in values} for i in range(n)]
