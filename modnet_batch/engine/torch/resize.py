"""cv2.resize (INTER_AREA, INTER_LINEAR) in pure torch, on any device, for the device decode path.

The per-axis weights are OpenCV's own, computed once per (source, target) size by
protocol.resize_tables and cached on the device:
- area (a downscale): an exact weighted box filter as two matrix products, `R_y @ x @ R_x.T`,
  in float32 (the cheaper order first); uint8 rounded as OpenCV rounds it;
- 2-tap linear (INTER_LINEAR, and INTER_AREA's upscale emulation): two gathers per axis; uint8
  in OpenCV's fixed point (11-bit weights, its SIMD kernel's vertical pass), float32 in its
  float passes (horizontal, then vertical).

Measured against cv2.resize (tests/test_torch_resize.py): uint8 within 1 level (area: on about
0.01% of pixels, at float rounding ties; linear: up to 0.8% of a photo's pixels, a few %
when upscaling images of a few pixels), float32 within 2e-5 (1.2e-7 for area).
"""

from __future__ import annotations

import functools

import cv2
import torch

from modnet_batch.protocol.resize_tables import AxisPlan, Taps, area_matrix, linear_taps, plan

INTERPOLATIONS = (cv2.INTER_AREA, cv2.INTER_LINEAR)


# dense dst x src matrices on the device (about 7 MB for 6000 -> 288): a collection of many
# photo sizes keeps the most recent 64
@functools.lru_cache(maxsize=64)
def _area(src: int, dst: int, device: str) -> torch.Tensor:
    return torch.from_numpy(area_matrix(src, dst)).to(device)


@functools.lru_cache(maxsize=256)
def _taps(src: int, dst: int, area_mode: bool, device: str) -> tuple[torch.Tensor, ...]:
    t: Taps = linear_taps(src, dst, area_mode)
    return tuple(torch.from_numpy(a).to(device) for a in (t.i0, t.i1, t.w0, t.w1, t.q0, t.q1))


def resize(x: torch.Tensor, dst_hw: tuple[int, int], interpolation: int) -> torch.Tensor:
    """[C,H,W] (or [H,W]) uint8 or float32 on any device -> [C,h,w] of the same type, as
    `cv2.resize(image_hwc, (w, h), interpolation=...)` computes it (within the module's
    measured tolerance)."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation} is not INTER_AREA or INTER_LINEAR")
    if x.dtype not in (torch.uint8, torch.float32):
        raise TypeError(f"resize takes uint8 or float32, not {x.dtype}")
    squeeze = x.dim() == 2
    if squeeze:
        x = x[None]
    ay, ax = plan((int(x.shape[-2]), int(x.shape[-1])), dst_hw, interpolation)
    if ay.kind == "identity":
        out = x.clone()
    elif ay.kind == "area":
        out = _resize_area(x, ay, ax)
    elif x.dtype == torch.uint8:
        out = _resize_linear_uint8(x, ay, ax)
    else:
        out = _resize_linear_float(x, ay, ax)
    return out[0] if squeeze else out


def _resize_area(x: torch.Tensor, ay: AxisPlan, ax: AxisPlan) -> torch.Tensor:
    dev = str(x.device)
    ry, rx = _area(ay.src, ay.dst, dev), _area(ax.src, ax.dst, dev)
    f = x.to(torch.float32)
    h, w, dh, dw = ay.src, ax.src, ay.dst, ax.dst
    if dh * h * w + dh * w * dw <= h * w * dw + dh * h * dw:  # rows first is cheaper
        out = torch.matmul(torch.matmul(ry, f), rx.T)
    else:
        out = torch.matmul(ry, torch.matmul(f, rx.T))
    if x.dtype != torch.uint8:
        return out
    rounded = torch.floor(out + 0.5) if ay.half_up else torch.round(out)
    return rounded.clamp_(0, 255).to(torch.uint8)


def _resize_linear_float(x: torch.Tensor, ay: AxisPlan, ax: AxisPlan) -> torch.Tensor:
    dev = str(x.device)
    xi0, xi1, xw0, xw1, _, _ = _taps(ax.src, ax.dst, ax.area_mode, dev)
    yi0, yi1, yw0, yw1, _, _ = _taps(ay.src, ay.dst, ay.area_mode, dev)
    h = x.index_select(-1, xi0) * xw0 + x.index_select(-1, xi1) * xw1
    return h.index_select(-2, yi0) * yw0[:, None] + h.index_select(-2, yi1) * yw1[:, None]


def _resize_linear_uint8(x: torch.Tensor, ay: AxisPlan, ax: AxisPlan) -> torch.Tensor:
    dev = str(x.device)
    xi0, xi1, _, _, xq0, xq1 = _taps(ax.src, ax.dst, ax.area_mode, dev)
    yi0, yi1, _, _, yq0, yq1 = _taps(ay.src, ay.dst, ay.area_mode, dev)
    s = x.to(torch.int32)
    h = s.index_select(-1, xi0) * xq0 + s.index_select(-1, xi1) * xq1  # <= 255 * 2048
    b0, b1 = yq0[:, None], yq1[:, None]
    v0 = ((h.index_select(-2, yi0) >> 4) * b0) >> 16
    v1 = ((h.index_select(-2, yi1) >> 4) * b1) >> 16
    return ((v0 + v1 + 2) >> 2).clamp_(0, 255).to(torch.uint8)
