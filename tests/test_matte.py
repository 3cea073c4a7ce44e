"""`modnet-batch matte SRC OUT`: a folder in, mattes at each photo's own size out, mirroring
SRC's paths; bad files listed, not fatal; resumable."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from modnet_batch.cli import app
from modnet_batch.data.ids import path_id


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "trip" / "day 1").mkdir(parents=True)
    (src / "home").mkdir()
    Image.fromarray(_photo(300, 200, 1)).save(src / "trip" / "day 1" / "IMG 001.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 300 wide x 200 high, seen upright 200 x 300
    Image.fromarray(_photo(200, 300, 2)).save(src / "trip" / "rotated.jpg", exif=exif.tobytes())
    Image.fromarray(_photo(120, 160, 3)).save(src / "home" / "cat.png")
    deep = (_photo(90, 70, 4).astype(np.uint16) * 257)[..., ::-1].copy()
    cv2.imwrite(str(src / "home" / "deep.png"), deep)
    (src / "home" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (src / "home" / "twin.jpg").write_bytes((src / "trip" / "rotated.jpg").read_bytes())
    Image.fromarray(_photo(50, 50, 5)).save(src / "home" / "twin.png")
    (src / "notes.txt").write_text("not an image")
    return src


def _matte(*args: str) -> object:
    return CliRunner().invoke(app, ["matte", *args, "--backend", "inline"])


def test_a_folder_is_matted_upright_at_each_size_mirroring_its_paths(
    folder: Path, tmp_path: Path, tiny_model: Path
) -> None:
    out = tmp_path / "out"
    result = _matte(str(folder), str(out), "--model", str(tiny_model))
    assert result.exit_code == 4, result.output  # some files could not be matted
    for name, shape in {
        "trip/day 1/IMG 001.png": (300, 200),
        "trip/rotated.png": (300, 200),  # EXIF applied: upright
        "home/cat.png": (120, 160),
        "home/deep.png": (90, 70),
    }.items():
        alpha = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
        assert alpha is not None and alpha.dtype == np.uint8 and alpha.shape == shape, name
    text = result.output
    assert "home/broken.jpg" in text and "not a readable image" in text
    assert "home/twin.jpg" in text and "outputs would collide" in text
    assert "notes.txt" in text and "3 file(s) skipped" in text
    written = sorted(
        p.relative_to(out).as_posix() for p in out.rglob("*.png") if ".modnet-batch" not in p.parts
    )
    assert len(written) == 4  # nothing for the bad files, nothing else

    again = _matte(str(folder), str(out), "--model", str(tiny_model))  # a resume: all done
    assert again.exit_code == 4 and "resuming" in again.output
    summary = json.loads((out / ".modnet-batch" / "run" / "summary.json").read_text())
    assert summary["units"]["processed"] == 0


def test_cutouts_carry_the_matte_as_alpha(folder: Path, tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "out"
    result = _matte(
        str(folder), str(out), "--model", str(tiny_model), "--output", "alpha-png,cutout"
    )
    assert result.exit_code == 4, result.output
    bgra = cv2.imread(str(out / "cutout" / "trip" / "rotated.png"), cv2.IMREAD_UNCHANGED)
    alpha = cv2.imread(str(out / "alpha-png" / "trip" / "rotated.png"), cv2.IMREAD_UNCHANGED)
    assert bgra.shape == (300, 200, 4)
    np.testing.assert_array_equal(bgra[..., 3], alpha)


def test_a_list_file_and_refusals(folder: Path, tmp_path: Path, tiny_model: Path) -> None:
    listing = folder / "list.txt"
    listing.write_text("# two of them\nhome/cat.png\ntrip/rotated.jpg\n../outside.jpg\n")
    out = tmp_path / "out"
    result = _matte(str(listing), str(out), "--model", str(tiny_model))
    assert result.exit_code == 4 and "../outside.jpg" in result.output  # named, not matted
    assert sorted(p.name for p in out.rglob("*.png")) == ["cat.png", "rotated.png"]

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.png").write_bytes(b"user data")
    refused = _matte(str(folder), str(mine), "--model", str(tiny_model))
    assert (
        refused.exit_code == 1
        and "not empty and not a `modnet-batch matte` output" in refused.output
    )
    assert (mine / "keep.png").read_bytes() == b"user data"


def test_ids_are_safe_and_unique_for_any_path() -> None:
    assert path_id("cat.png") == "cat"
    spaced = path_id("trip/day 1/IMG 001.jpg")
    assert spaced.startswith("trip__day_1__IMG_001-") and spaced != path_id(
        "trip/day_1/IMG 001.jpg"
    )
    assert len(path_id("x" * 400 + ".jpg")) <= 200


@pytest.mark.slow
def test_ppm100_dev_mattes_equal_the_paper_runs_alphas(
    shared: Path, real_model: Path, inline_run: object, tmp_path: Path
) -> None:
    """41 PNGs at each photo's own size whose values are the paper protocol's alpha (the
    network output resized back), as `submit` stores it in npz."""
    from modnet_batch.results import RunDir

    out = tmp_path / "out"
    result = _matte(
        str(shared / "datasets" / "ppm100-dev" / "image"), str(out), "--model", str(real_model)
    )
    assert result.exit_code == 0, result.output
    reference = RunDir(inline_run("paper"))  # type: ignore[operator]
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 41
    for png in pngs:
        source = next((shared / "datasets" / "ppm100-dev" / "image").glob(f"{png.stem}.*"))
        height, width = cv2.imread(str(source)).shape[:2]  # EXIF applied, as the matte
        alpha = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
        assert alpha.shape == (height, width), png.name
        np.testing.assert_array_equal(alpha, reference.read_alpha(png.stem))


@pytest.mark.ray
def test_a_killed_matte_finishes_the_rest_without_redoing_finished_shards(tmp_path: Path) -> None:
    from tests.helpers import kill_job, make_slow_model

    model = make_slow_model(tmp_path / "slow.onnx", convs=12, channels=24)
    src = tmp_path / "src"
    for k in range(64):
        (src / f"d{k % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_photo(48, 32, k)).save(src / f"d{k % 3}" / f"p{k:02d}.png")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "modnet_batch", "matte", str(src), str(out), "--model", str(model)]
    cmd += ["--workers", "2", "--threads", "1", "--protocol", "seed-area"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    markers = out / ".modnet-batch" / "run" / "state" / "units"
    deadline = time.monotonic() + 240
    while not list(markers.glob("*.json")) if markers.exists() else True:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    kill_job(proc)
    done = {m.name: m.stat().st_mtime_ns for m in markers.glob("*.json")}
    done_ids = [r["image_id"] for m in done for r in _marker_rows(markers / m)]
    assert 0 < len(done_ids) < 64
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png") if ".modnet-batch" not in p.parts}
    assert len(before) >= len(done_ids)

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads((out / ".modnet-batch" / "run" / "summary.json").read_text())
    assert summary["units"]["skipped_done"] == len(done)
    assert summary["units"]["processed"] == len(list(markers.glob("*.json"))) - len(done) > 0
    assert all(markers.joinpath(n).stat().st_mtime_ns == t for n, t in done.items())  # not redone
    ids = [r["image_id"] for m in markers.glob("*.json") for r in _marker_rows(m)]
    assert len(ids) == len(set(ids)) == 64  # every photo in exactly one finished unit
    pngs = [p for p in out.rglob("*.png") if ".modnet-batch" not in p.parts]
    assert len(pngs) == 64 and all(cv2.imread(str(p), -1).shape == (48, 32) for p in pngs)
    # no finished image is matted again, in finished shards or not
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    assert summary["throughput"]["images"] == 64 - len(before)  # the work this attempt did


def test_an_out_of_other_photos_and_a_foreign_output_dir_are_refused(
    folder: Path, tmp_path: Path, tiny_model: Path, synth_dataset: Path
) -> None:
    out = tmp_path / "out"
    assert _matte(str(folder / "home"), str(out), "--model", str(tiny_model)).exit_code == 4
    other = _matte(str(folder / "trip"), str(out), "--model", str(tiny_model))
    assert other.exit_code == 1 and "holds the mattes of" in other.output

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "synth-000.png").write_bytes(b"the user's own file")
    args = ["submit", "--dataset", str(synth_dataset), "--out", str(tmp_path / "run")]
    args += ["--model", str(tiny_model), "--backend", "inline", "--output", "alpha-png"]
    refused = CliRunner().invoke(app, [*args, "--output-dir", str(photos)])
    assert refused.exit_code == 1 and "is not empty" in refused.output
    assert (photos / "synth-000.png").read_bytes() == b"the user's own file"


def test_a_header_that_disagrees_with_the_decoded_size_is_an_error_not_a_stretch() -> None:
    from modnet_batch.data.dataset import Record
    from modnet_batch.errors import ModnetBatchError
    from modnet_batch.pipeline import ImagePipeline

    _ok, buf = cv2.imencode(".png", _photo(30, 20, 9))
    record = Record("x", buf.tobytes(), None, 30, 20, output_name="x")  # header said 30x20
    with pytest.raises(ModnetBatchError, match="its header says 30x20 but it decodes as 20x30"):
        ImagePipeline("paper").decode(record)


def test_matte_ends_with_what_was_written_where_how_fast_and_what_was_skipped(
    folder: Path, tmp_path: Path, tiny_model: Path
) -> None:
    out = tmp_path / "out"
    result = _matte(str(folder), str(out), "--model", str(tiny_model))
    assert result.exit_code == 4, result.output
    text = result.output
    assert f"4 of 4 images matted into {out} (alpha-png)" in text
    assert "overall img/s (start-up included)" in text
    assert "3 file(s) skipped: listed above" in text
    assert f"modnet-batch report {out}" in text
    for scoring in ("MSE", "mIoU", "paper on", "scored"):  # no scoring table for mattes
        assert scoring not in text, scoring

    again = _matte(str(folder), str(out), "--model", str(tiny_model))
    assert "nothing was left to matte" in again.output
    assert "home/broken.jpg: not a readable image" in again.output  # skipped, and why, again


def _marker_rows(marker: Path) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(marker.read_text())["rows"]
    return rows
