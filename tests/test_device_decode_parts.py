"""Parts of the device decode: which images a hardware JPEG decoder takes (the rest fall back
to the CPU decode, with a reason) and groups sized by pixels (PixelBudget)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from modnet_batch.data.jpeg_header import device_fallback_reason
from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution.pixel_batches import PixelBudget


def pixel_batches(
    sizes: Iterable[tuple[int, int]], budget_pixels: int, max_images: int
) -> Iterator[list[int]]:
    """Indices of `sizes` cut into consecutive groups as the unit loop's device groups cut
    photos (execution/device_prepare.py): a PixelBudget per group."""
    budget = PixelBudget(budget_pixels, max_images)
    batch: list[int] = []
    for i, (h, w) in enumerate(sizes):
        if budget.full_for(h * w):
            yield batch
            batch = []
            budget.clear()
        batch.append(i)
        budget.add(h * w)
    if batch:
        yield batch


def _encode(ext: str, img: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, img, params or [])
    assert ok
    return buf.tobytes()


def test_baseline_jpegs_go_to_the_device_others_fall_back_with_a_reason() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    assert device_fallback_reason(_encode(".jpg", img)) is None
    assert device_fallback_reason(_encode(".jpg", img[..., 0])) is None  # grayscale
    progressive = _encode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert device_fallback_reason(progressive) == "progressive JPEG"
    assert device_fallback_reason(_encode(".png", img)) == "png image"
    assert device_fallback_reason(b"not an image at all") == "not a JPEG"
    assert device_fallback_reason(_encode(".jpg", img)[:6]) == "truncated JPEG header"
    # a memoryview or a uint8 array (how records and Parquet rows hold bytes) reads the same
    data = _encode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert device_fallback_reason(memoryview(data)) == "progressive JPEG"
    assert device_fallback_reason(np.frombuffer(data, np.uint8)) == "progressive JPEG"


def test_real_photos_are_baseline(shared: Path) -> None:
    from PIL import Image

    folder = shared / "datasets" / "ppm100-dev" / "image"
    paths = sorted(folder.iterdir())
    reasons = {p.name: device_fallback_reason(p.read_bytes()) for p in paths}
    # measured: all 41 ppm100-dev photos are baseline JPEGs (none would fall back)
    assert len(reasons) == 41 and all(r is None for r in reasons.values()), reasons
    for p in paths:  # Pillow's own reading of the frame type agrees
        with Image.open(p) as img:
            assert img.format == "JPEG" and not img.info.get("progressive"), p.name


def test_batches_are_cut_by_pixels_and_count() -> None:
    mp24, mp8, small = (4000, 6000), (2400, 3500), (480, 288)
    sizes = [mp24, mp24, mp24, mp8, mp8, small, small, small]
    batches = list(pixel_batches(sizes, budget_pixels=50_000_000, max_images=4))
    assert batches == [[0, 1], [2, 3, 4, 5], [6, 7]]  # 48 MP; 41 MP and the 4-image cap
    for b in batches:  # every batch within the budget, or a single image
        assert len(b) == 1 or sum(sizes[i][0] * sizes[i][1] for i in b) <= 50_000_000
    assert list(pixel_batches([(9000, 9000), small], 10_000_000, 8)) == [[0], [1]]
    assert list(pixel_batches([small] * 5, 10**9, 2)) == [[0, 1], [2, 3], [4]]
    with pytest.raises(ModnetBatchError, match="budget >= 1 pixel"):
        list(pixel_batches(sizes, 0, 4))


def test_exif_orientation_decides_the_fallback() -> None:
    """The CPU decode applies EXIF orientation; a device decoder does not, so a photo whose tag
    asks for a rotation or a flip falls back (an upright tag, or none, does not)."""
    import struct

    img = np.random.default_rng(1).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    jpeg = _encode(".jpg", img)

    def with_exif(orientation: int, order: str) -> bytes:
        e = "<" if order == "II" else ">"
        entry = struct.pack(f"{e}HHIHH", 0x0112, 3, 1, orientation, 0)
        tiff = order.encode() + struct.pack(f"{e}HIH", 42, 8, 1) + entry + b"\x00" * 4
        payload = b"Exif\x00\x00" + tiff
        return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]

    for order in ("II", "MM"):
        assert device_fallback_reason(with_exif(1, order)) is None
        for orientation in (2, 3, 6, 8):
            rotated = with_exif(orientation, order)
            assert device_fallback_reason(rotated) == "EXIF-rotated JPEG"
            h, w = cv2.imdecode(np.frombuffer(rotated, np.uint8), cv2.IMREAD_COLOR).shape[:2]
            # what the CPU decode makes of it: turned for 6 and 8 (so, not the header's size)
            assert (h, w) == ((30, 40) if orientation in (6, 8) else (40, 30))


def test_rgb_coded_adobe_jpegs_fall_back() -> None:
    """An Adobe APP14 segment with transform 0 marks 3-component samples as RGB, not YCbCr:
    the CPU decoder honours it, a GPU decoder may not, so such a JPEG falls back."""
    import struct

    img = np.random.default_rng(2).integers(0, 256, (24, 16, 3), dtype=np.uint8)
    jpeg = _encode(".jpg", img)

    def with_adobe(transform: int) -> bytes:
        payload = b"Adobe" + struct.pack(">HHHB", 100, 0, 0, transform)
        return jpeg[:2] + b"\xff\xee" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]

    assert device_fallback_reason(with_adobe(0)) == "RGB-coded JPEG (Adobe, no YCbCr)"
    assert device_fallback_reason(with_adobe(1)) is None  # YCbCr, as usual
    gray = _encode(".jpg", img[..., 0])
    payload = b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 0)
    adobe_gray = gray[:2] + b"\xff\xee" + struct.pack(">H", len(payload) + 2) + payload + gray[2:]
    assert device_fallback_reason(adobe_gray) is None  # one component: no colour to get wrong
