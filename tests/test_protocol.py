"""Protocols: shapes, the ref-size rule, thresholds; against the reference CSVs on real images."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from modnet_batch.errors import ModnetBatchError
from modnet_batch.protocol import PROTOCOLS, get_protocol
from modnet_batch.protocol.paper import PaperProtocol
from tests.conftest import sad_tolerance


def test_registry_and_unknown_name() -> None:
    assert set(PROTOCOLS) == {"seed-area", "seed-linear", "paper"}
    with pytest.raises(ModnetBatchError, match="seed-area"):
        get_protocol("nope")


@pytest.mark.parametrize("name", ["seed-area", "seed-linear"])
def test_seed_shapes_and_range(name: str) -> None:
    p = get_protocol(name)
    rgb = np.zeros((1000, 700, 3), np.uint8)
    rgb[:, :, 0] = 255
    x = p.preprocess(rgb)
    assert x.shape == (3, 480, 288) and x.dtype == np.float32
    assert x[0].min() == 1.0 and x[1].max() == -1.0
    out = np.full((480, 288), 0.999, np.float32)
    alpha = p.postprocess(out, 1000, 700)
    assert alpha.stored.dtype == np.uint8 and alpha.stored.shape == (480, 288)
    assert int(alpha.stored[0, 0]) == 254  # 254.745 truncated, as the seed does
    gt = p.ground_truth(np.full((1000, 700), 255, np.uint8))
    assert gt.shape == (480, 288) and gt.max() == 1.0


def test_seed_foreground_threshold_is_128() -> None:
    p = get_protocol("seed-area")
    values = np.arange(256, dtype=np.float64) / 255.0
    fg = p.foreground(values)
    assert not fg[127] and fg[128] and fg.sum() == 128


@pytest.mark.parametrize(
    ("hw", "expected"),
    [
        (
            (1000, 700),
            (704, 512),
        ),  # both > 512: short side -> 512, long = int(1000/700*512) = 731 -> 704
        ((300, 400), (512, 672)),  # both < 512: short side -> 512, long = 682 -> 672
        ((400, 800), (384, 800)),  # straddles 512: kept, floored to multiples of 32
        ((512, 512), (512, 512)),
    ],
)
def test_paper_ref_size_rule(hw: tuple[int, int], expected: tuple[int, int]) -> None:
    assert PaperProtocol(name="paper").network_size(*hw) == expected


def test_paper_scores_at_full_resolution_without_uint8_step() -> None:
    p = get_protocol("paper")
    out = np.full((704, 512), 0.4999, np.float32)
    alpha = p.postprocess(out, 1000, 700)
    assert alpha.score.shape == (1000, 700)
    assert np.allclose(alpha.score, 0.4999, atol=1e-6)  # not quantised to 127/255
    assert not p.foreground(alpha.score).any()
    assert p.preprocess(np.zeros((1000, 700, 3), np.uint8)).shape == (3, 704, 512)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["seed-area", "seed-linear", "paper"])
def test_reference_per_image_values(name: str, shared: Path, real_model: Path) -> None:
    """Three real images through each protocol match the independent implementation (MSE to
    1e-6, MAD to 1e-5, SAD within the CPU-kernel allowance of tests/conftest.py)."""
    from modnet_batch.engine import EngineSpec, open_session
    from modnet_batch.metrics import image_metrics

    session = open_session(EngineSpec(model=str(real_model), threads=2))
    p = get_protocol(name)
    ref_csv = shared / "reference" / f"ppm100-dev.{name}.per-image.csv"
    rows = list(csv.DictReader(ref_csv.open()))[:3]
    root = shared / "datasets" / "ppm100-dev"
    for row in rows:
        rgb = cv2.cvtColor(
            cv2.imread(str(root / "image" / f"{row['image_id']}.jpg")), cv2.COLOR_BGR2RGB
        )
        matte = cv2.imread(str(root / "matte" / f"{row['image_id']}.jpg"), cv2.IMREAD_GRAYSCALE)
        out = session.run(p.preprocess(rgb)[None])[0, 0]
        alpha = p.postprocess(out, rgb.shape[0], rgb.shape[1])
        gt = p.ground_truth(matte)
        m = image_metrics(alpha.score, gt, p.foreground(alpha.score), p.foreground(gt))
        # the reference CPU's float kernels differ from this one's: tests/conftest.py
        assert m.mse == pytest.approx(float(row["mse"]), abs=1e-6)
        assert m.mad == pytest.approx(float(row["mad"]), abs=1e-5)
        tol = sad_tolerance(name, float(row["sad"]), alpha.score.size)
        assert m.sad == pytest.approx(float(row["sad"]), abs=tol)


def _paper_by_arithmetic(
    rgb: np.ndarray, out: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MODNet's float32 steps written out: normalise, INTER_AREA down; the output INTER_AREA
    back up, float64, rounded to 8 bits."""
    p = get_protocol("paper")
    h, w = p.network_size(*rgb.shape[:2])
    x = (rgb.astype(np.float32) - np.float32(127.5)) / np.float32(127.5)
    small = cv2.resize(x, (w, h), interpolation=cv2.INTER_AREA).transpose(2, 0, 1)
    full = cv2.resize(out, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_AREA)
    score = full.astype(np.float64)
    return small, score, np.clip(np.rint(score * 255.0), 0, 255).astype(np.uint8)


def _assert_paper_bit_identical(rgb: np.ndarray, rng: np.random.Generator) -> None:
    p = get_protocol("paper")
    x = p.preprocess(rgb)
    out = rng.random(x.shape[1:], dtype=np.float32)
    out[0, 0] = 0.5  # the one float32 whose x 255 is a tie (127.5 rounds to 128)
    small, score, stored = _paper_by_arithmetic(rgb, out)
    assert x.dtype == np.float32 and x.flags.c_contiguous
    assert np.array_equal(x, small)  # bit for bit: the table holds the same float32 values
    alpha = p.postprocess(out, *rgb.shape[:2])
    assert np.array_equal(alpha.stored, stored) and alpha.stored.dtype == np.uint8
    assert alpha.score.dtype == np.float64 and np.array_equal(alpha.score, score)


@pytest.mark.parametrize("hw", [(1, 1), (7, 3), (31, 33), (513, 1025), (1001, 667), (2000, 3001)])
def test_paper_steps_are_bit_identical_to_the_arithmetic_on_odd_sizes(hw: tuple[int, int]) -> None:
    rng = np.random.default_rng(hw[0] * 10_000 + hw[1])
    _assert_paper_bit_identical(rng.integers(0, 256, (*hw, 3), dtype=np.uint8), rng)


def test_paper_preprocess_is_thread_safe_and_does_not_keep_the_previous_photo() -> None:
    from concurrent.futures import ThreadPoolExecutor

    p = get_protocol("paper")
    rng = np.random.default_rng(7)
    photos = [rng.integers(0, 256, (600 + 37 * i, 500 - 29 * i, 3), np.uint8) for i in range(6)]
    expected = [_paper_by_arithmetic(rgb, np.zeros((1, 1), np.float32))[0] for rgb in photos]
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(p.preprocess, photos * 3))
    assert all(np.array_equal(g, e) for g, e in zip(got, expected * 3, strict=True))


def test_rounding_to_8_bits_is_the_float64_rule_near_every_half_level() -> None:
    from modnet_batch.protocol.base import rounded_uint8

    halves = ((np.arange(256, dtype=np.float64) + 0.5) / 255.0).astype(np.float32)
    near = [np.nextafter(halves, np.float32(d)) for d in (-1, 2)]
    values = np.concatenate([halves, *near, np.linspace(-0.1, 1.1, 200_001, dtype=np.float32)])
    grid = values[: values.size // 7 * 7].reshape(-1, 7)  # a band covers several rows
    expected = np.clip(np.rint(grid.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    assert np.array_equal(rounded_uint8(grid), expected)


@pytest.mark.parametrize("folder", ["ppm100-dev", "p3m10k-sample"])
def test_paper_steps_are_bit_identical_on_real_photos(shared: Path, folder: str) -> None:
    from modnet_batch.data.decode import decode_image

    rng = np.random.default_rng(3)
    for path in sorted((shared / "datasets" / folder / "image").iterdir())[:2]:
        _assert_paper_bit_identical(decode_image(path.read_bytes(), name=path.name), rng)
