"""Tests for modnet_batch.data.decode: formats, bit depths, EXIF orientation, errors."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from modnet_batch.data.decode import DecodeError, decode_image, decode_matte, sniff_format
from modnet_batch.errors import ModnetBatchError

Image = pytest.importorskip("PIL.Image", reason="Pillow writes the EXIF test files")

RNG_SEED = 1234


def _rng() -> np.random.Generator:
    return np.random.default_rng(RNG_SEED)


def _encode(arr: npt.NDArray[np.uint8] | npt.NDArray[np.uint16], ext: str) -> bytes:
    """Encode with OpenCV; 3/4-channel arrays are given as RGB(A) and swapped to BGR(A)."""
    bgr: npt.NDArray[np.integer[Any] | np.floating[Any]] = arr
    if arr.ndim == 3:
        code = cv2.COLOR_RGB2BGR if arr.shape[2] == 3 else cv2.COLOR_RGBA2BGRA
        bgr = cv2.cvtColor(arr, code)
    ok, buf = cv2.imencode(ext, bgr)
    assert ok
    return bytes(buf.tobytes())


def _pil_bytes(arr: npt.NDArray[np.uint8], fmt: str, orientation: int | None) -> bytes:
    """Encode with Pillow, optionally with an EXIF Orientation tag (0x0112)."""
    img = Image.fromarray(arr)
    out = io.BytesIO()
    kwargs: dict[str, object] = {"quality": 95} if fmt == "JPEG" else {}
    if orientation is not None:
        exif = img.getexif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    img.save(out, fmt, **kwargs)
    return out.getvalue()


def test_png_rgb_round_trip_is_exact_and_contiguous() -> None:
    rgb = _rng().integers(0, 256, (31, 45, 3), dtype=np.uint8)
    out = decode_image(_encode(rgb, ".png"), name="a.png")
    assert out.dtype == np.uint8
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("kind", ["bytes", "memoryview", "ndarray"])
def test_accepts_bytes_memoryview_and_uint8_array(kind: str) -> None:
    rgb = _rng().integers(0, 256, (8, 9, 3), dtype=np.uint8)
    raw = _encode(rgb, ".png")
    choices: dict[str, bytes | memoryview | npt.NDArray[np.uint8]] = {
        "bytes": raw,
        "memoryview": memoryview(raw),
        "ndarray": np.frombuffer(raw, np.uint8),
    }
    data = choices[kind]
    np.testing.assert_array_equal(decode_image(data, name="x.png"), rgb)


def test_gray_image_becomes_three_equal_channels() -> None:
    gray = _rng().integers(0, 256, (20, 30), dtype=np.uint8)
    out = decode_image(_encode(gray, ".png"), name="g.png")
    assert out.shape == (20, 30, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_rgba_image_drops_alpha_without_compositing() -> None:
    rgba = _rng().integers(0, 256, (12, 14, 4), dtype=np.uint8)
    out = decode_image(_encode(rgba, ".png"), name="a.png")
    np.testing.assert_array_equal(out, rgba[..., :3])


@pytest.mark.parametrize("shape", [(17, 23), (17, 23, 3)])
def test_16bit_image_is_scaled_with_rounding(shape: tuple[int, ...]) -> None:
    data = _rng().integers(0, 65536, shape, dtype=np.uint16)
    marks = np.array([0, 128, 129, 65535], np.uint16)  # 128/257 rounds down, 129/257 up
    data[0, :4] = marks if data.ndim == 2 else marks[:, None]
    out = decode_image(_encode(data, ".png"), name="d16.png")
    expected = np.round(data / 257.0).astype(np.uint8)
    if expected.ndim == 2:
        expected = np.repeat(expected[..., None], 3, axis=2)
    np.testing.assert_array_equal(out, expected)
    assert out[0, :4, 0].tolist() == [0, 0, 1, 255]


def test_16bit_matte_is_scaled_with_rounding() -> None:
    data = _rng().integers(0, 65536, (19, 21), dtype=np.uint16)
    out = decode_matte(_encode(data, ".png"), name="m16.png")
    np.testing.assert_array_equal(out, np.round(data / 257.0).astype(np.uint8))


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tiff", ".webp"])
def test_colour_matte_with_equal_channels_is_exact_gray(ext: str) -> None:
    gray = _rng().integers(0, 256, (25, 33), dtype=np.uint8)
    if ext == ".webp":
        _, buf = cv2.imencode(ext, np.dstack([gray] * 3), [cv2.IMWRITE_WEBP_QUALITY, 101])
        raw = buf.tobytes()
    else:
        raw = _encode(np.dstack([gray] * 3), ext)
    out = decode_matte(raw, name=f"m{ext}")
    assert out.shape == (25, 33) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, gray)


def test_rgba_matte_uses_the_colour_not_the_alpha_channel() -> None:
    gray = _rng().integers(0, 256, (10, 11), dtype=np.uint8)
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 7)])
    np.testing.assert_array_equal(decode_matte(_encode(rgba, ".png"), name="m.png"), gray)


# EXIF Orientation -> the np.rot90 k that displays the stored pixels upright.
_ORIENTATION_ROT90 = {1: 0, 3: 2, 6: -1, 8: 1}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", sorted(_ORIENTATION_ROT90))
def test_exif_orientation_is_applied_to_images_and_mattes_alike(fmt: str, orientation: int) -> None:
    rgb = _rng().integers(0, 256, (24, 40, 3), dtype=np.uint8)
    rgb[:8, :8] = (255, 0, 0)  # a marker in the stored top-left corner
    gray = rgb[..., 0].copy()
    k = _ORIENTATION_ROT90[orientation]

    # Same pixels with and without the tag: the entropy-coded data is identical, so the
    # decoded pixels must be exactly the rotated untagged decode.
    plain_img = decode_image(_pil_bytes(rgb, fmt, None), name="plain")
    tagged_img = decode_image(_pil_bytes(rgb, fmt, orientation), name="tagged")
    np.testing.assert_array_equal(tagged_img, np.rot90(plain_img, k))

    plain_matte = decode_matte(_pil_bytes(gray, fmt, None), name="plain")
    tagged_matte = decode_matte(_pil_bytes(gray, fmt, orientation), name="tagged")
    np.testing.assert_array_equal(tagged_matte, np.rot90(plain_matte, k))
    # Image and matte of a pair end up with the same (oriented) size.
    assert tagged_img.shape[:2] == tagged_matte.shape


def test_exif_rotate_90_cw_moves_top_left_to_top_right() -> None:
    rgb = np.zeros((30, 50, 3), np.uint8)
    rgb[:6, :6] = (255, 0, 0)
    out = decode_image(_pil_bytes(rgb, "JPEG", 6), name="rot.jpg")
    assert out.shape == (50, 30, 3)
    assert out[:6, -6:, 0].mean() > 200 and out[:6, :6, 0].mean() < 50


@pytest.mark.parametrize("reduce", [1, 2, 4, 8])
@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_reduce_gives_ceil_size_for_every_format(ext: str, reduce: int) -> None:
    rgb = _rng().integers(0, 256, (61, 45, 3), dtype=np.uint8)
    out = decode_image(_encode(rgb, ext), name=f"r{ext}", reduce=reduce)
    assert out.shape == (-(-61 // reduce), -(-45 // reduce), 3)
    assert out.flags.c_contiguous


def test_reduce_of_flat_colour_keeps_the_colour() -> None:
    rgb = np.full((64, 48, 3), (200, 100, 50), np.uint8)
    for ext in (".jpg", ".png"):
        out = decode_image(_encode(rgb, ext), name=f"f{ext}", reduce=4)
        assert np.abs(out.astype(int) - (200, 100, 50)).max() <= 2


def test_reduce_applies_exif_orientation() -> None:
    rgb = _rng().integers(0, 256, (24, 40, 3), dtype=np.uint8)
    assert decode_image(_pil_bytes(rgb, "JPEG", 6), name="r.jpg", reduce=2).shape == (20, 12, 3)


@pytest.mark.parametrize("reduce", [0, 3, 16])
def test_reduce_rejects_other_factors(reduce: int) -> None:
    with pytest.raises(ModnetBatchError, match=r"expected 1, 2, 4 or 8"):
        decode_image(_encode(np.zeros((8, 8, 3), np.uint8), ".png"), name="x", reduce=reduce)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"this is not an image at all", "not a known image format"),
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "corrupt or truncated png"),
    ],
)
@pytest.mark.parametrize("decode", [decode_image, decode_matte])
def test_undecodable_data_raises_decode_error_naming_the_file(
    decode: object, data: bytes, reason: str
) -> None:
    with pytest.raises(DecodeError, match=reason) as info:
        decode(data, name="image/broken-001.jpg")  # type: ignore[operator]
    assert "image/broken-001.jpg" in str(info.value)
    assert info.value.name == "image/broken-001.jpg"
    assert isinstance(info.value, ModnetBatchError)


def test_truncated_jpeg_is_a_decode_error() -> None:
    raw = _encode(_rng().integers(0, 256, (64, 64, 3), dtype=np.uint8), ".jpg")
    with pytest.raises(DecodeError, match=r"truncated jpeg"):
        decode_image(raw[: len(raw) // 2], name="half.jpg")


def test_non_uint8_array_is_rejected() -> None:
    with pytest.raises(DecodeError, match=r"uint8"):
        decode_image(np.zeros(10, np.float32), name="f.bin")


def test_decode_error_survives_pickling() -> None:
    err = pickle.loads(pickle.dumps(DecodeError("a.jpg", "bad")))
    assert isinstance(err, DecodeError)
    assert (err.name, err.reason, str(err)) == ("a.jpg", "bad", "cannot decode a.jpg: bad")


@pytest.mark.parametrize(
    ("ext", "fmt"),
    [(".jpg", "jpeg"), (".png", "png"), (".bmp", "bmp"), (".tiff", "tiff"), (".webp", "webp")],
)
def test_sniff_format(ext: str, fmt: str) -> None:
    raw = _encode(np.zeros((8, 8, 3), np.uint8), ext)
    assert sniff_format(raw) == fmt
    assert sniff_format(memoryview(raw)) == fmt
    assert sniff_format(b"GIF89a...") == "unknown"


def _shared_dir() -> Path:
    shared = os.environ.get("MODNET_SHARED_DIR")
    if not shared:
        pytest.skip("MODNET_SHARED_DIR is not set (the shared datasets directory)")
    return Path(shared)


@pytest.mark.slow
def test_real_ppm100_pair_decodes_to_matching_sizes() -> None:
    root = _shared_dir() / "datasets" / "ppm100-dev"
    image_path = sorted((root / "image").glob("*.jpg"))[0]
    matte_path = root / "matte" / image_path.name
    rgb = decode_image(image_path.read_bytes(), name=image_path.name)
    alpha = decode_matte(matte_path.read_bytes(), name=matte_path.name)
    assert rgb.ndim == 3 and rgb.shape[2] == 3
    assert rgb.shape[:2] == alpha.shape
    assert alpha.min() == 0 and alpha.max() >= 250
    small = decode_image(image_path.read_bytes(), name=image_path.name, reduce=8)
    assert small.shape[:2] == (-(-rgb.shape[0] // 8), -(-rgb.shape[1] // 8))
