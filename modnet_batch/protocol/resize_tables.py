"""OpenCV's resize as two matrices: `out = R_y @ image @ R_x.T` per channel.

cv2.resize is separable for INTER_AREA and INTER_LINEAR: each output pixel is a weighted sum of
source pixels whose weight is a product of one weight per axis. This module computes those
per-axis weights exactly as OpenCV does (same formulas, same float32/float64 steps, same
thresholds), as dense matrices, so that any device that multiplies matrices (engine/torch_resize)
resizes as the CPU path does. Pure NumPy; the tests compare every case with cv2.resize.

What OpenCV does (imgproc/src/resize.cpp), and so what the matrices hold:
- same size: a copy (identity matrices).
- INTER_AREA with both scales >= 1 (a downscale, or one axis kept): the area table
  (computeResizeAreaTab): each output pixel averages the source cells it covers, partial cells
  weighted by their covered fraction; fractions under 1e-3 are dropped, as OpenCV drops them.
- INTER_AREA otherwise (an upscale on either axis): OpenCV emulates it with 2-tap linear
  weights computed in "area mode" (`fx = (dx+1) - (sx+1)/scale`, then its fractional part), on
  both axes: it behaves like a bilinear filter with sharper steps, not like an average.
- INTER_LINEAR: 2-tap weights at the half-pixel centre convention (`fx = (dx+0.5)*scale - 0.5`),
  clamped at the borders. An exact 2x downscale on both axes is INTER_AREA (OpenCV swaps it).
- uint8 images on the 2-tap paths use fixed-point weights: each weight rounded to 1/2048
  (INTER_RESIZE_COEF_BITS = 11); `quantized` gives those.

Rounding to uint8 is the caller's: OpenCV rounds to nearest; its SIMD kernels truncate some
intermediate products, so a uint8 result may differ from the exact rounding by one level (the
tests measure how often).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

INTER_RESIZE_COEF_SCALE = 2048  # 1 << INTER_RESIZE_COEF_BITS in OpenCV
_AREA_EPS = 1e-3  # computeResizeAreaTab drops partial cells below this fraction
INTERPOLATIONS = {cv2.INTER_AREA: "area", cv2.INTER_LINEAR: "linear"}


@dataclass(frozen=True)
class AxisPlan:
    """How one axis of size `src` becomes `dst`: `kind` is identity, area or linear (2-tap;
    area_mode for INTER_AREA's upscale emulation)."""

    src: int
    dst: int
    kind: str
    area_mode: bool = False
    # OpenCV's fast area path for an exact 2x2 reduction rounds uint8 half up ((sum + 2) >> 2);
    # every other area path rounds its float result half to even
    half_up: bool = False


def _scale(src: int, dst: int) -> tuple[float, float]:
    """(inv_scale, scale) as cv::resize computes them: inv = dst / src, scale = 1 / inv."""
    inv = float(dst) / float(src)
    return inv, 1.0 / inv


def plan(
    src_hw: tuple[int, int], dst_hw: tuple[int, int], interpolation: int
) -> tuple[AxisPlan, AxisPlan]:
    """The (y, x) axis plans for resizing an image of `src_hw` to `dst_hw` (height, width)."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation} is not INTER_AREA or INTER_LINEAR")
    (sh, sw), (dh, dw) = src_hw, dst_hw
    if min(sh, sw, dh, dw) < 1:
        raise ValueError(f"cannot resize {sw}x{sh} to {dw}x{dh}: sizes must be >= 1")
    if (sh, sw) == (dh, dw):
        return AxisPlan(sh, dh, "identity"), AxisPlan(sw, dw, "identity")
    _, scale_y = _scale(sh, dh)
    _, scale_x = _scale(sw, dw)
    iscale_x, iscale_y = round(scale_x), round(scale_y)
    eps = float(np.finfo(np.float64).eps)
    area_fast = abs(scale_x - iscale_x) < eps and abs(scale_y - iscale_y) < eps
    if interpolation == cv2.INTER_LINEAR and area_fast and iscale_x == 2 and iscale_y == 2:
        interpolation = cv2.INTER_AREA  # OpenCV: a 2x downscale is its fast area resize
    if interpolation == cv2.INTER_AREA and scale_x >= 1 and scale_y >= 1:
        up = area_fast and iscale_x == 2 and iscale_y == 2
        return AxisPlan(sh, dh, "area", half_up=up), AxisPlan(sw, dw, "area", half_up=up)
    area_mode = interpolation == cv2.INTER_AREA
    return AxisPlan(sh, dh, "linear", area_mode), AxisPlan(sw, dw, "linear", area_mode)


def _area_matrix(src: int, dst: int) -> npt.NDArray[np.float64]:
    """computeResizeAreaTab as a dst x src matrix (weights float32, as OpenCV stores them)."""
    _, scale = _scale(src, dst)
    m = np.zeros((dst, src), dtype=np.float64)
    for dx in range(dst):
        fsx1 = dx * scale
        fsx2 = fsx1 + scale
        cell = min(scale, src - fsx1)
        sx1, sx2 = math.ceil(fsx1), math.floor(fsx2)
        sx2 = min(sx2, src - 1)
        sx1 = min(sx1, sx2)
        if sx1 - fsx1 > _AREA_EPS:
            m[dx, sx1 - 1] += float(np.float32((sx1 - fsx1) / cell))
        for sx in range(sx1, sx2):
            m[dx, sx] += float(np.float32(1.0 / cell))
        if fsx2 - sx2 > _AREA_EPS:
            m[dx, sx2] += float(np.float32(min(min(fsx2 - sx2, 1.0), cell) / cell))
    return m


@dataclass(frozen=True)
class Taps:
    """The 2-tap linear path of one axis: output i = src[i0[i]] * w0[i] + src[i1[i]] * w1[i]
    (float32 weights, as OpenCV's float path), or with the uint8 fixed-point weights q0, q1
    (integers summing to 2048)."""

    i0: npt.NDArray[np.int64]
    i1: npt.NDArray[np.int64]
    w0: npt.NDArray[np.float32]
    w1: npt.NDArray[np.float32]
    q0: npt.NDArray[np.int32]
    q1: npt.NDArray[np.int32]


def linear_taps(src: int, dst: int, area_mode: bool) -> Taps:
    """resize's linear-path coefficients for one axis. OpenCV 5 computes the source position
    in double and stores the fraction as float32 (measured: computing it in float32, as
    OpenCV 4 did, moves float results by up to 1e-4 at 2000 px)."""
    inv, scale = _scale(src, dst)
    i0 = np.zeros(dst, np.int64)
    i1 = np.zeros(dst, np.int64)
    w = np.zeros(dst, np.float64)
    for dx in range(dst):
        if not area_mode:
            f = (dx + 0.5) * scale - 0.5
            sx = math.floor(f)
            f -= sx
        else:
            sx = math.floor(dx * scale)
            f = float(np.float32((dx + 1) - (sx + 1) * inv))  # (float) first, as OpenCV
            f = 0.0 if f <= 0 else f - math.floor(f)
        if sx < 0:
            f, sx = 0.0, 0
        if sx >= src - 1:
            f, sx = 0.0, src - 1
        i0[dx], i1[dx], w[dx] = sx, min(sx + 1, src - 1), f
    w1 = w.astype(np.float32)
    w0 = (np.float32(1.0) - w1).astype(np.float32)
    # saturate_cast<short>(coef * INTER_RESIZE_COEF_SCALE): float32 product, round half to even
    q0 = np.rint(w0 * np.float32(INTER_RESIZE_COEF_SCALE)).astype(np.int32)
    q1 = np.rint(w1 * np.float32(INTER_RESIZE_COEF_SCALE)).astype(np.int32)
    return Taps(i0, i1, w0, w1, q0, q1)


def area_matrix(src: int, dst: int) -> npt.NDArray[np.float32]:
    """The area path of one axis as a dst x src float32 matrix (computeResizeAreaTab)."""
    return _area_matrix(src, dst).astype(np.float32)


def resize_reference(
    img: npt.NDArray[np.uint8] | npt.NDArray[np.float32],
    dst_hw: tuple[int, int],
    interpolation: int,
) -> npt.NDArray[np.uint8] | npt.NDArray[np.float32]:
    """The tables applied with NumPy the way engine/torch_resize applies them on a device (the
    tests' check of the tables themselves): HxW or HxWxC uint8 or float32 in, the same type out.

    Area: two float matrix products (float64 here), uint8 rounded half to even. Linear, float:
    OpenCV's own two passes in float32 (horizontal, then vertical). Linear, uint8: its
    fixed-point passes, the vertical one as its SIMD kernel computes it,
    `(((h0 >> 4) * b0 >> 16) + ((h1 >> 4) * b1 >> 16) + 2) >> 2` (measured bit-exact).
    """
    uint8 = img.dtype == np.uint8
    ay, ax = plan(img.shape[:2], dst_hw, interpolation)
    if ay.kind == "identity":
        return img.copy()
    if ay.kind == "area":
        ry, rx = area_matrix(ay.src, ay.dst), area_matrix(ax.src, ax.dst)
        x = img.astype(np.float64)
        rows = np.tensordot(ry.astype(np.float64), x, axes=(1, 0))  # dst_h x W (x C)
        out = np.moveaxis(np.tensordot(rx.astype(np.float64), rows, axes=(1, 1)), 0, 1)
        if uint8:
            rounded = np.floor(out + 0.5) if ay.half_up else np.rint(out)
            return np.clip(rounded, 0, 255).astype(np.uint8)
        return out.astype(np.float32)
    ty, tx = linear_taps(ay.src, ay.dst, ay.area_mode), linear_taps(ax.src, ax.dst, ax.area_mode)
    if uint8:
        s = img.astype(np.int64)
        extra = (None,) * (img.ndim - 2)
        h = s[:, tx.i0] * tx.q0[(slice(None), *extra)] + s[:, tx.i1] * tx.q1[(slice(None), *extra)]
        b0 = ty.q0[(slice(None), None, *extra)].astype(np.int64)
        b1 = ty.q1[(slice(None), None, *extra)].astype(np.int64)
        v = (((h[ty.i0] >> 4) * b0 >> 16) + ((h[ty.i1] >> 4) * b1 >> 16) + 2) >> 2
        out8: npt.NDArray[np.uint8] = np.clip(v, 0, 255).astype(np.uint8)
        return out8
    f = img.astype(np.float32)
    extra = (None,) * (img.ndim - 2)
    h = f[:, tx.i0] * tx.w0[(slice(None), *extra)] + f[:, tx.i1] * tx.w1[(slice(None), *extra)]
    out = (
        h[ty.i0] * ty.w0[(slice(None), None, *extra)]
        + h[ty.i1] * ty.w1[(slice(None), None, *extra)]
    )
    return out.astype(np.float32)
