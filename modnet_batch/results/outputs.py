"""What a job writes per image besides its metrics: the alpha as 8- or 16-bit PNG or npz, an RGBA
cutout, a foreground composited on a colour, or nothing; at the source's size or the scoring size.

Encoding only: the pixels come from the pipeline (modnet_batch.pipeline), the paths from RunDir.
The metrics never depend on these choices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

import cv2
import numpy as np
import numpy.typing as npt

from modnet_batch.errors import ModnetBatchError


class OutputKind(StrEnum):
    ALPHA_PNG = "alpha-png"  # 8-bit gray PNG
    ALPHA_PNG16 = "alpha-png16"  # 16-bit gray PNG
    NPZ = "npz"  # alpha/<id>.npz, key `alpha`, uint8 (the run directory's evaluation artefact)
    CUTOUT = "cutout"  # RGBA PNG: the photo's colours, the matte as alpha (not premultiplied)
    COMPOSITE = "composite"  # the foreground over `background`, a JPEG
    NONE = "none"


class OutputSize(StrEnum):
    SOURCE = "source"  # the original width x height (after EXIF orientation)
    SCORED = "scored"  # the protocol's scoring size (480x288 for the seed protocols)


# Measured on the 41 ppm100-dev source-size alphas from the real model (median 8.3 MP, one
# core, make bench-matte): level 1 57 ms / 141 KiB, 5 69 ms / 88 KiB, 9 270 ms / 85 KiB. Level
# 5 adds ~12 ms to an image that costs ~1.2 s of a core end to end, for 38% smaller files.
DEFAULT_PNG_LEVEL = 5
COMPOSITE_JPEG_QUALITY = 95
_EXT = {
    OutputKind.ALPHA_PNG: ".png",
    OutputKind.ALPHA_PNG16: ".png",
    OutputKind.CUTOUT: ".png",
    OutputKind.COMPOSITE: ".jpg",
}
_NAMED_COLOURS = {"white": (255, 255, 255), "black": (0, 0, 0), "green": (0, 177, 64)}


def parse_kinds(value: object) -> tuple[OutputKind, ...]:
    """`alpha-png`, `cutout,alpha-png`, a list of names; `none` alone writes nothing."""
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    names = [str(v).strip().lower() for v in items if str(v).strip()]
    try:
        kinds = tuple(dict.fromkeys(OutputKind(n) for n in names))
    except ValueError:
        known = ", ".join(k.value for k in OutputKind)
        raise ModnetBatchError(
            f"output {value!r} is unknown; use one or more of: {known}"
        ) from None
    if not kinds:
        raise ModnetBatchError("output is empty; use `none` to write no per-image files")
    if OutputKind.NONE in kinds and len(kinds) > 1:
        raise ModnetBatchError(f"output {value!r}: `none` cannot be combined with other outputs")
    return kinds


def output_text(value: object) -> str:
    """The `output` option as stored in job.yaml: the parsed kinds, comma-separated."""
    return ",".join(k.value for k in parse_kinds(value))


def colour_text(value: object) -> str:
    """The `background` option as stored in job.yaml: #rrggbb."""
    return "#{:02x}{:02x}{:02x}".format(*parse_colour(value))


def png_level(value: object) -> int:
    try:
        level = int(str(value))
    except ValueError:
        level = -1
    if not 0 <= level <= 9:
        raise ModnetBatchError(f"png_level {value!r}: expected an integer from 0 to 9")
    return level


def parse_size(value: object) -> OutputSize:
    try:
        return OutputSize(str(value).strip().lower())
    except ValueError:
        raise ModnetBatchError(f"output size {value!r} is unknown; use source or scored") from None


def parse_colour(value: object) -> tuple[int, int, int]:
    """`white`, `black`, `green`, or `#RRGGBB` / `RRGGBB` -> (r, g, b)."""
    text = str(value).strip().lower()
    if text in _NAMED_COLOURS:
        return _NAMED_COLOURS[text]
    if re.fullmatch(r"#?[0-9a-f]{6}", text):
        h = text.lstrip("#")
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)
    raise ModnetBatchError(
        f"background {value!r} is not a colour; use white, black, green or #RRGGBB"
    )


@dataclass(frozen=True)
class OutputSpec:
    """A job's per-image outputs; small and picklable (it travels to Ray actors)."""

    kinds: tuple[OutputKind, ...] = (OutputKind.NPZ,)
    size: OutputSize = OutputSize.SCORED
    background: tuple[int, int, int] = (255, 255, 255)
    png_level: int = DEFAULT_PNG_LEVEL

    @property
    def files(self) -> tuple[OutputKind, ...]:
        """The kinds written as image files (npz has its own place, none writes nothing)."""
        return tuple(k for k in self.kinds if k in _EXT)

    @property
    def needs_pixels(self) -> bool:
        """Whether the photo's pixels are needed (cutout, composite)."""
        return any(k in (OutputKind.CUTOUT, OutputKind.COMPOSITE) for k in self.kinds)

    def extension(self, kind: OutputKind) -> str:
        return _EXT[kind]

    def encode(
        self,
        kind: OutputKind,
        alpha: npt.NDArray[np.float32] | npt.NDArray[np.float64],
        rgb: npt.NDArray[np.uint8] | None = None,
        alpha8: npt.NDArray[np.uint8] | None = None,
    ) -> bytes:
        """One output file's bytes from the alpha in [0, 1] (HxW) and, for cutout and
        composite, the photo's HxWx3 RGB at the same size. `alpha8`, when the caller has it,
        is `to_uint8(alpha)` already (saves a pass over a full-size float image)."""
        png = [cv2.IMWRITE_PNG_COMPRESSION, self.png_level]
        if kind is OutputKind.ALPHA_PNG:
            return _encode(".png", to_uint8(alpha) if alpha8 is None else alpha8, png)
        if kind is OutputKind.ALPHA_PNG16:
            a16 = np.clip(np.rint(alpha * 65535.0), 0, 65535).astype(np.uint16)
            return _encode(".png", a16, png)
        if rgb is None or rgb.shape[:2] != alpha.shape:
            got = None if rgb is None else rgb.shape[:2]
            raise ModnetBatchError(f"{kind.value} needs the photo at the alpha's size, got {got}")
        if kind is OutputKind.CUTOUT:
            bgra = np.dstack([rgb[..., ::-1], to_uint8(alpha) if alpha8 is None else alpha8])
            return _encode(".png", bgra, png)
        if kind is OutputKind.COMPOSITE:
            a = alpha.astype(np.float32)[..., None]
            bg = np.asarray(self.background, np.float32)
            out = np.clip(np.rint(rgb.astype(np.float32) * a + bg * (1.0 - a)), 0, 255)
            bgr = out.astype(np.uint8)[..., ::-1]
            return _encode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, COMPOSITE_JPEG_QUALITY])
        raise ModnetBatchError(f"output {kind.value} is not an image file")


def to_uint8(alpha: npt.NDArray[np.floating]) -> npt.NDArray[np.uint8]:
    """An alpha in [0, 1] as 0..255, rounded (the rule of every 8-bit alpha this project writes)."""
    out: npt.NDArray[np.uint8] = np.clip(np.rint(alpha * 255.0), 0, 255).astype(np.uint8)
    return out


def _encode(ext: str, pixels: npt.NDArray[np.generic], params: list[int]) -> bytes:
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(pixels), params)
    if not ok:
        raise ModnetBatchError(f"OpenCV could not encode a {pixels.shape} {pixels.dtype} {ext}")
    return buf.tobytes()
