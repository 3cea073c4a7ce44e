"""engine.torch.metrics (the torch engine's batched metrics) against metrics.matting, the float64
numpy/cv2 reference: synthetic and structured alphas, and the 41 real ppm100-dev mattes (slow).

Tolerances (relative to the reference value; the confusion counts are always exactly equal):
- dtype=float64: 1e-12 per image and 1e-9 for the dataset-level means (measured ~5e-16 and 0).
- dtype=float32 (the default): per image MSE/MAD/SAD 1e-6, Grad 1e-5 (+1e-9 absolute, for a Grad
  near 0); dataset-level MSE/MAD/SAD 1e-7, Grad 1e-5. Measured on ppm100-dev at 288x480 (the
  model's, noisy and blurred predictions): per image at most MSE 5.8e-8, MAD/SAD 2.7e-8,
  Grad 5.0e-6 (noisy predictions; 2.5e-7 for the model's); dataset-level at most MSE/MAD/SAD
  2.2e-8, Grad 2.1e-6. MSE/MAD/SAD are limited by the float32 inputs themselves (k/255 is not a
  float32; float64 arithmetic on float32 inputs gives the same 3e-8), Grad by the float32 filter.
  The 1e-9 dataset-level agreement therefore needs dtype=float64 and float64 inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from modnet_batch.errors import ModnetBatchError
from modnet_batch.metrics import ImageMetrics, MetricAccumulator, image_metrics
from modnet_batch.protocol import get_protocol

torch = pytest.importorskip(
    "torch", reason="torch is not installed (only the torch engine uses it)"
)

from modnet_batch.engine.torch.metrics import (  # noqa: E402
    BatchMetrics,
    bench_score,
    foreground_for,
    score_batch,
)

F64 = npt.NDArray[np.float64]
FLOATS = ("mse", "mad", "sad", "grad")
COUNTS = ("tp", "fp", "fn", "tn")
SEED = get_protocol("seed-area")

# (relative, absolute) per metric and compute dtype, per image and for the dataset means
PER_IMAGE_TOL = {
    torch.float64: dict.fromkeys(FLOATS, (1e-12, 1e-15)),
    torch.float32: {
        "mse": (1e-6, 0.0),
        "mad": (1e-6, 0.0),
        "sad": (1e-6, 0.0),
        "grad": (1e-5, 1e-9),
    },
}
DATASET_TOL = {
    torch.float64: dict.fromkeys(FLOATS, 1e-9),
    torch.float32: {"mse": 1e-7, "mad": 1e-7, "sad": 1e-7, "grad": 1e-5},
}
DTYPES = [torch.float32, torch.float64]


def _close(got: float, want: float, rel: float, abs_: float = 0.0) -> bool:
    return abs(got - want) <= rel * abs(want) + abs_


def _reference(
    pred: F64, gt: F64, fg: Callable[[F64], npt.NDArray[np.bool_]]
) -> list[ImageMetrics]:
    return [image_metrics(p, g, fg(p), fg(g)) for p, g in zip(pred, gt, strict=True)]


def _score(
    pred: F64, gt: F64, dtype: torch.dtype, foreground: float | Callable[..., object] = 0.5
) -> BatchMetrics:
    return score_batch(
        torch.from_numpy(pred).to(dtype), torch.from_numpy(gt).to(dtype), foreground=foreground,
        dtype=dtype,
    )  # fmt: skip


def _assert_matches(
    got: BatchMetrics, want: list[ImageMetrics], dtype: torch.dtype, what: str = ""
) -> None:
    d = got.as_dict()
    for name in FLOATS:
        assert d[name].dtype == torch.float64 and d[name].shape == (len(want),)
        rel, abs_ = PER_IMAGE_TOL[dtype][name]
        for i, (g, w) in enumerate(zip(d[name].tolist(), want, strict=True)):
            ref = getattr(w, name)
            assert _close(g, ref, rel, abs_), f"{what} image {i} {name}: {g!r} vs {ref!r}"
    for name in COUNTS:
        assert d[name].dtype == torch.int64
        assert d[name].tolist() == [getattr(w, name) for w in want], f"{what} {name}"


def _smooth(rng: np.random.Generator, h: int, w: int, cell: int = 6) -> F64:
    """Blurred noise stretched past [0, 1] and clipped: plateaus at 0 and 1, several blobs."""
    small = rng.random((max(2, h // cell), max(2, w // cell)))
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(big.min()), float(big.max())
    out: F64 = np.clip((big - lo) / max(hi - lo, 1e-12) * 1.6 - 0.3, 0.0, 1.0)
    return out


def _batch(seed: int, b: int, h: int, w: int, quantised: bool) -> tuple[F64, F64]:
    rng = np.random.default_rng(seed)
    if min(h, w) < 8:  # too small to blur: plain noise
        gt, pred = rng.random((b, h, w)), rng.random((b, h, w))
    else:
        gt = np.stack([_smooth(rng, h, w) for _ in range(b)])
        pred = np.clip(0.7 * gt + 0.3 * np.stack([_smooth(rng, h, w, 4) for _ in range(b)]), 0, 1)
    if quantised:  # what the protocols score: 8-bit levels / 255
        gt, pred = np.round(gt * 255) / 255, np.round(pred * 255) / 255
    return pred, gt


# ---- synthetic and structured alphas ----


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("seed", "b", "h", "w", "quantised"),
    [
        (0, 3, 37, 53, False),
        (1, 3, 37, 53, True),
        (2, 2, 1, 61, True),  # 1xN: the 9-tap filter replicates the single row
        (3, 2, 61, 1, False),
        (4, 1, 1, 1, True),
        (5, 2, 5, 3, False),  # smaller than the kernel
        (6, 5, 64, 48, True),  # odd batch: the CPU chunks of 2 leave one over
        (7, 1, 288, 480, True),
    ],
)
def test_matches_the_reference_on_random_alphas(
    seed: int, b: int, h: int, w: int, quantised: bool, dtype: torch.dtype
) -> None:
    pred, gt = _batch(seed, b, h, w, quantised)
    _assert_matches(_score(pred, gt, dtype), _reference(pred, gt, lambda a: a >= 0.5), dtype)


def _structured(h: int, w: int) -> Iterator[tuple[str, F64, F64]]:
    zeros, ones = np.zeros((h, w)), np.ones((h, w))
    rect = zeros.copy()
    rect[5:20, 7:40] = 1.0
    shifted = np.roll(rect, (2, -3), axis=(0, 1))
    rng = np.random.default_rng(9)
    noise_bin = (rng.random((h, w)) >= 0.5).astype(np.float64)
    tiny = np.full((h, w), 0.5)
    tiny[3, 4] = np.nextafter(0.5, 1.0)  # range <= DBL_EPSILON: cv2.normalize gives zeros
    ramp = np.tile(np.linspace(0.0, 1.0, w), (h, 1))
    yield "all zero", zeros, zeros
    yield "all one", ones, ones
    yield "zero vs one", zeros, ones
    yield "one vs zero", ones, zeros
    yield "binary rect vs shifted", shifted, rect
    yield "binary noise vs rect", noise_bin, rect
    yield "equal binary", rect, rect.copy()
    yield "constant half vs rect", np.full((h, w), 0.5), rect
    yield "tiny range vs ramp", tiny, ramp
    yield "ramp vs rescaled ramp", ramp, 0.25 + 0.5 * ramp  # equal after min-max, but rounding


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_the_reference_on_structured_alphas_in_one_batch(dtype: torch.dtype) -> None:
    names, preds, gts = zip(*_structured(37, 53), strict=True)
    pred, gt = np.stack(preds), np.stack(gts)
    got = _score(pred, gt, dtype)
    want = _reference(pred, gt, lambda a: a >= 0.5)
    for i, name in enumerate(names):
        _assert_matches(
            BatchMetrics(**{k: v[i : i + 1] for k, v in got.as_dict().items()}),
            want[i : i + 1],
            dtype,
            name,
        )
    grad = dict(zip(names, got.grad.tolist(), strict=True))
    # constant images normalise to zeros, identical ones filter identically: Grad exactly 0
    for name in ("all zero", "all one", "zero vs one", "one vs zero", "equal binary"):
        assert grad[name] == 0.0, name


def test_the_foreground_sees_the_inputs_as_given() -> None:
    """float64 inputs keep a value one ulp below the threshold below it, even when the metrics
    are computed in float32 (a float32 input would round it to the threshold itself)."""
    pred = np.full((1, 6, 7), 0.5)
    gt = np.full((1, 6, 7), np.nextafter(0.5, 0.0))
    got = score_batch(torch.from_numpy(pred), torch.from_numpy(gt), foreground=0.5)
    (want,) = _reference(pred, gt, lambda a: a >= 0.5)
    assert [int(getattr(got, k)) for k in COUNTS] == [want.tp, want.fp, want.fn, want.tn]
    assert got.fp.tolist() == [42]
    # the 1-ulp difference itself is below float32's resolution: MAD 0 instead of 5.6e-17
    assert abs(float(got.mad) - want.mad) < 1e-16


def test_a_batch_scores_each_image_as_alone() -> None:
    pred, gt = _batch(11, 5, 40, 30, True)
    whole = _score(pred, gt, torch.float32).as_dict()
    for i in range(5):
        alone = _score(pred[i : i + 1], gt[i : i + 1], torch.float32).as_dict()
        for name, col in whole.items():
            assert torch.equal(col[i : i + 1], alone[name]), (i, name)


def test_float32_inputs_and_compute_stay_within_the_stated_tolerance() -> None:
    pred, gt = _batch(12, 4, 96, 64, True)
    got = score_batch(torch.from_numpy(pred).float(), torch.from_numpy(gt).float(), foreground=0.5)
    _assert_matches(got, _reference(pred, gt, lambda a: a >= 0.5), torch.float32)


# ---- foreground masks ----


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["seed-area", "seed-linear", "paper"])
def test_foreground_for_equals_the_protocols_foreground(name: str, dtype: torch.dtype) -> None:
    protocol = get_protocol(name)
    levels = np.arange(256, dtype=np.float64) / 255.0
    # one float32 ulp either side of 0.5: exact in both dtypes
    half = np.float32(0.5)
    below, above = np.nextafter(half, np.float32(0)), np.nextafter(half, np.float32(1))
    near = np.array([0.0, below, half, above, 1.0], dtype=np.float64)
    for alpha in (levels, near):
        want = protocol.foreground(alpha)
        got = foreground_for(protocol)(torch.from_numpy(alpha).to(dtype))
        assert got.dtype == torch.bool
        assert got.numpy().tolist() == want.tolist()


def test_seed_foreground_counts_equal_the_pipelines() -> None:
    pred, gt = _batch(13, 3, 48, 32, True)
    got = _score(pred, gt, torch.float32, foreground_for(SEED))
    _assert_matches(got, _reference(pred, gt, SEED.foreground), torch.float32)


def test_foreground_threshold_and_callable_agree() -> None:
    pred, gt = _batch(14, 2, 30, 20, False)
    a = _score(pred, gt, torch.float64, 0.25).as_dict()
    b = _score(pred, gt, torch.float64, lambda t: t >= 0.25).as_dict()
    assert all(torch.equal(a[k], b[k]) for k in COUNTS)
    _assert_matches(
        _score(pred, gt, torch.float64, 0.25),
        _reference(pred, gt, lambda x: x >= 0.25),
        torch.float64,
    )


def test_unknown_protocol_has_no_torch_foreground() -> None:
    class Other:
        name = "other"

    with pytest.raises(ModnetBatchError, match="no torch foreground"):
        foreground_for(Other())  # type: ignore[arg-type]


# ---- errors ----


@pytest.mark.parametrize(
    ("pred", "gt", "match"),
    [
        (torch.zeros(2, 4, 5), torch.zeros(2, 5, 4), "same shape"),
        (torch.zeros(4, 5), torch.zeros(4, 5), r"\[B,H,W\]"),
        (torch.zeros(0, 4, 5), torch.zeros(0, 4, 5), "no pixels"),
        (torch.zeros(1, 0, 5), torch.zeros(1, 0, 5), "no pixels"),
        (torch.zeros(1, 4, 5, dtype=torch.uint8), torch.zeros(1, 4, 5), "float tensor"),
    ],
)
def test_bad_batches_are_refused(pred: torch.Tensor, gt: torch.Tensor, match: str) -> None:
    with pytest.raises(ModnetBatchError, match=match):
        score_batch(pred, gt, foreground=0.5)


def test_bad_dtype_and_bad_foreground_are_refused() -> None:
    x = torch.zeros(1, 4, 5)
    with pytest.raises(ModnetBatchError, match="float32"):
        score_batch(x, x, foreground=0.5, dtype=torch.float16)
    with pytest.raises(ModnetBatchError, match="float threshold"):
        score_batch(x, x, foreground=True)
    with pytest.raises(ModnetBatchError, match="expected bool"):
        score_batch(x, x, foreground=lambda t: t * 2)
    with pytest.raises(ModnetBatchError, match="expected bool"):
        score_batch(x, x, foreground=lambda t: (t >= 0.5)[0])


def test_image_metrics_needs_one_conn_per_image() -> None:
    x = torch.zeros(2, 4, 5)
    with pytest.raises(ModnetBatchError, match="one per image"):
        score_batch(x, x, foreground=0.5).image_metrics([0.0])


# ---- dataset level ----


def _accumulate(rows: list[ImageMetrics]) -> dict[str, float | int | None]:
    acc = MetricAccumulator()
    for r in rows:
        acc.update(r)
    return acc.summary()


def _assert_dataset(rows: list[ImageMetrics], refs: list[ImageMetrics], dtype: torch.dtype) -> None:
    got, want = _accumulate(rows), _accumulate(refs)
    for name in FLOATS:
        g, w = got[name], want[name]
        assert isinstance(g, float) and isinstance(w, float)
        assert _close(g, w, DATASET_TOL[dtype][name]), f"dataset {name}: {g!r} vs {w!r}"
    assert got["conn"] == want["conn"] and got["miou"] == want["miou"]
    assert got["scored"] == want["scored"] == len(refs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_reduce_to_the_reference_dataset_numbers(dtype: torch.dtype) -> None:
    pred, gt = _batch(15, 7, 60, 44, True)
    refs = _reference(pred, gt, lambda a: a >= 0.5)
    rows = _score(pred, gt, dtype).image_metrics([r.conn for r in refs])
    assert all(isinstance(r.tp, int) and isinstance(r.mse, float) for r in rows)
    _assert_dataset(rows, refs, dtype)


def test_bench_score_returns_images_per_second() -> None:
    assert bench_score(2, 16, 24, "cpu", repeats=2) > 0
    with pytest.raises(ModnetBatchError, match="positive"):
        bench_score(0, 16, 24)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_the_reference(dtype: torch.dtype) -> None:
    pred, gt = _batch(16, 8, 288, 480, True)
    got = score_batch(
        torch.from_numpy(pred).to("cuda", dtype), torch.from_numpy(gt).to("cuda", dtype),
        foreground=foreground_for(SEED), dtype=dtype,
    )  # fmt: skip
    assert got.mse.device.type == "cuda"
    _assert_matches(got, _reference(pred, gt, SEED.foreground), dtype)


# ---- the real ppm100-dev mattes at the seed protocols' 288x480 (slow) ----


def _quantise(alpha: F64) -> F64:
    """The seed protocols' prediction: uint8(alpha * 255) truncated, / 255."""
    clipped = np.clip(alpha, 0.0, 1.0).astype(np.float32)
    out: F64 = (clipped * np.float32(255)).astype(np.uint8) / 255.0
    return out


@pytest.fixture(scope="module")
def ppm_mattes(shared: Path) -> F64:
    """The 41 ppm100-dev ground truths as seed-area scores them: [41, 480, 288] float64."""
    from modnet_batch.data.decode import decode_matte

    files = sorted((shared / "datasets" / "ppm100-dev" / "matte").glob("*.jpg"))
    assert len(files) == 41
    return np.stack([SEED.ground_truth(decode_matte(f.read_bytes(), name=f.name)) for f in files])


def _check_real(pred: F64, gt: F64) -> None:
    refs = _reference(pred, gt, SEED.foreground)
    conn = [r.conn for r in refs]
    for dtype in DTYPES:
        rows: list[ImageMetrics] = []
        for start in range(0, len(gt), 16):  # batches of 16, as an engine would score
            p, g = pred[start : start + 16], gt[start : start + 16]
            got = _score(p, g, dtype, foreground_for(SEED))
            _assert_matches(got, refs[start : start + 16], dtype, f"{dtype} from {start}")
            rows += got.image_metrics(conn[start : start + 16])
        _assert_dataset(rows, refs, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["noisy", "blurred"])
def test_real_mattes_against_noisy_and_blurred_predictions(ppm_mattes: F64, kind: str) -> None:
    gt = ppm_mattes
    assert gt.shape == (41, 480, 288)
    if kind == "noisy":
        pred = _quantise(gt + np.random.default_rng(0).normal(0.0, 0.05, gt.shape))
    else:
        pred = np.stack([_quantise(cv2.GaussianBlur(g, (0, 0), 3.0)) for g in gt])
    _check_real(pred, gt)


@pytest.mark.slow
def test_real_mattes_against_the_models_predictions(shared: Path, real_model: Path) -> None:
    """The reference MODNet through the onnxruntime engine (images decoded at 1/2: the inputs
    only have to be realistic, not the reference run's), scored by seed-area."""
    from modnet_batch.data.decode import decode_image, decode_matte
    from modnet_batch.engine import EngineSpec, open_session

    session = open_session(EngineSpec(model=str(real_model), threads=2))
    root = shared / "datasets" / "ppm100-dev"
    preds, gts = [], []
    for image in sorted((root / "image").glob("*.jpg")):
        matte = decode_matte((root / "matte" / image.name).read_bytes(), name=image.name)
        rgb = decode_image(image.read_bytes(), name=image.name, reduce=2)
        out = session.run(SEED.preprocess(rgb)[None])[0, 0]
        preds.append(SEED.postprocess(out, *matte.shape).score)
        gts.append(SEED.ground_truth(matte))
    assert len(gts) == 41
    _check_real(np.stack(preds), np.stack(gts))
