"""Which encoded images a device's JPEG decoder can take (`--decoding device`), from the
header alone: baseline or extended-sequential Huffman JPEGs with 1 or 3 (YCbCr) components and
no EXIF rotation. Everything else (progressive, lossless or arithmetic-coded JPEGs, CMYK,
RGB-coded Adobe JPEGs, photos whose EXIF Orientation tag asks for a rotation or flip, which the
CPU decode applies, other formats) falls back to the exact CPU decode, and the reason is what a
job counts.

Pure bytes parsing: no decode, no torch.
"""

from __future__ import annotations

from collections.abc import Iterator

from modnet_batch.data.decode import EncodedBytes, sniff_format

# Start-of-frame markers (ITU T.81 table B.1) and what they mean for a device decoder.
_SOF_SEQUENTIAL = {0xC0, 0xC1}  # baseline, extended sequential (Huffman)
_SOF_OTHER = {
    0xC2: "progressive JPEG",
    0xC3: "lossless JPEG",
    0xC5: "differential JPEG",
    0xC6: "progressive differential JPEG",
    0xC7: "lossless differential JPEG",
    0xC9: "arithmetic-coded JPEG",
    0xCA: "progressive arithmetic-coded JPEG",
    0xCB: "lossless arithmetic-coded JPEG",
    0xCD: "differential arithmetic-coded JPEG",
    0xCE: "progressive differential arithmetic-coded JPEG",
    0xCF: "lossless differential arithmetic-coded JPEG",
}
_NO_LENGTH = {0x01, *range(0xD0, 0xD8)}  # TEM, RSTn: markers without a length field


def device_fallback_reason(data: EncodedBytes) -> str | None:
    """None when a hardware JPEG decoder can decode `data`; else why it goes to the CPU."""
    buf = bytes(data.reshape(-1)) if hasattr(data, "reshape") else bytes(data)
    fmt = sniff_format(buf)
    if fmt != "jpeg":
        return f"{fmt} image" if fmt != "unknown" else "not a JPEG"
    adobe_transform = None
    for marker, i, length in _segments(buf):
        if marker == _CORRUPT:
            return "corrupt JPEG header"
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            return "JPEG without a frame header"
        if marker == 0xE1 and _exif_orientation(buf[i + 4 : i + 2 + length]) not in (None, 1):
            return "EXIF-rotated JPEG"
        if marker == 0xEE and buf[i + 4 : i + 9] == b"Adobe" and length >= 14:
            adobe_transform = buf[i + 15]  # APP14: 0 = no colour transform (RGB samples)
        if marker in _SOF_OTHER:
            return _SOF_OTHER[marker]
        if marker in _SOF_SEQUENTIAL:
            return _sequential_frame_reason(buf, i, adobe_transform)
    return "truncated JPEG header"


_CORRUPT = -1  # what _segments yields where a marker should start and does not


def _segments(buf: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, offset, length field) of each header segment in order, skipping fill bytes and
    markers without a length; (_CORRUPT, offset, 0) where a marker should start and does not.
    Ends where the header is truncated."""
    i = 2
    while i + 4 <= len(buf):
        if buf[i] != 0xFF:
            yield _CORRUPT, i, 0
            return
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _NO_LENGTH:
            i += 2
        else:
            length = int.from_bytes(buf[i + 2 : i + 4], "big")
            yield marker, i, length
            i += 2 + length


def _sequential_frame_reason(buf: bytes, i: int, adobe_transform: int | None) -> str | None:
    """None when the sequential frame header at `i` is one a device decoder takes."""
    if i + 10 > len(buf):
        return "truncated JPEG header"
    components = buf[i + 9]
    if components not in (1, 3):
        return f"JPEG with {components} components (CMYK or other)"
    if components == 3 and adobe_transform == 0:
        return "RGB-coded JPEG (Adobe, no YCbCr)"
    return None


def _exif_orientation(segment: bytes) -> int | None:
    """The Orientation tag (0x0112) of IFD0 in an APP1 segment's payload, if it is Exif."""
    if not segment.startswith(b"Exif\x00\x00") or len(segment) < 14:
        return None
    tiff = segment[6:]
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None:
        return None
    big = order == "big"

    def num(at: int, size: int) -> int | None:
        if at < 0 or at + size > len(tiff):
            return None
        return int.from_bytes(tiff[at : at + size], "big" if big else "little")

    ifd = num(4, 4)
    count = None if ifd is None else num(ifd, 2)
    if ifd is None or count is None:
        return None
    for k in range(count):
        entry = ifd + 2 + 12 * k
        if num(entry, 2) == 0x0112:
            return num(entry + 8, 2)  # type SHORT, count 1: the value's first two bytes
    return None
