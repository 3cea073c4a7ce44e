"""Batched, device-side matting metrics for the torch engine: MSE, MAD, SAD, Grad and the IoU
confusion counts of a [B,H,W] batch, computed in torch wherever the tensors live (CPU, CUDA, ...).

The CPU reference is `modnet_batch.metrics.matting` (float64 numpy/cv2); this module reproduces
it image for image. Conn is not computed here: its largest 4-connected component per threshold
is a sequential labelling (cv2.connectedComponents) with no batched torch equivalent, so Conn
stays on CPU threads (`metrics.matting.connectivity_error`); `BatchMetrics.image_metrics` joins
the two into the ImageMetrics rows the MetricAccumulator takes.

Precision. The element-wise work runs in `dtype` (float32 by default, the device's fast path)
and every reduction accumulates in float64 (`sum(dtype=torch.float64)`). Measured against the
reference on the 41 ppm100-dev mattes at 288x480 (seed-area ground truth; the real model's,
noisy and blurred predictions; tests/test_torch_metrics.py), per image at most:
- float32 inputs and compute: MSE 5.8e-8, MAD/SAD 2.7e-8, Grad 5.0e-6 relative (2.5e-7 on the
  model's predictions); dataset means: MSE/MAD/SAD 2.2e-8, Grad 2.1e-6. MSE/MAD/SAD are bounded
  by the float32 inputs themselves (k/255 is no float32: float64 arithmetic on them gives the
  same 3e-8), Grad by the float32 filter taps.
- float64 inputs and `dtype=torch.float64` (where the device has float64): 6.6e-16 per image,
  dataset means equal or 1 ulp apart; this is the mode for 1e-9 dataset-level agreement.
- confusion counts: equal in both (the mask is taken from the inputs as given; a float32 input
  cannot hold a value within half an ulp of the threshold, none of the protocols produces one).

Speed (bench_score, batch 16 at 288x480, a shared 2-core CPU, no GPU measured): torch float32
80-330 images/s on 1 thread, 490 on 2 when the cores are free but 25-40 when other processes
load them; the numpy reference without Conn 200-400 (with Conn 55-140). On the CPU this module
buys nothing over metrics.matting: it is for accelerators, where the batch already lives.

This module imports torch: only the torch engine imports it (`modnet_batch.engine` does not).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from modnet_batch.errors import ModnetBatchError
from modnet_batch.metrics.matting import GRAD_SIGMA, ImageMetrics, _gauss_kernels
from modnet_batch.protocol.base import Protocol
from modnet_batch.protocol.paper import PaperProtocol
from modnet_batch.protocol.seed import SeedProtocol

Foreground = float | Callable[[torch.Tensor], torch.Tensor]

# cv2.normalize(NORM_MINMAX) maps an image whose range is <= DBL_EPSILON to zeros.
_DBL_EPSILON = 2.220446049250313e-16
# Images per chunk on the CPU (see score_batch).
_CPU_CHUNK = 2


@dataclass(frozen=True)
class BatchMetrics:
    """Per-image metrics of a batch, as [B] tensors on the batch's device.

    mse, mad, sad, grad: float64; tp, fp, fn, tn: int64 (foreground is the positive class).
    """

    mse: torch.Tensor
    mad: torch.Tensor
    sad: torch.Tensor
    grad: torch.Tensor
    tp: torch.Tensor
    fp: torch.Tensor
    fn: torch.Tensor
    tn: torch.Tensor

    def as_dict(self) -> dict[str, torch.Tensor]:
        """{name: [B] tensor} in metrics.matting's order (no conn)."""
        names = ("mse", "mad", "sad", "grad", "tp", "fp", "fn", "tn")
        return {name: getattr(self, name) for name in names}

    def image_metrics(self, conn: Sequence[float]) -> list[ImageMetrics]:
        """One ImageMetrics per image, with `conn` (one value per image, from the CPU) filled in.

        Copies the batch to the host once.
        """
        n = int(self.mse.shape[0])
        if len(conn) != n:
            raise ModnetBatchError(
                f"{len(conn)} conn values for a batch of {n} images: expected one per image, "
                "from metrics.matting.connectivity_error"
            )
        floats = torch.stack([self.mse, self.mad, self.sad, self.grad]).cpu().tolist()
        counts = torch.stack([self.tp, self.fp, self.fn, self.tn]).cpu().tolist()
        return [
            ImageMetrics(
                mse=floats[0][i],
                mad=floats[1][i],
                sad=floats[2][i],
                grad=floats[3][i],
                conn=float(conn[i]),
                tp=counts[0][i],
                fp=counts[1][i],
                fn=counts[2][i],
                tn=counts[3][i],
            )
            for i in range(n)
        ]


def foreground_for(protocol: Protocol) -> Callable[[torch.Tensor], torch.Tensor]:
    """The torch twin of `protocol.foreground` (the IoU mask of an alpha in [0, 1])."""
    if isinstance(protocol, SeedProtocol):
        return lambda alpha: alpha * 255.0 >= 127.5  # 8-bit value >= 128, as SeedProtocol
    if isinstance(protocol, PaperProtocol):
        return lambda alpha: alpha >= 0.5
    raise ModnetBatchError(
        f"protocol {protocol.name!r} ({type(protocol).__name__}) has no torch foreground: "
        "pass score_batch a threshold or a callable equal to its foreground()"
    )


def _check_batch(pred: torch.Tensor, gt: torch.Tensor) -> None:
    if pred.ndim != 3 or gt.shape != pred.shape:
        raise ModnetBatchError(
            f"prediction shape {tuple(pred.shape)} and ground-truth shape {tuple(gt.shape)}: "
            "expected two [B,H,W] tensors of the same shape; resize both to the protocol's "
            "scoring size and stack images of one size per batch"
        )
    if pred.numel() == 0:
        raise ModnetBatchError(
            f"batch shape {tuple(pred.shape)} has no pixels: expected B >= 1 non-empty HxW "
            "mattes; drop empty images before scoring"
        )
    for name, t in (("prediction", pred), ("ground truth", gt)):
        if not t.is_floating_point():
            raise ModnetBatchError(
                f"{name} dtype {t.dtype}: expected a float tensor in [0, 1]; divide 8-bit "
                "alphas by 255 first"
            )
    if pred.device != gt.device:
        raise ModnetBatchError(
            f"prediction on {pred.device}, ground truth on {gt.device}: expected one device; "
            "move both to the scoring device"
        )


def _mask(foreground: Foreground, alpha: torch.Tensor, name: str) -> torch.Tensor:
    if isinstance(foreground, bool):
        raise ModnetBatchError(
            f"foreground {foreground!r}: expected a float threshold or a callable, e.g. "
            "foreground_for(protocol)"
        )
    m = alpha >= foreground if isinstance(foreground, float | int) else foreground(alpha)
    if m.dtype != torch.bool or m.shape != alpha.shape:
        raise ModnetBatchError(
            f"{name} foreground mask dtype {m.dtype}, shape {tuple(m.shape)}: expected bool "
            f"{tuple(alpha.shape)}; the foreground callable must threshold the alpha"
        )
    return m


def _filter_1d(x: torch.Tensor, taps: Sequence[float], dim: int, size: int) -> torch.Tensor:
    """Correlate `x` along `dim` with `taps`, valid part only (`size` long), as cv2 filters."""
    out = x.narrow(dim, 0, size) * taps[0]
    for k in range(1, len(taps)):
        out.add_(x.narrow(dim, k, size), alpha=taps[k])
    return out


def _gradient_amplitude(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """|Gaussian gradient| of each min-max normalised [N,H,W] image, as metrics.matting."""
    n, h, w = x.shape
    # cv2.normalize NORM_MINMAX to [0, 1]: scale = 1 / (max - min) (0 for a range <= DBL_EPSILON),
    # shift = -min * scale, dst = src * scale + shift; scale and shift in float64 as cv2.
    lo = x.amin(dim=(1, 2)).double()
    hi = x.amax(dim=(1, 2)).double()
    rng = hi - lo
    scale = torch.where(rng > _DBL_EPSILON, 1.0 / rng, torch.zeros_like(rng))
    shift = -lo * scale
    normed = x * scale.to(x.dtype).view(n, 1, 1) + shift.to(x.dtype).view(n, 1, 1)
    smooth_taps, deriv_taps = _gauss_kernels(sigma)
    smooth, deriv = smooth_taps.tolist(), deriv_taps.tolist()
    half = (len(smooth) - 1) // 2
    # cv2.BORDER_REPLICATE (scipy.ndimage mode='nearest', as DIM) is F.pad mode='replicate'.
    # Padding both axes once, then filtering rows and columns, equals cv2.sepFilter2D's row
    # filter followed by its column filter over replicated rows.
    padded = F.pad(normed.unsqueeze(1), (half, half, half, half), mode="replicate").squeeze(1)
    # Shifted multiply-adds rather than conv2d: no TF32 on CUDA, no algorithm choice, same
    # summation order on every device.
    dx_rows = _filter_1d(padded, deriv, 2, w)  # [N, H+2h, W]
    sm_rows = _filter_1d(padded, smooth, 2, w)
    gx = _filter_1d(dx_rows, smooth, 1, h)
    gy = _filter_1d(sm_rows, deriv, 1, h)
    return torch.sqrt(gx * gx + gy * gy)


def _score(p: torch.Tensor, g: torch.Tensor, grad_sigma: float) -> list[torch.Tensor]:
    """[mse, mad, sad, grad] of same-dtype [B,H,W] alphas, each a float64 [B] tensor."""
    b, h, w = p.shape
    pixels = h * w
    d = (p - g).abs_()
    abs_sum = d.sum(dim=(1, 2), dtype=torch.float64)
    sq_sum = d.square_().sum(dim=(1, 2), dtype=torch.float64)
    del d
    amp = _gradient_amplitude(torch.cat((p, g)), grad_sigma)
    diff = amp[:b].sub_(amp[b:])
    grad = diff.square_().sum(dim=(1, 2), dtype=torch.float64) / 1000.0
    return [sq_sum / pixels, abs_sum / pixels, abs_sum / 1000.0, grad]


def score_batch(
    pred: torch.Tensor,
    gt: torch.Tensor,
    *,
    foreground: Foreground,
    grad_sigma: float = GRAD_SIGMA,
    dtype: torch.dtype = torch.float32,
) -> BatchMetrics:
    """Per-image MSE, MAD, SAD, Grad and IoU confusion counts of a batch, on its device.

    `pred`, `gt`: float [B,H,W] alphas in [0, 1] at the scoring size, on one device (a batch
    holds images of one size, e.g. the seed protocols' 480x288). `foreground`: a threshold t
    (a pixel is foreground when alpha >= t) or a callable [B,H,W] -> bool [B,H,W] equal to the
    protocol's foreground() (`foreground_for(protocol)`); it sees the alphas as given. `dtype`:
    the element-wise precision (float32, or float64 where the device has it); reductions are
    float64. Everything `metrics.matting.image_metrics` computes except Conn, which stays on
    CPU threads (`metrics.matting.connectivity_error`; join it with `BatchMetrics.image_metrics`).
    """
    _check_batch(pred, gt)
    if dtype not in (torch.float32, torch.float64):
        raise ModnetBatchError(
            f"dtype {dtype}: expected torch.float32 (the default) or torch.float64"
        )
    b, h, w = pred.shape
    p = pred.to(dtype)
    g = gt.to(dtype)
    # On the CPU a whole batch streams ~40 passes through memory far larger than the caches,
    # and every fresh buffer of that size is page-faulted in: chunks of a few images stay in
    # cache (measured at 288x480: 2 images per chunk is ~4x faster than 16). Devices with a
    # caching allocator take the batch at once.
    step = _CPU_CHUNK if p.device.type == "cpu" else b
    parts = [_score(p[i : i + step], g[i : i + step], grad_sigma) for i in range(0, b, step)]
    mse, mad, sad, grad = (torch.cat(col) for col in zip(*parts, strict=True))
    pred_fg = _mask(foreground, pred, "prediction")
    gt_fg = _mask(foreground, gt, "ground-truth")
    tp = (pred_fg & gt_fg).sum(dim=(1, 2), dtype=torch.int64)
    fp = pred_fg.sum(dim=(1, 2), dtype=torch.int64) - tp
    fn = gt_fg.sum(dim=(1, 2), dtype=torch.int64) - tp
    tn = h * w - tp - fp - fn
    return BatchMetrics(mse=mse, mad=mad, sad=sad, grad=grad, tp=tp, fp=fp, fn=fn, tn=tn)


def bench_score(
    batch: int,
    h: int,
    w: int,
    device: str | torch.device = "cpu",
    *,
    dtype: torch.dtype = torch.float32,
    repeats: int = 20,
    seed: int = 0,
) -> float:
    """Images/s of `score_batch` on `device` for random [batch,h,w] alphas on 8-bit levels.

    A micro-benchmark, not a test: one warm-up call, then `repeats` timed calls (CUDA
    synchronised around each); returns batch / the median call time, which shrugs off other
    processes on a shared machine better than the mean. Uses torch's current thread count.
    """
    if batch < 1 or h < 1 or w < 1 or repeats < 1:
        raise ModnetBatchError(
            f"bench_score({batch}, {h}, {w}, repeats={repeats}): expected positive sizes"
        )
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    pred = (torch.randint(0, 256, (batch, h, w), generator=gen) / 255.0).to(dev, dtype)
    gt = (torch.randint(0, 256, (batch, h, w), generator=gen) / 255.0).to(dev, dtype)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    score_batch(pred, gt, foreground=0.5, dtype=dtype)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        score_batch(pred, gt, foreground=0.5, dtype=dtype)
        sync()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)
