"""The matting benchmark (benchmarks/matting.py) on the tiny model and a few synthetic photos."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks import matting
from modnet_batch.data.synthetic import make_synthetic


def _photos(tmp_path: Path, n: int = 3) -> Path:
    make_synthetic(tmp_path / "synth", n=n, height=96, width=72)
    return tmp_path / "synth" / "image"


def test_the_hand_written_loop_writes_a_source_size_png_per_photo(
    tmp_path: Path, tiny_model: Path
) -> None:
    src = _photos(tmp_path)
    out = tmp_path / "loop"
    assert matting.hand_loop(src, out, tiny_model, 1) == 3
    pngs = sorted(out.glob("*.png"))
    assert [p.stem for p in pngs] == ["synth-000", "synth-001", "synth-002"]
    assert all(cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape == (96, 72) for p in pngs)


def test_stages_bound_and_png_levels(tmp_path: Path, tiny_model: Path) -> None:
    files = sorted(_photos(tmp_path).iterdir())
    per_stage, alphas = matting.stages(files, tiny_model, 5, cores=2, keep=2)
    expected = {"read", "decode", "preprocess", "preprocess_numpy_normalise", "postprocess"}
    expected |= {"network_1_thread", "network_all_threads", "png", "write"}
    assert set(per_stage) == expected and all(v >= 0 for v in per_stage.values())
    assert len(alphas) == 2 and alphas[0].shape == (96, 72) and alphas[0].dtype == np.uint8
    loaded = matting.stages_loaded(files, tiny_model, 5, cores=2)
    assert set(loaded) == expected - {"network_all_threads"}
    assert all(v >= 0 for v in loaded.values())
    top = matting.bound(per_stage, loaded, 2)
    steps = ("read", "decode", "preprocess", "postprocess", "png", "write")
    network = min(per_stage["network_1_thread"], per_stage["network_all_threads"])
    assert top["core_ms_per_image_alone"] == network + sum(per_stage[k] for k in steps)
    assert top["images_per_s_alone"] == 2000 / top["core_ms_per_image_alone"]
    at_all = per_stage["network_all_threads"] + sum(per_stage[k] for k in steps)
    assert top["images_per_s_network_on_all_cores"] == 2000 / at_all
    # the bound the peers are held to: the stages timed with both cores busy
    assert top["core_ms_per_image"] == loaded["network_1_thread"] + sum(loaded[k] for k in steps)
    assert top["images_per_s"] == 2000 / top["core_ms_per_image"]
    levels = matting.png_levels(alphas)
    assert set(levels) == {"megapixels_median", *map(str, range(10))}
    assert levels["0"]["kib"] >= levels["9"]["kib"]


def test_a_sitting_compares_matte_with_the_loop_and_the_bound(
    tmp_path: Path, tiny_model: Path
) -> None:
    out = tmp_path / "result.json"
    args = ["--synthetic", "72x96", "--images", "2", "--rounds", "1", "--png-level", "1"]
    matting.main(
        [*args, "--peers", "matte-inline,loop", "--model", str(tiny_model), "--out", str(out)]
    )
    doc = json.loads(out.read_text())
    assert {"commit", "date_utc", "machine"} <= set(doc) and doc["machine"]["cores"] >= 1
    assert doc["images"] == 2 and doc["png_level"] == 1
    for peer in ("matte-inline", "loop"):
        (row,) = doc["rounds"][peer]
        assert row["images"] == 2 and row["images_per_s"] > 0
        assert row["cpu_ms_per_image"] == 1000 * row["cpu_s"] / 2 and row["cpu_s"] > 0
    assert "startup_s" in doc["rounds"]["matte-inline"][0]  # read from matte's summary
    med = doc["median_images_per_s"]
    assert doc["over_loop"] == {"matte-inline": med["matte-inline"] / med["loop"]}
    top = doc["bound"]["images_per_s"]
    assert doc["fraction_of_bound"] == {k: v / top for k, v in med.items()}
    startup = doc["bound"]["least_startup_s"]
    assert startup > 0
    whole = doc["bound"]["images_per_s_whole_command"]
    assert whole == pytest.approx(2 / (startup + 2 / top)) and whole < top
    assert doc["fraction_of_bound_whole_command"] == {k: v / whole for k, v in med.items()}
    alone = doc["bound"]["images_per_s_alone"]
    assert doc["fraction_of_bound_alone"] == {k: v / alone for k, v in med.items()}
    steady = doc["rounds"]["matte-inline"][0]["steady_images_per_s"]
    assert doc["fraction_of_bound_steady"] == {"matte-inline": steady / top}
    assert set(doc["median_cpu_ms_per_image"]) == {"matte-inline", "loop"}
    core_ms = doc["bound"]["core_ms_per_image"]
    assert doc["cpu_efficiency"] == {
        k: core_ms / v for k, v in doc["median_cpu_ms_per_image"].items()
    }
