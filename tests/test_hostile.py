"""A hostile-input corpus, ingested and submitted under every protocol: every file is scored,
written without metrics, or named with a reason (at ingest or in an error row); never a crash,
never silently dropped, and the good files always go through."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from modnet_batch.cli import app
from modnet_batch.protocol import PROTOCOLS

RNG = np.random.default_rng(11)


def _photo(h: int, w: int, channels: int = 3) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1)] * 2, -1) % 256
    noise = RNG.integers(0, 40, (h, w, 4))
    return np.clip(base + noise, 0, 255).astype(np.uint8)[..., :channels]


def _matte(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((yy - h / 2) / (h / 2.5)) ** 2 + ((xx - w / 2) / (w / 3)) ** 2 < 1
    return (inside * 255).astype(np.uint8)


def _png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


def _jpeg(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", arr[..., ::-1].copy(), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height pixels, with almost no data behind it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _write(folder: Path, name: str | bytes, data: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(name, bytes):  # a name that is not UTF-8
        with open(os.path.join(os.fsencode(folder), name), "wb") as fh:
            fh.write(data)
    else:
        (folder / name).write_bytes(data)


def _corpus(root: Path) -> dict[str, str]:
    """Writes the corpus; returns, per image file, what must become of it: "scored" (a metric
    row), or "named" (skipped at ingest, or an error row, either with a reason)."""
    img, mat = root / "image", root / "matte"
    expect: dict[str, str] = {}

    def pair(name: str, image: bytes, matte: bytes | None, fate: str) -> None:
        _write(img, name, image)
        if matte is not None:
            _write(mat, Path(name).stem + ".png", matte)
        expect[name] = fate

    h, w = 120, 90
    pair("good.jpg", _jpeg(_photo(h, w)), _png(_matte(h, w)), "scored")
    full = _jpeg(_photo(h, w))
    pair("truncated.jpg", full[: len(full) // 3], _png(_matte(h, w)), "named")
    pair("zero.jpg", b"", _png(_matte(h, w)), "named")
    pair("text.jpg", b"this is not a picture\n", _png(_matte(h, w)), "named")
    deep = (_photo(h, w).astype(np.uint16) * 257)[..., ::-1].copy()
    pair("deep16.png", _png(deep), _png(_matte(h, w).astype(np.uint16) * 257), "scored")
    pair("gray.png", _png(_photo(h, w, 1)[..., 0]), _png(_matte(h, w)), "scored")
    rgba = cv2.cvtColor(_photo(h, w), cv2.COLOR_RGB2BGRA)
    pair("rgba.png", _png(rgba), _png(_matte(h, w)), "scored")
    cmyk = io.BytesIO()
    Image.fromarray(_photo(h, w)).convert("CMYK").save(cmyk, "JPEG", quality=90)
    pair("cmyk.jpg", cmyk.getvalue(), _png(_matte(h, w)), "scored")
    # EXIF orientation 6 (rotate 90 clockwise to view): stored w x h, seen h x w, like its matte
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = io.BytesIO()
    Image.fromarray(_photo(w, h)).save(rotated, "JPEG", quality=90, exif=exif.tobytes())
    pair("exif6.jpg", rotated.getvalue(), _png(_matte(h, w)), "scored")
    pair("mismatch.jpg", _jpeg(_photo(h, w)), _png(_matte(h + 10, w)), "named")
    _write(mat, "orphan.png", _png(_matte(h, w)))  # a matte without its image
    for name, (hh, ww) in {"one.png": (1, 1), "row.png": (1, 37), "col.png": (41, 1)}.items():
        pair(name, _png(_photo(hh, ww)), _png(_matte(hh, ww)), "scored-or-named")
    pair("bomb.png", _bomb_png(200_000, 200_000), _png(_matte(h, w)), "named")
    pair("dup.jpg", _jpeg(_photo(h, w)), None, "named")
    _write(img, "dup.png", _png(_photo(h, w)))
    expect["dup.png"] = "named"
    _write(mat, "dup.png", _png(_matte(h, w)))
    pair("with space.jpg", _jpeg(_photo(h, w)), _png(_matte(h, w)), "named")
    pair("ünïcode.jpg", _jpeg(_photo(h, w)), _png(_matte(h, w)), "named")
    _write(img, b"\xff\xfelatin.jpg", _jpeg(_photo(h, w)))
    expect[os.fsdecode(b"\xff\xfelatin.jpg")] = "named"
    pair("x" * 240 + ".jpg", _jpeg(_photo(h, w)), _png(_matte(h, w)), "named")
    pair("nomatte.jpg", _jpeg(_photo(h, w)), None, "unscored")
    _write(img, "notes.txt", b"not an image")
    expect["notes.txt"] = "named"
    return expect


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], str]:
    root = tmp_path_factory.mktemp("hostile")
    expect = _corpus(root / "src")
    result = CliRunner().invoke(app, ["ingest", str(root / "src"), str(root / "ds")])
    assert result.exit_code == 0, result.output
    return root, expect, result.output


def _named_in(text: str, name: str) -> bool:
    return name in text or os.fsencode(name).decode("utf-8", "backslashreplace") in text


def test_ingest_names_every_file_it_does_not_take(corpus: tuple[Path, dict[str, str], str]) -> None:
    root, expect, output = corpus
    meta = json.loads((root / "ds" / "dataset.json").read_text())
    shards = [pq.read_table(root / "ds" / s["path"]).to_pylist() for s in meta["shards"]]
    taken = {r["image_file"].removeprefix("image/") for rows in shards for r in rows}
    assert "good.jpg" in taken and "nomatte.jpg" in taken  # the good files went through
    for name in expect:
        assert name in taken or _named_in(output, name), f"{name!r} silently dropped"
    assert "orphan.png" in output  # an orphan matte is named too
    for name in ("with space.jpg", "ünïcode.jpg", "dup.jpg", "dup.png", "x" * 240 + ".jpg"):
        assert name not in taken
    assert "notes.txt" in output
    assert "decompression bomb" in output and "OpenCV(" not in output  # a sentence, not a dump


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_every_taken_file_is_scored_or_an_error_row_under_every_protocol(
    corpus: tuple[Path, dict[str, str], str], tiny_model: Path, protocol: str
) -> None:
    root, expect, _ = corpus
    out = root / f"run-{protocol}"
    args = ["submit", "--dataset", str(root / "ds"), "--out", str(out), "--model", str(tiny_model)]
    result = CliRunner().invoke(app, [*args, "--backend", "inline", "--protocol", protocol])
    assert result.exit_code in (0, 4), result.output  # 4: some images are error rows
    assert "Traceback" not in result.output
    meta = json.loads((root / "ds" / "dataset.json").read_text())
    ids = {
        r["image_id"]: r["image_file"].removeprefix("image/")
        for s in meta["shards"]
        for r in pq.read_table(
            root / "ds" / s["path"], columns=["image_id", "image_file"]
        ).to_pylist()
    }
    listed = pq.read_table(out / "metrics.parquet").to_pylist()
    rows = {r["image_id"]: r for r in listed}
    assert set(rows) == set(ids) and len(listed) == len(ids)  # each image taken: one row
    for image_id, row in rows.items():
        fate = expect[ids[image_id]]
        if row["error"] is not None:
            assert fate in ("named", "scored-or-named"), (image_id, row["error"])
            assert "OpenCV(" not in row["error"] and "error: (-" not in row["error"], row["error"]
        elif fate == "unscored":
            assert row["mse"] is None and (out / "alpha" / f"{image_id}.npz").exists()
        else:
            assert fate in ("scored", "scored-or-named"), (image_id, fate)
            assert row["mse"] is not None and np.isfinite(row["mse"])
    for name in ("good", "deep16", "gray", "rgba", "cmyk", "exif6"):
        assert rows[name]["error"] is None and rows[name]["mse"] is not None, rows[name]


def test_opencv_errors_read_as_sentences() -> None:
    from modnet_batch.pipeline import error_text

    try:
        cv2.resize(np.zeros((1, 5), np.uint8), (0, 0), fx=0, fy=0)
    except cv2.error as exc:
        text = error_text(exc)
    else:  # pragma: no cover - OpenCV accepted it
        pytest.fail("OpenCV accepted a zero-size resize")
    assert text.startswith("OpenCV could not process the image: ")
    assert "/io/opencv" not in text and "OpenCV(" not in text and "\n" not in text
