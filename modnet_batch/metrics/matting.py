"""Per-image matting metrics: MSE, MAD, SAD, Grad, Conn (trimap-free) and IoU confusion counts.

Grad and Conn follow Rhemann et al. 2009 as ported in the Deep Image Matting evaluation code.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import numpy.typing as npt

from modnet_batch.errors import ModnetBatchError

FloatImage = npt.NDArray[np.float64]
BoolImage = npt.NDArray[np.bool_]

# DIM builds its Gaussian-derivative kernel at sigma 1.4, truncated where it falls below 1e-2.
GRAD_SIGMA = 1.4
_GRAD_EPSILON = 1e-2
# Conn: a pixel counts as "connected" up to d = alpha - l below 0.15 (phi = 1 - d * (d >= 0.15)).
_CONN_THETA = 0.15

# The metric names, in the order every table shows them: the per-image means, then the pooled
# IoU confusion counts behind the dataset-level mIoU. Every other module takes them from here.
PER_IMAGE = ("mse", "mad", "sad", "grad", "conn")
CONFUSION = ("tp", "fp", "fn", "tn")
DATASET = (*PER_IMAGE, "miou")


@dataclass(frozen=True)
class ImageMetrics:
    """Every metric of one image; the confusion counts treat foreground as the positive class."""

    mse: float
    mad: float
    sad: float
    grad: float
    conn: float
    tp: int
    fp: int
    fn: int
    tn: int


def _check_pair(pred: FloatImage, gt: FloatImage) -> tuple[FloatImage, FloatImage]:
    """Validate two alpha mattes and return them as C-contiguous float64 (no copy when they are)."""
    p = np.ascontiguousarray(pred, dtype=np.float64)
    g = np.ascontiguousarray(gt, dtype=np.float64)
    if p.ndim != 2 or g.shape != p.shape:
        raise ModnetBatchError(
            f"prediction shape {p.shape} and ground-truth shape {g.shape}: expected two HxW "
            "arrays of the same shape; resize both to the protocol's scoring size first"
        )
    if p.size == 0:
        raise ModnetBatchError(
            f"alpha shape {p.shape} has no pixels: expected a non-empty HxW matte; "
            "drop empty images before scoring"
        )
    return p, g


def _abs_diff(pred: FloatImage, gt: FloatImage) -> FloatImage:
    d = np.subtract(pred, gt)
    np.abs(d, out=d)
    return d


def mse(pred: FloatImage, gt: FloatImage) -> float:
    """Mean squared error of two float64 HxW alphas in [0, 1]; mean((pred - gt)**2)."""
    p, g = _check_pair(pred, gt)
    d = np.subtract(p, g)
    np.square(d, out=d)
    return float(d.sum() / d.size)


def mad(pred: FloatImage, gt: FloatImage) -> float:
    """Mean absolute difference of two float64 HxW alphas in [0, 1]; mean(|pred - gt|)."""
    p, g = _check_pair(pred, gt)
    d = _abs_diff(p, g)
    return float(d.sum() / d.size)


def sad(pred: FloatImage, gt: FloatImage) -> float:
    """Sum of absolute differences / 1000 of two float64 HxW alphas in [0, 1]."""
    p, g = _check_pair(pred, gt)
    return float(_abs_diff(p, g).sum() / 1000.0)


@lru_cache(maxsize=8)
def _gauss_kernels(sigma: float) -> tuple[FloatImage, FloatImage]:
    """The separable factors (smoothing, derivative) of the DIM 2-D kernel hx = g(i) * dg(j).

    DIM normalises hx by its Frobenius norm, which factors as |g| * |dg|. The derivative factor
    is stored flipped: cv2 filters correlate while DIM's scipy.ndimage.convolve flips the kernel,
    and dg is odd, so the flip makes gx and gy equal DIM's, sign included.
    """
    halfsize = int(
        np.ceil(sigma * np.sqrt(-2.0 * np.log(np.sqrt(2 * np.pi) * sigma * _GRAD_EPSILON)))
    )
    x = np.arange(-halfsize, halfsize + 1, dtype=np.float64)
    g = np.exp(-(x**2) / (2 * sigma**2)) / (sigma * np.sqrt(2 * np.pi))
    dg = -x * g / sigma**2
    smooth = g / np.sqrt(np.sum(g * g))
    deriv = (dg / np.sqrt(np.sum(dg * dg)))[::-1].copy()
    smooth.setflags(write=False)
    deriv.setflags(write=False)
    return smooth, deriv


def _gradient_amplitude(alpha: FloatImage, sigma: float) -> FloatImage:
    # cv2.normalize NORM_MINMAX maps a range <= DBL_EPSILON (a constant image) to all zeros,
    # exactly as the DIM code (which calls it) sees it.
    normed = np.empty_like(alpha)
    cv2.normalize(alpha, normed, 0.0, 1.0, cv2.NORM_MINMAX, dtype=cv2.CV_64F)
    smooth, deriv = _gauss_kernels(sigma)
    # BORDER_REPLICATE is scipy.ndimage's mode='nearest'.
    gx = cv2.sepFilter2D(normed, cv2.CV_64F, deriv, smooth, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.sepFilter2D(normed, cv2.CV_64F, smooth, deriv, borderType=cv2.BORDER_REPLICATE)
    # sqrt(gx**2 + gy**2) in one pass, in place (memory stays flat on 20 MP images); cv2 may be
    # 1 ulp off numpy's, well inside the separable filter's own rounding.
    cv2.magnitude(gx, gy, gx)
    return np.asarray(gx, dtype=np.float64)


def gradient_error(pred: FloatImage, gt: FloatImage, sigma: float = GRAD_SIGMA) -> float:
    """Gradient error (Rhemann et al. 2009, DIM code) over the whole image, / 1000.

    `pred`, `gt`: float64 HxW in [0, 1]. Each is min-max normalised (a constant image becomes
    zeros), filtered with first-order Gaussian derivatives of `sigma`; returns
    sum((|grad pred| - |grad gt|)**2) / 1000.
    """
    p, g = _check_pair(pred, gt)
    diff = _gradient_amplitude(p, sigma)
    np.subtract(diff, _gradient_amplitude(g, sigma), out=diff)
    np.square(diff, out=diff)
    return float(diff.sum() / 1000.0)


def _largest_component(mask: npt.NDArray[np.uint8]) -> BoolImage:
    """The largest 4-connected component of a uint8 0/1 mask (all False when the mask is empty).

    Ties go to the component met first in raster order, as skimage's / scipy's labelling with
    argmax(bincount[1:]) picks them; that is decided here from the pixels, not from cv2's label
    numbering. Areas come from a bincount of the labels: cv2's WithStats variant costs about
    three times the labelling itself.
    """
    n, labels = cv2.connectedComponents(mask, connectivity=4, ltype=cv2.CV_32S)
    if n <= 1:
        return np.zeros(mask.shape, dtype=np.bool_)
    flat = labels.reshape(-1)
    if n == 2:
        comp: BoolImage = labels == 1
        return comp
    areas = np.bincount(flat, minlength=n)[1:]
    tied = np.flatnonzero(areas == areas.max()) + 1
    best = int(tied[0])
    if tied.size > 1:
        best = int(flat[np.argmax(np.isin(flat, tied))])  # the first tied pixel in raster order
    comp = labels == best
    return comp


def _thresholds(step: float) -> FloatImage:
    """0, step, 2 step, ... <= 1, each the double nearest its decimal value (0.6, not 6 * 0.1).

    The DIM code compares single-precision alphas with its thresholds, so an alpha of exactly
    0.6 (153/255) reaches the 0.6 threshold there; 6 * 0.1 = 0.6000000000000001 in double would
    drop it, and the Python ports that use np.arange differ from the reference code by that.
    """
    n = int(np.floor(1.0 / step + 1e-9))
    return np.round(np.arange(n + 1, dtype=np.float64) * step, 12)


def connectivity_error(pred: FloatImage, gt: FloatImage, step: float = 0.1) -> float:
    """Connectivity error (Rhemann et al. 2009, DIM code) over the whole image, / 1000.

    `pred`, `gt`: float64 HxW in [0, 1]. For thresholds t = 0, step, ..., 1 (exact decimals: an
    alpha of 0.6 reaches t = 0.6), each pixel's l is the last threshold before it leaves the
    largest 4-connected component of (pred >= t) & (gt >= t) (1 if it never leaves); phi =
    1 - d * (d >= 0.15) with d = alpha - l; returns sum|phi_pred - phi_gt| / 1000. On 8-bit
    mattes this is the DIM MATLAB code's figure to about 5e-7 relative: the reference computes
    in single precision, this in double.
    """
    p, g = _check_pair(pred, gt)
    # survived (below) counts thresholds in a uint8
    if not 0.004 <= step <= 1.0:
        raise ModnetBatchError(
            f"connectivity step {step!r}: expected 0.004 <= step <= 1; use the standard 0.1"
        )
    thresh = _thresholds(step)
    # A pixel is in the mask at threshold t iff min(pred, gt) >= t. The masks are nested, so
    # each threshold only looks inside the bounding box (r0:r1, c0:c1) of the previous mask;
    # a pixel outside it is out of every later mask, so its count below never grows again.
    low = cv2.min(p, g)
    # survived: how many thresholds a pixel has stayed in the largest component for, without a
    # break (still_in). DIM's l is thresh[i - 1] for the first threshold i whose component omits
    # the pixel, i.e. thresh[survived], and 1 for a pixel never omitted.
    still_in = np.ones(p.shape, dtype=np.bool_)
    survived = np.zeros(p.shape, dtype=np.uint8)
    r0, r1, c0, c1 = 0, p.shape[0], 0, p.shape[1]
    for i in range(1, thresh.size):
        mask = np.greater_equal(low[r0:r1, c0:c1], thresh[i]).view(np.uint8)
        x, y, w, h = cv2.boundingRect(mask)
        if w == 0:  # empty mask: every pixel still in leaves here
            break
        r0, r1, c0, c1 = r0 + y, r0 + y + h, c0 + x, c0 + x + w
        inner = still_in[r0:r1, c0:c1]
        inner &= _largest_component(mask[y : y + h, x : x + w])
        survived[r0:r1, c0:c1] += inner
        if not inner.any():  # everyone has left: the remaining thresholds change nothing
            break
    # l per pixel through a 256-entry table: cv2.LUT is ~20x faster than numpy fancy indexing.
    lut = np.zeros(256, dtype=np.float64)
    lut[: thresh.size] = np.concatenate((thresh[:-1], [1.0]))
    l_map = cv2.LUT(survived, lut)
    # |phi_p - phi_g| = |cut(d_g) - cut(d_p)| where cut(d) = d * (d >= 0.15); THRESH_TOZERO
    # keeps d > nextafter(0.15, 0), i.e. d >= 0.15, exactly.
    below = float(np.nextafter(_CONN_THETA, 0.0))
    d_p = cv2.subtract(p, l_map, dst=low)  # reuse: fresh 160 MB buffers cost page faults
    cv2.threshold(d_p, below, 0.0, cv2.THRESH_TOZERO, dst=d_p)
    d_g = cv2.subtract(g, l_map, dst=l_map)
    cv2.threshold(d_g, below, 0.0, cv2.THRESH_TOZERO, dst=d_g)
    cv2.absdiff(d_p, d_g, dst=d_p)
    return float(np.asarray(d_p, dtype=np.float64).sum() / 1000.0)


def confusion(pred_fg: BoolImage, gt_fg: BoolImage) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) pixel counts of two bool HxW foreground masks; foreground is positive."""
    for name, m in (("prediction", pred_fg), ("ground-truth", gt_fg)):
        if m.dtype != np.bool_:
            raise ModnetBatchError(
                f"{name} foreground mask dtype {m.dtype}: expected bool; "
                "threshold the alpha with the protocol's foreground()"
            )
    if pred_fg.shape != gt_fg.shape:
        raise ModnetBatchError(
            f"prediction mask shape {pred_fg.shape} and ground-truth mask shape {gt_fg.shape}: "
            "expected the same shape; compute both at the scoring size"
        )
    tp = int(np.count_nonzero(np.logical_and(pred_fg, gt_fg)))
    pos_pred = int(np.count_nonzero(pred_fg))
    pos_gt = int(np.count_nonzero(gt_fg))
    fp = pos_pred - tp
    fn = pos_gt - tp
    tn = int(pred_fg.size) - tp - fp - fn
    return tp, fp, fn, tn


def image_metrics(
    pred: FloatImage, gt: FloatImage, pred_fg: BoolImage, gt_fg: BoolImage
) -> ImageMetrics:
    """All metrics of one image.

    `pred`, `gt`: float64 HxW alphas in [0, 1] at the scoring resolution; `pred_fg`, `gt_fg`:
    bool HxW foreground masks of the same shape (from the protocol's foreground()).
    """
    p, g = _check_pair(pred, gt)
    if pred_fg.shape != p.shape:
        raise ModnetBatchError(
            f"foreground mask shape {pred_fg.shape} and alpha shape {p.shape}: expected the "
            "same shape; compute the masks from the scored alphas"
        )
    d = _abs_diff(p, g)
    abs_sum = d.sum()
    np.square(d, out=d)
    sq_sum = d.sum()
    n = d.size
    del d
    tp, fp, fn, tn = confusion(pred_fg, gt_fg)
    return ImageMetrics(
        mse=float(sq_sum / n),
        mad=float(abs_sum / n),
        sad=float(abs_sum / 1000.0),
        grad=gradient_error(p, g),
        conn=connectivity_error(p, g),
        tp=tp,
        fp=fp,
        fn=fn,
        tn=tn,
    )
