"""Decode encoded image and matte files to uint8 arrays, with EXIF orientation applied.

Pure OpenCV/NumPy; the bytes are wrapped, never copied, before OpenCV reads them.
"""

from __future__ import annotations

import math
import os
import re

import cv2
import numpy as np
import numpy.typing as npt

from modnet_batch.errors import ModnetBatchError

# The file name extensions of the image formats read (any case).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

# Leading bytes of each format we accept; OpenCV decides the rest, this only names the format.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)

# cv2.IMREAD_REDUCED_* bits: libjpeg scales by 1/2, 1/4, 1/8 inside the DCT, far cheaper than
# decoding at full size and resizing.
_REDUCE_FLAGS = {1: 0, 2: 16, 4: 32, 8: 64}

# Neither IMREAD_UNCHANGED nor IMREAD_IGNORE_ORIENTATION: with these flags OpenCV applies the EXIF
# Orientation tag (JPEG, PNG eXIf, WebP, TIFF); IMREAD_ANYDEPTH keeps 16-bit samples so that we
# round them ourselves (OpenCV would truncate with >> 8).
_IMAGE_FLAGS = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_ANYDEPTH
_MATTE_FLAGS = cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH

EncodedBytes = bytes | memoryview | npt.NDArray[np.uint8]

# OpenCV refuses to decode images with more pixels than this (its own guard against
# decompression bombs); the environment variable is OpenCV's, read when cv2 loads.
MAX_PIXELS = int(os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", 1 << 30))


class DecodeError(ModnetBatchError):
    """An encoded file that cannot be decoded; `name` is the file, `reason` says why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"cannot decode {name}: {reason}")
        self.name = name
        self.reason = reason

    def __reduce__(self) -> tuple[type[DecodeError], tuple[str, str]]:
        # Exceptions pickle their message only; Ray sends errors between processes.
        return (DecodeError, (self.name, self.reason))


def sniff_format(data: EncodedBytes) -> str:
    """The file format from its leading bytes: jpeg, png, bmp, webp, tiff, or "unknown"."""
    head = bytes(data.reshape(-1)[:12] if isinstance(data, np.ndarray) else memoryview(data)[:12])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    return "unknown"


def _as_buffer(data: EncodedBytes, name: str) -> npt.NDArray[np.uint8]:
    """A 1-D uint8 view of the encoded bytes (no copy)."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise DecodeError(name, f"expected encoded bytes as a uint8 array, got {data.dtype}")
        buf = data.reshape(-1)
    else:
        buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size == 0:
        raise DecodeError(name, "the file is empty")
    return buf


def opencv_reason(exc: cv2.error) -> str:
    """OpenCV's error as a sentence: its assertion, without the source path and version."""
    text = str(exc).strip()
    found = re.search(r"error: \(-?\d+:([^)]*)\) (.*?)(?: in function '([^']*)')?$", text, re.S)
    if not found:
        return text.splitlines()[0] if text else type(exc).__name__
    kind, what, where = found.groups()
    return f"{what.strip()} ({kind.strip().lower()}{f' in {where}' if where else ''})"


def _imdecode(buf: npt.NDArray[np.uint8], flags: int, name: str) -> npt.NDArray[np.generic]:
    try:
        out = cv2.imdecode(buf, flags)
    except cv2.error as exc:
        if "CV_IO_MAX_IMAGE_PIXELS" in str(exc):
            raise DecodeError(
                name,
                f"its header declares more than {MAX_PIXELS:,} pixels, the most the decoder "
                "accepts (a decompression bomb, or an image too large to matte): shrink it",
            ) from None
        raise DecodeError(name, f"the decoder failed: {opencv_reason(exc)}") from None
    if out is None:
        fmt = sniff_format(buf)
        what = "not a known image format" if fmt == "unknown" else f"corrupt or truncated {fmt}"
        raise DecodeError(name, f"{what} ({buf.size} bytes); re-export or replace the file")
    return np.asarray(out)


def _to_uint8(arr: npt.NDArray[np.generic], name: str) -> npt.NDArray[np.uint8]:
    """8-bit stays, 16-bit is scaled by 1/257 with rounding (65535 -> 255), anything else fails."""
    if arr.dtype == np.uint8:
        return arr.astype(np.uint8, copy=False)
    if arr.dtype == np.uint16:
        # (x + 128) // 257 == round(x / 257) exactly: 257 is odd, so there are no ties.
        return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    raise DecodeError(
        name, f"unsupported sample type {arr.dtype}; convert the file to 8- or 16-bit integer"
    )


def _decode(data: EncodedBytes, name: str, reduce: int, base_flags: int) -> npt.NDArray[np.uint8]:
    """Shared body of decode_image/decode_matte: decode, 8-bit, optional 1/reduce downscale."""
    if reduce not in _REDUCE_FLAGS:
        raise ModnetBatchError(f"reduce={reduce} for {name}: expected 1, 2, 4 or 8")
    buf = _as_buffer(data, name)
    is_jpeg = sniff_format(buf) == "jpeg"
    flags = base_flags | (_REDUCE_FLAGS[reduce] if is_jpeg else 0)
    pixels = _to_uint8(_imdecode(buf, flags, name), name)
    if reduce > 1 and not is_jpeg:
        # OpenCV's own fallback floors the size and uses a non-antialiased linear filter;
        # INTER_AREA to the ceil size matches what libjpeg gives for JPEG.
        h, w = pixels.shape[:2]
        size = (math.ceil(w / reduce), math.ceil(h / reduce))
        pixels = np.asarray(cv2.resize(pixels, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
    return np.ascontiguousarray(pixels)


def decode_image(data: EncodedBytes, *, name: str, reduce: int = 1) -> npt.NDArray[np.uint8]:
    """Encoded image file -> HxWx3 uint8 RGB, C-contiguous, EXIF orientation applied.

    Grayscale becomes 3 equal channels, alpha is dropped (not composited), 16-bit is scaled to
    8-bit with rounding. `reduce` (1, 2, 4 or 8) divides each side, giving ceil(H/r) x ceil(W/r)
    for every format: JPEG scales inside libjpeg (fast), other formats decode at full size and
    are area-averaged. `name` only labels errors. Raises DecodeError.
    """
    return _decode(data, name, reduce, _IMAGE_FLAGS)


def decode_matte(data: EncodedBytes, *, name: str, reduce: int = 1) -> npt.NDArray[np.uint8]:
    """Encoded matte file -> HxW uint8 alpha (0..255), EXIF orientation applied like images.

    Colour mattes are converted to gray (equal channels stay exact), alpha channels are
    dropped, 16-bit is scaled to 8-bit with rounding. `reduce` divides each side as in
    decode_image (JPEG inside libjpeg, other formats area-averaged). Raises DecodeError.
    """
    return _decode(data, name, reduce, _MATTE_FLAGS)
