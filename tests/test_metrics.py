"""Per-image metrics: hand-computed cases, and Grad/Conn against slow references of the DIM code."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import numpy.typing as npt
import pytest
import scipy.ndimage

from modnet_batch.errors import ModnetBatchError
from modnet_batch.metrics import (
    ImageMetrics,
    confusion,
    connectivity_error,
    gradient_error,
    image_metrics,
    mad,
    mse,
    sad,
)
from modnet_batch.metrics.matting import _gauss_kernels, _largest_component

F64 = npt.NDArray[np.float64]

# ---- slow references, written from the Deep Image Matting evaluation code ----


def _gauss(x: float, sigma: float) -> float:
    return float(np.exp(-(x**2) / (2 * sigma**2)) / (sigma * np.sqrt(2 * np.pi)))


def _dgauss(x: float, sigma: float) -> float:
    return -x * _gauss(x, sigma) / sigma**2


def _ref_kernel(sigma: float) -> F64:
    epsilon = 1e-2
    halfsize = int(np.ceil(sigma * np.sqrt(-2 * np.log(np.sqrt(2 * np.pi) * sigma * epsilon))))
    size = 2 * halfsize + 1
    hx = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            hx[i, j] = _gauss(i - halfsize, sigma) * _dgauss(j - halfsize, sigma)
    out: F64 = hx / np.sqrt(np.sum(np.abs(hx) * np.abs(hx)))
    return out


def _ref_gaussgradient(im: F64, sigma: float) -> tuple[F64, F64]:
    hx = _ref_kernel(sigma)
    gx = scipy.ndimage.convolve(im, hx, mode="nearest")
    gy = scipy.ndimage.convolve(im, hx.T, mode="nearest")
    return gx, gy


def _ref_minmax(x: F64) -> F64:
    lo, hi = float(x.min()), float(x.max())
    return np.zeros_like(x) if hi == lo else (x - lo) / (hi - lo)


def _ref_grad(pred: F64, gt: F64) -> float:
    px, py = _ref_gaussgradient(_ref_minmax(pred), 1.4)
    tx, ty = _ref_gaussgradient(_ref_minmax(gt), 1.4)
    err = (np.sqrt(px**2 + py**2) - np.sqrt(tx**2 + ty**2)) ** 2
    return float(np.sum(err) / 1000.0)


_FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])


def _ref_largest_cc(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    labels, n = scipy.ndimage.label(mask, structure=_FOUR)
    if n == 0:
        return np.zeros_like(mask)
    out: npt.NDArray[np.bool_] = labels == np.argmax(np.bincount(labels.flat)[1:]) + 1
    return out


def _ref_conn(pred: F64, gt: F64, step: float = 0.1) -> float:
    # the DIM MATLAB code compares single-precision alphas with 0:step:1, so an alpha of exactly
    # 0.3 reaches the 0.3 threshold (np.arange's 0.30000000000000004 would drop it)
    thresh_steps = [float(f"{i * step:.10f}") for i in range(int(1 / step + 1e-9) + 1)]
    l_map = np.ones_like(pred) * -1
    for i in range(1, len(thresh_steps)):
        omega = _ref_largest_cc((pred >= thresh_steps[i]) & (gt >= thresh_steps[i]))
        flag = (l_map == -1) & (~omega)
        l_map[flag] = thresh_steps[i - 1]
    l_map[l_map == -1] = 1
    pred_d = pred - l_map
    target_d = gt - l_map
    pred_phi = 1 - pred_d * (pred_d >= 0.15)
    target_phi = 1 - target_d * (target_d >= 0.15)
    return float(np.sum(np.abs(pred_phi - target_phi)) / 1000.0)


# ---- test images ----


def _smooth(rng: np.random.Generator, h: int, w: int, cell: int = 6) -> F64:
    """Blurred noise stretched past [0, 1] and clipped: plateaus at 0 and 1, several blobs."""
    small = rng.random((max(2, h // cell), max(2, w // cell)))
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(big.min()), float(big.max())
    stretched = (big - lo) / max(hi - lo, 1e-12) * 1.6 - 0.3
    out: F64 = np.clip(stretched, 0.0, 1.0)
    return out


def _pair(seed: int, h: int, w: int, quantised: bool) -> tuple[F64, F64]:
    rng = np.random.default_rng(seed)
    if min(h, w) < 8:  # too small to blur: plain noise
        gt, pred = rng.random((h, w)), rng.random((h, w))
    else:
        gt = _smooth(rng, h, w)
        # near the truth plus independent blobs, so components differ between the two
        pred = np.clip(0.7 * gt + 0.3 * _smooth(rng, h, w, cell=4), 0.0, 1.0)
    if quantised:  # what the protocols score: uint8 mattes / 255
        gt, pred = np.round(gt * 255) / 255, np.round(pred * 255) / 255
    return pred, gt


PAIRS = [
    (0, 37, 53, False),
    (1, 64, 48, True),
    (2, 120, 90, False),
    (3, 90, 120, True),
    (4, 5, 3, False),  # smaller than the 9x9 kernel
    (5, 1, 7, True),
]


def _rel_close(a: float, b: float, rel: float = 1e-9) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b)) + 1e-300


# ---- MSE / MAD / SAD / confusion ----

H = [[0.0, 0.5], [1.0, 0.25]]


@pytest.mark.parametrize(
    ("pred", "gt", "want_mse", "want_mad", "want_sad"),
    [
        (H, [[0.0, 1.0], [0.5, 0.25]], 0.125, 0.25, 0.001),
        (H, H, 0.0, 0.0, 0.0),
        ([[1.0] * 3] * 2, [[0.0] * 3] * 2, 1.0, 1.0, 0.006),
        ([[0.75, 0.25]], [[0.25, 0.25]], 0.125, 0.25, 0.0005),
    ],
)
def test_mse_mad_sad_by_hand(
    pred: list[list[float]],
    gt: list[list[float]],
    want_mse: float,
    want_mad: float,
    want_sad: float,
) -> None:
    p, g = np.array(pred), np.array(gt)
    assert mse(p, g) == pytest.approx(want_mse, rel=1e-15, abs=0)
    assert mad(p, g) == pytest.approx(want_mad, rel=1e-15, abs=0)
    assert sad(p, g) == pytest.approx(want_sad, rel=1e-15, abs=0)


def test_mse_mad_sad_equal_the_numpy_formulas_bitwise() -> None:
    pred, gt = _pair(7, 200, 130, quantised=True)
    assert mse(pred, gt) == float(np.mean((pred - gt) ** 2))
    assert mad(pred, gt) == float(np.mean(np.abs(pred - gt)))
    assert sad(pred, gt) == float(np.sum(np.abs(pred - gt)) / 1000.0)
    m = image_metrics(pred, gt, pred >= 0.5, gt >= 0.5)
    assert (m.mse, m.mad, m.sad) == (mse(pred, gt), mad(pred, gt), sad(pred, gt))


T, F = True, False


@pytest.mark.parametrize(
    ("pred_fg", "gt_fg", "want"),
    [
        ([[T, T], [F, F]], [[T, F], [T, F]], (1, 1, 1, 1)),
        ([[T, T], [T, T]], [[T, T], [T, T]], (4, 0, 0, 0)),
        ([[F, F, F]], [[T, T, F]], (0, 0, 2, 1)),
        ([[T, F, T]], [[F, F, F]], (0, 2, 0, 1)),
    ],
)
def test_confusion_by_hand(
    pred_fg: list[list[bool]], gt_fg: list[list[bool]], want: tuple[int, int, int, int]
) -> None:
    got = confusion(np.array(pred_fg), np.array(gt_fg))
    assert got == want
    assert all(type(c) is int for c in got)


def test_confusion_rejects_non_bool_and_shape_mismatch() -> None:
    with pytest.raises(ModnetBatchError, match="expected bool"):
        confusion(np.zeros((2, 2)), np.zeros((2, 2), dtype=bool))  # type: ignore[arg-type]
    with pytest.raises(ModnetBatchError, match=r"\(2, 2\).*\(2, 3\)"):
        confusion(np.zeros((2, 2), dtype=bool), np.zeros((2, 3), dtype=bool))


# ---- Grad ----


def test_separable_kernel_is_the_flipped_dim_kernel() -> None:
    smooth, deriv = _gauss_kernels(1.4)
    hx = _ref_kernel(1.4)
    assert hx.shape == (9, 9)
    # cv2 correlates with outer(smooth, deriv); scipy convolves with hx, i.e. correlates with
    # hx flipped on both axes.
    np.testing.assert_allclose(np.outer(smooth, deriv), hx[::-1, ::-1], rtol=1e-13, atol=1e-16)


@pytest.mark.parametrize(("seed", "h", "w", "quantised"), PAIRS)
def test_gradient_error_matches_dim_reference(seed: int, h: int, w: int, quantised: bool) -> None:
    pred, gt = _pair(seed, h, w, quantised)
    want = _ref_grad(pred, gt)
    got = gradient_error(pred, gt)
    assert want > 0
    assert _rel_close(got, want), (got, want)


@pytest.mark.parametrize(
    ("pred_fill", "gt_kind"),
    [(0.4, "smooth"), (0.0, "smooth"), (1.0, "smooth"), (0.0, "ones"), (1.0, "zeros")],
)
def test_gradient_error_constant_images(pred_fill: float, gt_kind: str) -> None:
    _, smooth = _pair(11, 40, 30, quantised=False)
    gt = {"smooth": smooth, "ones": np.ones((40, 30)), "zeros": np.zeros((40, 30))}[gt_kind]
    pred = np.full((40, 30), pred_fill)
    want = _ref_grad(pred, gt)
    assert _rel_close(gradient_error(pred, gt), want)
    # a constant matte normalises to zeros: its gradient is zero, the error is gt's energy alone
    assert (want == 0.0) == (gt_kind != "smooth")


def test_gradient_error_is_zero_for_identical_and_rescaled_mattes() -> None:
    _, gt = _pair(12, 50, 40, quantised=False)
    assert gradient_error(gt, gt) == 0.0
    # min-max normalisation makes an affine rescaling invisible
    assert gradient_error(0.25 + 0.5 * gt, gt) < 1e-20


# ---- Conn ----


def test_connectivity_error_by_hand() -> None:
    # pixel 0 stays in the component up to t = 1 (l = 1); pixel 1 leaves at t = 0.1 (l = 0);
    # phi_pred = [1, 1 - 1] and phi_gt = [1, 1]: |diff| sums to 1.
    assert connectivity_error(np.array([[1.0, 1.0]]), np.array([[1.0, 0.0]])) == 0.001


@pytest.mark.parametrize(
    ("pred", "gt", "want"),
    [
        # pixel 1 leaves at t = 0.1 (l = 0): d_pred = 0.15 is exactly at the 0.15 cut, so
        # phi_pred = 0.85 against phi_gt = 1
        ([[1.0, 0.15]], [[1.0, 0.0]], 0.15 / 1000),
        # just below the cut: phi = 1 for both
        ([[1.0, 0.1499999]], [[1.0, 0.0]], 0.0),
    ],
)
def test_connectivity_error_phi_cut_by_hand(
    pred: list[list[float]], gt: list[list[float]], want: float
) -> None:
    assert connectivity_error(np.array(pred), np.array(gt)) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize(("cy", "cx", "quantised"), [(0.5, 0.5, False), (0.3, 0.7, True)])
def test_connectivity_error_on_shrinking_bumps(cy: float, cx: float, quantised: bool) -> None:
    # a bump's threshold masks shrink from every side at every step, plus a smaller second bump
    # that drops out of the largest component early
    yy, xx = np.mgrid[0:80, 0:100] / np.array([80.0, 100.0])[:, None, None]
    r2 = (yy - cy) ** 2 + (xx - cx) ** 2
    gt = np.exp(-r2 / 0.05) + 0.6 * np.exp(-((yy - 0.85) ** 2 + (xx - 0.15) ** 2) / 0.005)
    gt = np.clip(gt, 0.0, 1.0)
    pred = np.clip(gt**0.7 + 0.05 * np.sin(40 * xx), 0.0, 1.0)
    if quantised:
        gt, pred = np.round(gt * 255) / 255, np.round(pred * 255) / 255
    want = _ref_conn(pred, gt)
    assert want > 0
    assert _rel_close(connectivity_error(pred, gt), want)


@pytest.mark.parametrize(("seed", "h", "w", "quantised"), PAIRS)
def test_connectivity_error_matches_dim_reference(
    seed: int, h: int, w: int, quantised: bool
) -> None:
    pred, gt = _pair(seed, h, w, quantised)
    want = _ref_conn(pred, gt)
    got = connectivity_error(pred, gt)
    assert want > 0
    assert _rel_close(got, want), (got, want)


@pytest.mark.parametrize(
    ("pred_kind", "gt_kind"),
    [
        ("zeros", "zeros"),
        ("ones", "ones"),
        ("zeros", "ones"),
        ("const", "smooth"),
        ("smooth", "ones"),
        ("smooth", "zeros"),
        ("smooth", "smooth"),
    ],
)
def test_connectivity_error_edge_cases(pred_kind: str, gt_kind: str) -> None:
    _, smooth = _pair(13, 40, 30, quantised=True)
    images = {
        "zeros": np.zeros((40, 30)),
        "ones": np.ones((40, 30)),
        "const": np.full((40, 30), 0.55),
        "smooth": smooth,
    }
    pred, gt = images[pred_kind], images[gt_kind]
    want = _ref_conn(pred, gt)
    assert _rel_close(connectivity_error(pred, gt), want)
    if pred_kind == gt_kind:
        assert want == 0.0


def test_connectivity_error_exact_thresholds() -> None:
    # alpha 0.3 reaches the 0.3 threshold, as in the DIM MATLAB code (single precision), though
    # np.arange's third step 0.30000000000000004 lies above it; just below 0.3 it does not.
    pred = np.array([[0.3, 0.3], [1.0, 1.0]])
    gt = np.ones((2, 2))
    want = _ref_conn(pred, gt)
    assert connectivity_error(pred, gt) == pytest.approx(want, rel=1e-12)
    assert want != _ref_conn(np.array([[0.29999999999999993, 0.3], [1.0, 1.0]]), gt)
    below = np.array([[0.29999999999999993, 0.3], [1.0, 1.0]])
    assert connectivity_error(below, gt) == pytest.approx(_ref_conn(below, gt), rel=1e-12)


@pytest.mark.parametrize(("seed", "h", "w", "density"), [(20, 40, 50, 0.1), (21, 1100, 700, 0.3)])
def test_largest_component_breaks_ties_in_raster_order(
    seed: int, h: int, w: int, density: float
) -> None:
    # sparse masks: many components of equal (small) area, so the tie rule decides; the large
    # one exercises cv2's parallel labelling
    rng = np.random.default_rng(seed)
    mask = rng.random((h, w)) < density
    want = _ref_largest_cc(mask)
    got = _largest_component(mask.view(np.uint8))
    sizes = np.bincount(scipy.ndimage.label(mask, structure=_FOUR)[0].flat)[1:]
    assert np.count_nonzero(sizes == sizes.max()) > 1  # a tie really is broken here
    np.testing.assert_array_equal(got, want)


def test_connectivity_error_with_tied_components() -> None:
    # isolated pixels of random values: every component has area 1, the first one wins
    rng = np.random.default_rng(22)
    sparse = (rng.random((30, 40)) < 0.08) & (np.indices((30, 40)).sum(0) % 2 == 0)
    gt = np.where(sparse, rng.random((30, 40)), 0.0)
    pred = np.where(sparse, rng.random((30, 40)), 0.0)
    want = _ref_conn(pred, gt)
    assert want > 0
    assert _rel_close(connectivity_error(pred, gt), want)


@pytest.mark.parametrize("step", [0.001, 0.0, -0.1, 1.5])
def test_connectivity_error_rejects_bad_step(step: float) -> None:
    with pytest.raises(ModnetBatchError, match="step"):
        connectivity_error(np.zeros((2, 2)), np.zeros((2, 2)), step=step)


@pytest.mark.parametrize("step", [0.05, 0.25, 1.0])
def test_connectivity_error_other_steps_match_reference(step: float) -> None:
    pred, gt = _pair(14, 50, 60, quantised=False)
    assert _rel_close(connectivity_error(pred, gt, step=step), _ref_conn(pred, gt, step=step))


# ---- image_metrics ----


def test_image_metrics_combines_every_metric() -> None:
    pred, gt = _pair(30, 60, 45, quantised=True)
    pfg, gfg = pred >= 0.5, gt >= 0.5
    m = image_metrics(pred, gt, pfg, gfg)
    tp, fp, fn, tn = confusion(pfg, gfg)
    assert m == ImageMetrics(
        mse=mse(pred, gt),
        mad=mad(pred, gt),
        sad=sad(pred, gt),
        grad=gradient_error(pred, gt),
        conn=connectivity_error(pred, gt),
        tp=tp,
        fp=fp,
        fn=fn,
        tn=tn,
    )
    assert tp + fp + fn + tn == 60 * 45


@pytest.mark.parametrize("fn", [mse, mad, sad, gradient_error, connectivity_error])
def test_shape_mismatch_names_both_shapes(fn: Callable[[F64, F64], float]) -> None:
    with pytest.raises(ModnetBatchError, match=r"\(4, 5\).*\(5, 4\)"):
        fn(np.zeros((4, 5)), np.zeros((5, 4)))


def test_image_metrics_rejects_bad_shapes() -> None:
    a = np.zeros((4, 5))
    with pytest.raises(ModnetBatchError, match=r"\(4, 5\).*\(4, 6\)"):
        image_metrics(a, np.zeros((4, 6)), a > 0, a > 0)
    with pytest.raises(ModnetBatchError, match=r"\(5, 4\).*\(4, 5\)"):
        image_metrics(a, a, np.zeros((5, 4), dtype=bool), a > 0)
    with pytest.raises(ModnetBatchError, match="no pixels"):
        image_metrics(
            np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3), bool), np.zeros((0, 3), bool)
        )
