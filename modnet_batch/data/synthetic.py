"""Synthetic portrait-like demo data whose alpha is exact: the image is composited from it.

Written in PPM-100 layout (image/*.jpg + matte/*.png) so that `ingest` takes it like real data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from modnet_batch.errors import ModnetBatchError

_SHIFT = 4  # cv2 drawing takes fixed-point coordinates: 4 fractional bits = 1/16 pixel
_MIN_SIDE = 64

FloatImage = npt.NDArray[np.float32]


@dataclass(frozen=True)
class SyntheticSample:
    """One sample before JPEG: `image` = round(255 * (a*fg + (1-a)*bg)) with a = alpha/255.

    image: HxWx3 uint8 RGB; alpha: HxW uint8; foreground/background: HxWx3 float32 in [0, 1].
    """

    image: npt.NDArray[np.uint8]
    alpha: npt.NDArray[np.uint8]
    foreground: FloatImage
    background: FloatImage


def _fixed(points: npt.NDArray[np.float64]) -> npt.NDArray[np.int32]:
    return np.round(points * (1 << _SHIFT)).astype(np.int32)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int, ch: int) -> FloatImage:
    """Value noise in [0, 1]: random values on a coarse grid, bicubically upsampled."""
    coarse = rng.random((h // cell + 2, w // cell + 2, ch)).astype(np.float32)
    up = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(up.reshape(h, w, ch), 0.0, 1.0)


def _background(rng: np.random.Generator, h: int, w: int) -> FloatImage:
    """Gradient + coloured low-frequency noise + translucent shapes + grain."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    t = (np.cos(theta) * xx / w + np.sin(theta) * yy / h + 1.0) / 2.0
    c0, c1 = rng.random(3).astype(np.float32), rng.random(3).astype(np.float32)
    bg = c0 + (c1 - c0) * t[..., None]
    bg = 0.6 * bg + 0.4 * _smooth_noise(rng, h, w, cell=int(rng.integers(16, 64)), ch=3)
    for _ in range(int(rng.integers(6, 14))):
        layer = bg.copy()
        color = tuple(float(v) for v in rng.random(3))
        centre = _fixed(rng.uniform([0, 0], [w, h]))
        size = rng.uniform(0.04, 0.25) * min(h, w)
        if rng.random() < 0.5:
            cv2.circle(
                layer, tuple(centre), int(size * (1 << _SHIFT)), color, -1, cv2.LINE_8, _SHIFT
            )
        else:
            corner = _fixed(rng.uniform([0, 0], [w, h]) + rng.uniform(-size, size, 2))
            cv2.rectangle(layer, tuple(centre), tuple(corner), color, -1, cv2.LINE_8, _SHIFT)
        bg = bg + rng.uniform(0.3, 0.9) * (layer - bg)
    bg = bg + rng.normal(0.0, 0.02, bg.shape).astype(np.float32)
    return np.asarray(np.clip(bg, 0.0, 1.0), dtype=np.float32)


def _coverage(h: int, w: int, draw: Callable[[npt.NDArray[np.uint8]], None]) -> FloatImage:
    """Anti-aliased coverage in [0, 1] of what `draw(canvas)` paints in 255 on a uint8 canvas."""
    canvas = np.zeros((h, w), np.uint8)
    draw(canvas)
    return canvas.astype(np.float32) / 255.0


def _strands(rng: np.random.Generator, h: int, w: int, head: tuple[float, ...]) -> FloatImage:
    """Thin hair-like curves leaving the head outline, as partial coverage (anti-aliased)."""
    cx, cy, ax, ay = head
    out = np.zeros((h, w), np.float32)
    for opacity in (0.35, 0.6, 0.9):  # three translucency levels, each one canvas
        curves = []
        for _ in range(int(rng.integers(15, 40))):
            # Start on the upper/side head outline, leave roughly outwards, bend randomly.
            phi = rng.uniform(-np.pi * 1.05, np.pi * 0.05)
            p0 = np.array([cx + ax * np.cos(phi), cy + ay * np.sin(phi)])
            out_dir = np.array([np.cos(phi), np.sin(phi)])
            length = rng.uniform(0.1, 0.45) * min(ax, ay) * 2
            p2 = p0 + out_dir * length + rng.normal(0, 0.3 * length, 2)
            p1 = (p0 + p2) / 2 + rng.normal(0, 0.35 * length, 2)
            s = np.linspace(0, 1, 40)[:, None]
            curve = (1 - s) ** 2 * p0 + 2 * (1 - s) * s * p1 + s**2 * p2  # quadratic Bezier
            curves.append(_fixed(curve).reshape(-1, 1, 2))

        def draw(
            canvas: npt.NDArray[np.uint8], curves: list[npt.NDArray[np.int32]] = curves
        ) -> None:
            cv2.polylines(canvas, curves, False, 255, 1, cv2.LINE_AA, _SHIFT)

        cover = _coverage(h, w, draw) * opacity
        out = (1.0 - (1.0 - out) * (1.0 - cover)).astype(np.float32)  # "over" of the layers
    return out


def synthetic_sample(
    index: int, *, height: int = 640, width: int = 480, seed: int = 0
) -> SyntheticSample:
    """Render sample `index` of the set `seed`; deterministic, independent of the set size."""
    rng = np.random.default_rng([seed, index])
    h, w = height, width
    bg = _background(rng, h, w)

    # Head + hair cap + neck + shoulders, filled, then blurred for a soft (not binary) edge.
    cx, cy = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.3, 0.42)
    ax, ay = w * rng.uniform(0.13, 0.19), h * rng.uniform(0.15, 0.2)
    tilt = rng.uniform(-15, 15)
    sh_c = (cx + w * rng.uniform(-0.05, 0.05), h * rng.uniform(0.9, 1.0))
    sh_ax = (w * rng.uniform(0.33, 0.48), h * rng.uniform(0.3, 0.38))
    head_box = (_fixed(np.array([cx, cy])), _fixed(np.array([ax, ay])))
    hair_box = (_fixed(np.array([cx, cy - 0.12 * ay])), _fixed(np.array([ax * 1.08, ay * 0.95])))

    def body(canvas: npt.NDArray[np.uint8]) -> None:
        for c, a in (head_box, hair_box):
            cv2.ellipse(canvas, tuple(c), tuple(a), tilt, 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)
        neck = _fixed(
            np.array(
                [
                    [cx - 0.45 * ax, cy],
                    [cx + 0.45 * ax, cy],
                    [cx + 0.5 * ax, sh_c[1]],
                    [cx - 0.5 * ax, sh_c[1]],
                ]
            )
        )
        cv2.fillPoly(canvas, [neck], 255, cv2.LINE_AA, _SHIFT)
        cv2.ellipse(
            canvas,
            tuple(_fixed(np.array(sh_c))),
            tuple(_fixed(np.array(sh_ax))),
            0,
            180,
            360,
            255,
            -1,
            cv2.LINE_AA,
            _SHIFT,
        )
        cv2.rectangle(
            canvas,
            tuple(_fixed(np.array([sh_c[0] - sh_ax[0], sh_c[1]]))),
            tuple(_fixed(np.array([sh_c[0] + sh_ax[0], h + 1.0]))),
            255,
            -1,
            cv2.LINE_8,
            _SHIFT,
        )

    solid = _coverage(h, w, body)
    solid = np.asarray(cv2.GaussianBlur(solid, (0, 0), rng.uniform(0.6, 2.0)), np.float32)
    hair = _strands(rng, h, w, (cx, cy - 0.12 * ay, ax * 1.08, ay * 0.95))
    alpha_f = 1.0 - (1.0 - solid) * (1.0 - hair)
    alpha = np.round(np.clip(alpha_f, 0.0, 1.0) * 255.0).astype(np.uint8)

    # Foreground colours: clothing everywhere, skin on head/neck, hair on the cap and strands.
    clothes = rng.random(3) * 0.8 + 0.1
    skin = np.array([0.85, 0.65, 0.5]) * rng.uniform(0.5, 1.1)
    hair_c = np.array([0.25, 0.17, 0.1]) * rng.uniform(0.3, 2.5)
    fg = np.empty((h, w, 3), np.float32)
    fg[:] = clothes
    head_mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(
        head_mask, tuple(head_box[0]), tuple(head_box[1]), tilt, 0, 360, 1, -1, cv2.LINE_8, _SHIFT
    )
    cv2.rectangle(
        head_mask,
        (int(cx - 0.5 * ax), int(cy)),
        (int(cx + 0.5 * ax), int(sh_c[1] - 0.9 * sh_ax[1])),
        1,
        -1,
    )
    fg[head_mask > 0] = skin
    cap = np.zeros((h, w), np.uint8)
    cv2.ellipse(
        cap, tuple(hair_box[0]), tuple(hair_box[1]), tilt, 180, 360, 1, -1, cv2.LINE_8, _SHIFT
    )
    fg[(cap > 0) | (solid < 0.5)] = hair_c  # strands lie outside the solid body
    fg = fg * (0.85 + 0.3 * _smooth_noise(rng, h, w, cell=4, ch=1))
    fg = np.clip(fg, 0.0, 1.0).astype(np.float32)

    a = (alpha.astype(np.float32) / 255.0)[..., None]  # the exact alpha that the PNG stores
    image = np.round((a * fg + (1.0 - a) * bg) * 255.0).astype(np.uint8)
    return SyntheticSample(image=image, alpha=alpha, foreground=fg, background=bg)


def make_synthetic(
    out: Path, *, n: int = 16, height: int = 640, width: int = 480, seed: int = 0
) -> Path:
    """Write `n` samples to `out`/image/synth-000.jpg (quality 95) and `out`/matte/synth-000.png.

    The matte is the exact alpha the image was composited with (before JPEG). Deterministic
    per seed. `out` must not exist or be empty. Returns `out`.
    """
    if n < 1:
        raise ModnetBatchError(f"n={n}: expected at least 1 sample")
    if min(height, width) < _MIN_SIDE:
        raise ModnetBatchError(
            f"size {width}x{height} (WxH): expected both sides >= {_MIN_SIDE} pixels"
        )
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModnetBatchError(
            f"{out} exists and is not an empty directory; choose a new directory or remove it"
        )
    (out / "image").mkdir(parents=True, exist_ok=True)
    (out / "matte").mkdir(parents=True, exist_ok=True)
    digits = max(3, len(str(n - 1)))
    for i in range(n):
        sample = synthetic_sample(i, height=height, width=width, seed=seed)
        bgr = cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR)
        ok_img, jpg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
        ok_mat, png = cv2.imencode(".png", sample.alpha)
        if not (ok_img and ok_mat):
            raise ModnetBatchError(f"OpenCV could not encode synthetic sample {i}")
        stem = f"synth-{i:0{digits}d}"
        (out / "image" / f"{stem}.jpg").write_bytes(jpg.tobytes())
        (out / "matte" / f"{stem}.png").write_bytes(png.tobytes())
    return out
