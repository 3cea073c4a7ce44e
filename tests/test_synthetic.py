"""Tests for modnet_batch.data.synthetic: determinism, exact alpha, files that ingest accepts."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from modnet_batch.data.dataset import Dataset
from modnet_batch.data.ingest import ingest
from modnet_batch.data.synthetic import make_synthetic, synthetic_sample
from modnet_batch.errors import ModnetBatchError

H, W = 160, 120  # small, to keep the tests fast


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.*"))}


def test_layout_and_determinism(tmp_path: Path) -> None:
    one = make_synthetic(tmp_path / "one", n=3, height=H, width=W, seed=7)
    two = make_synthetic(tmp_path / "two", n=3, height=H, width=W, seed=7)
    assert one == tmp_path / "one"
    files = _files(one)
    assert sorted(files) == [
        "image/synth-000.jpg",
        "image/synth-001.jpg",
        "image/synth-002.jpg",
        "matte/synth-000.png",
        "matte/synth-001.png",
        "matte/synth-002.png",
    ]
    assert files == _files(two)
    other = _files(make_synthetic(tmp_path / "other", n=3, height=H, width=W, seed=8))
    assert all(files[k] != other[k] for k in files)
    assert files["image/synth-000.jpg"] != files["image/synth-001.jpg"]


def test_a_sample_does_not_depend_on_the_set_size(tmp_path: Path) -> None:
    small = _files(make_synthetic(tmp_path / "a", n=1, height=H, width=W))
    large = _files(make_synthetic(tmp_path / "b", n=2, height=H, width=W))
    assert small["image/synth-000.jpg"] == large["image/synth-000.jpg"]


def test_image_is_the_composite_of_the_stored_alpha() -> None:
    s = synthetic_sample(0, height=H, width=W, seed=3)
    assert s.image.shape == (H, W, 3) and s.image.dtype == np.uint8
    assert s.alpha.shape == (H, W) and s.alpha.dtype == np.uint8
    a = (s.alpha.astype(np.float32) / 255.0)[..., None]
    expected = np.round((a * s.foreground + (1 - a) * s.background) * 255.0)
    np.testing.assert_array_equal(s.image, expected.astype(np.uint8))
    assert s.foreground.min() >= 0.0 and s.foreground.max() <= 1.0
    assert s.background.min() >= 0.0 and s.background.max() <= 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alpha_has_background_foreground_and_partial_values(seed: int) -> None:
    alpha = synthetic_sample(seed, seed=seed).alpha.astype(int)  # default 640x480
    assert alpha.min() == 0 and alpha.max() == 255
    partial = (alpha > 0) & (alpha < 255)
    assert 0.01 < partial.mean() < 0.3
    assert len(np.unique(alpha[partial])) > 100  # soft edges and translucent strands
    # Strands: partial alpha in the top third, where only hair (no body) reaches so far out.
    assert partial[: 640 // 3].sum() > 2000
    assert (alpha[-1] == 255).any() and (alpha[0, 0] == 0 or alpha[0, -1] == 0)


def test_written_files_match_the_sample(tmp_path: Path) -> None:
    root = make_synthetic(tmp_path / "s", n=1, height=H, width=W, seed=5)
    sample = synthetic_sample(0, height=H, width=W, seed=5)
    matte = cv2.imread(str(root / "matte" / "synth-000.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(matte, sample.alpha)  # the PNG is exact
    bgr = cv2.imread(str(root / "image" / "synth-000.jpg"))
    assert bgr is not None
    image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    mse = np.mean((image.astype(float) - sample.image) ** 2)
    assert 10 * np.log10(255**2 / mse) > 31.0  # JPEG quality 95 of a grainy image: ~33 dB


def test_ingest_accepts_the_output(tmp_path: Path) -> None:
    make_synthetic(tmp_path / "s", n=3, height=H, width=W)
    report = ingest(tmp_path / "s", tmp_path / "ds")
    assert (report.images, report.with_matte, report.skipped) == (3, 3, [])
    (record, *_) = Dataset.open(tmp_path / "ds").records()
    assert (record.image_id, record.width, record.height) == ("synth-000", W, H)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ModnetBatchError, match=r"n=0"):
        make_synthetic(tmp_path / "a", n=0)
    with pytest.raises(ModnetBatchError, match=r"20x640"):
        make_synthetic(tmp_path / "a", width=20)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ModnetBatchError, match=r"choose a new directory"):
        make_synthetic(tmp_path / "full", n=1)
