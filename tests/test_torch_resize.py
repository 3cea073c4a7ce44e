"""The device resize (engine/torch/resize.py, tables in protocol/resize_tables.py) against
cv2.resize, on odd sizes and on real ppm100-dev photos, for uint8 and float32 as the pipeline
uses them (torch on the CPU here; the same ops run on CUDA).

Tolerances, measured (OpenCV 5.0.0 wheel, AVX-512 host):
- uint8: never more than 1 level. INTER_AREA differs at float rounding ties only (share <= 1e-3;
  0 on most photos); INTER_LINEAR differs on 0 to 0.8% of a photo's pixels, and on a few % when
  upscaling images of a few pixels (OpenCV's kernels for narrow rows).
- float32: INTER_AREA within 2.5e-7 (summation order; 3.6e-7 on normalised photos), the 2-tap
  paths within 2.5e-5 (1-row sources at large factors; 2.5e-7 on photos).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from modnet_batch.protocol import get_protocol
from modnet_batch.protocol.resize_tables import plan, resize_reference

torch = pytest.importorskip("torch", reason="the device resize is torch (make install has it)")
from modnet_batch.engine.torch.resize import resize  # noqa: E402

INTERPS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}
SOURCES = [(1, 1), (1, 7), (7, 1), (1, 480), (480, 1), (2, 2), (3, 3), (13, 17), (31, 29)]
SOURCES += [(97, 101), (101, 97), (480, 288), (960, 576), (1009, 701)]
TARGETS = [(1, 1), (2, 2), (5, 3), (13, 17), (1, 9), (9, 1), (480, 288), (288, 480), (960, 576)]
FLOAT_TOL = {"area": 2.5e-7, "linear": 2.5e-5}
UINT8_SHARE = {"area": 1e-3, "linear": 0.35}  # of pixels one level off (see the docstring)


def _torch_resize(img: npt.NDArray[np.generic], hw: tuple[int, int], interp: int) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)  # HWC -> CHW
    return resize(x, hw, interp).permute(1, 2, 0).numpy()


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    assert a.shape == b.shape and a.dtype == b.dtype
    return np.abs(a.astype(np.float64) - b.astype(np.float64))


@pytest.mark.parametrize("kind", ["area", "linear"])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_odd_sizes_match_opencv(kind: str, dtype: str) -> None:
    rng = np.random.default_rng(7)
    interp = INTERPS[kind]
    worst, off, total = 0.0, 0, 0
    for src in SOURCES:
        for dst in TARGETS:
            if dtype == "uint8":
                img = rng.integers(0, 256, (*src, 3), dtype=np.uint8)
            else:
                img = rng.uniform(-1, 1, (*src, 3)).astype(np.float32)
            ref = np.asarray(cv2.resize(img, (dst[1], dst[0]), interpolation=interp))
            for got in (_torch_resize(img, dst, interp), resize_reference(img, dst, interp)):
                d = _diff(got, ref)
                worst = max(worst, float(d.max()))
                off += int((d > 0).sum())
                total += d.size
    if dtype == "uint8":
        assert worst <= 1.0
        assert off / total <= UINT8_SHARE[kind], off / total
    else:
        assert worst <= FLOAT_TOL[kind], worst


def test_same_size_is_a_copy_and_2d_inputs_work() -> None:
    img = np.arange(35, dtype=np.uint8).reshape(5, 7)
    x = torch.from_numpy(img)
    out = resize(x, (5, 7), cv2.INTER_AREA)
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()
    small = resize(x, (2, 3), cv2.INTER_AREA).numpy()
    assert _diff(small, cv2.resize(img, (3, 2), interpolation=cv2.INTER_AREA)).max() <= 1


def test_opencv_behaviour_the_tables_follow() -> None:
    # INTER_AREA upscaling on either axis is OpenCV's 2-tap emulation, on both axes
    ay, ax = plan((100, 100), (200, 50), cv2.INTER_AREA)
    assert (ay.kind, ax.kind, ay.area_mode) == ("linear", "linear", True)
    # an exact 2x downscale with INTER_LINEAR is OpenCV's fast area path (rounded half up)
    ay, _ = plan((960, 576), (480, 288), cv2.INTER_LINEAR)
    assert (ay.kind, ay.half_up) == ("area", True)
    with pytest.raises(ValueError, match="sizes must be >= 1"):
        plan((0, 5), (3, 3), cv2.INTER_AREA)


def _photos(shared: Path, n: int) -> list[npt.NDArray[np.uint8]]:
    from modnet_batch.data.decode import decode_image

    folder = shared / "datasets" / "ppm100-dev" / "image"
    paths = sorted(folder.iterdir())[:: max(1, 41 // n)][:n]
    return [decode_image(p.read_bytes(), name=p.name) for p in paths]


def test_real_photos_as_the_protocols_resize_them(shared: Path) -> None:
    """seed-area / seed-linear inputs (uint8 to 480x288), paper's input (normalised float32 to
    its network size) and a 480x288 float output back to the photo's size (INTER_AREA up)."""
    rng = np.random.default_rng(3)
    paper = get_protocol("paper")
    figures: dict[str, list[float]] = {}
    for rgb in _photos(shared, 4):
        h, w = rgb.shape[:2]
        cases: list[tuple[str, np.ndarray, tuple[int, int], int]] = [
            ("seed-area", rgb, (480, 288), cv2.INTER_AREA),
            ("seed-linear", rgb, (480, 288), cv2.INTER_LINEAR),
        ]
        x = (rgb.astype(np.float32) - np.float32(127.5)) / np.float32(127.5)
        cases.append(("paper-input", x, paper.network_size(h, w), cv2.INTER_AREA))
        out = rng.uniform(0, 1, (480, 288, 1)).astype(np.float32)
        cases.append(("output-back", out, (h, w), cv2.INTER_AREA))
        for name, img, hw, interp in cases:
            ref = np.asarray(cv2.resize(img, (hw[1], hw[0]), interpolation=interp))
            got = _torch_resize(img, hw, interp)
            d = _diff(got, ref.reshape(got.shape))
            figures.setdefault(name, []).extend([float(d.max()), float((d > 0).mean())])
    assert max(figures["seed-area"][0::2]) <= 1 and max(figures["seed-area"][1::2]) <= 1e-3
    # measured: 0 on two of the four photos, 4.3e-5 and 8.1e-3 of the pixels on the others
    assert max(figures["seed-linear"][0::2]) <= 1 and max(figures["seed-linear"][1::2]) <= 0.01
    assert max(figures["paper-input"][0::2]) <= 5e-7  # measured 1.8e-7 to 3.6e-7 (sums of ~100)
    assert max(figures["output-back"][0::2]) <= 2.5e-7


def test_area_upscales_take_opencvs_float_rounded_fractions() -> None:
    """INTER_AREA enlarging: OpenCV rounds each tap's fraction to float32 before testing it
    for <= 0, so a fraction just below a whole number is 0, not ~1 (computed in double it read
    the next source row: 44 -> 50 row 25, 300 -> 672 row 504, 0.96 off). Every enlargement of
    sources up to 64 pixels (to 1.1x..8x) and the photo sizes the paper enlarges are checked."""
    rng = np.random.default_rng(3)
    pairs = [(s, d) for s in range(2, 65) for d in range(s + 1, 8 * s + 1, max(1, s // 7))]
    pairs += [(44, 50), (300, 672), (220, 512), (383, 512), (479, 480)]
    for src, dst in pairs:
        img = rng.uniform(0, 1, (src, 2, 3)).astype(np.float32)
        ref = np.asarray(cv2.resize(img, (2, dst), interpolation=cv2.INTER_AREA))
        got = _torch_resize(img, (dst, 2), cv2.INTER_AREA)
        assert float(_diff(got, ref).max()) <= 2.5e-6, (src, dst)
        wide = np.ascontiguousarray(img.transpose(1, 0, 2))  # the same along the other axis
        ref = np.asarray(cv2.resize(wide, (dst, 2), interpolation=cv2.INTER_AREA))
        assert float(_diff(_torch_resize(wide, (2, dst), cv2.INTER_AREA), ref).max()) <= 2.5e-6
