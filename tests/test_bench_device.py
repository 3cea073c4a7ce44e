"""The device benchmark end to end on the CPU with the tiny model: every section and field that a
GPU run fills is written, in seconds (the GPU run itself is never part of the tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modnet_batch.bench.device import (
    METRICS,
    Config,
    GpuMonitor,
    best_batches,
    decoding_section,
    run,
)
from modnet_batch.data.synthetic import make_synthetic
from modnet_batch.execution.resources import available_cpus


@pytest.fixture(scope="module")
def device_doc(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("device-bench")
    src = make_synthetic(base / "src", n=5, height=200, width=150, seed=3)
    cfg = Config(
        model=str(tiny_model),
        src=str(src),
        out=str(base / "out"),
        batches=(1, 2),
        seconds=0.1,
        images=5,
        e2e_images=9,
        decoding_rounds=1,
        decoding_images=7,
    )
    doc = run(cfg)
    assert json.loads((base / "out" / "device.json").read_text()) == json.loads(
        json.dumps(doc, default=str)
    )
    return doc


def test_every_section_is_written(device_doc: dict) -> None:
    for key in ("environment", "reference", "model_only", "metric_deltas", "best_batch", "feed"):
        assert device_doc[key], key
    assert device_doc["reference"]["metrics"]["scored"] == 5


def test_model_only_rows_carry_throughput_latency_and_memory(device_doc: dict) -> None:
    timed = [r for r in device_doc["model_only"] if "images_per_s" in r]
    assert {(r["engine"], r["precision"], r["batch_size"]) for r in timed} >= {
        ("onnxruntime", "fp32", 1),
        ("onnxruntime", "fp32", 2),
    }
    for r in timed:
        assert r["images_per_s"] > 0 and r["batches"] >= 5
        assert 0 < r["latency_p50_ms"] <= r["latency_p99_ms"]
        assert "device_memory_peak_mib" in r  # None on the CPU: torch's CUDA counter
    skipped = {
        (r["engine"], r["precision"]): r["skipped"]
        for r in device_doc["model_only"]
        if "skipped" in r
    }
    assert "no --fp16-model" in skipped[("onnxruntime", "fp16")]


def test_the_reference_against_itself_moves_nothing(device_doc: dict) -> None:
    ort = next(
        d
        for d in device_doc["metric_deltas"]
        if (d["engine"], d["precision"]) == ("onnxruntime", "fp32")
    )
    assert ort["max_abs_output_diff"] == 0.0
    assert set(ort["delta"]) == {"mse", "mad", "sad", "grad", "conn", "miou"}
    assert all(v == 0.0 for v in ort["delta"].values())


def test_feed_and_end_to_end(device_doc: dict) -> None:
    feed = device_doc["feed"]
    assert feed["threads_images_per_s"]["1"] > 0 and feed["processes_images_per_s"] > 0
    assert feed["bound_images_per_s"] == max(
        *feed["threads_images_per_s"].values(), feed["processes_images_per_s"]
    )
    e2e = {(r["engine"], r["inputs"]): r for r in device_doc["end_to_end"] if "inputs" in r}
    if "torch" in {r["engine"] for r in device_doc["model_only"] if "images_per_s" in r}:
        assert {("torch", "original"), ("torch", "prepared")} <= set(e2e)
    for inputs in ("original", "prepared"):
        r = e2e[("onnxruntime", inputs)]
        assert r["images"] == 9 and r["images_per_s"] > 0
        assert {"infer", "wait_decode", "cpu_decode"} <= set(r["stages_s"])
        assert set(r["metrics"]) >= {"mse", "mad", "sad", "grad", "conn", "miou"}
    # the same images from prepared inputs score the same (they are the protocol's own inputs)
    original, prepared = e2e[("onnxruntime", "original")], e2e[("onnxruntime", "prepared")]
    for k in ("mse", "mad", "sad", "grad", "conn", "miou"):
        assert prepared["metrics"][k] == pytest.approx(original["metrics"][k], rel=1e-9), k
    # prepared inputs skip the decode
    assert (
        e2e[("onnxruntime", "prepared")]["stages_s"]["cpu_decode"]
        < (e2e[("onnxruntime", "original")]["stages_s"]["cpu_decode"])
    )


def test_best_batch_prefers_the_smallest_within_five_percent() -> None:
    rows = [
        {"engine": "torch", "precision": "fp16", "batch_size": b, "images_per_s": r}
        for b, r in ((1, 100.0), (8, 960.0), (16, 1000.0), (32, 990.0))
    ]
    best = best_batches(rows)["torch/fp16/eager"]
    assert (best["fastest_batch"], best["chosen_batch"]) == (16, 8)


def _torch_engine_ran(doc: dict) -> bool:
    return "torch" in {r["engine"] for r in doc["model_only"] if "images_per_s" in r}


def test_decoding_runs_alternate_and_count_what_decoded_each_image(device_doc: dict) -> None:
    section = device_doc["decoding"]
    if not _torch_engine_ran(device_doc):
        assert section["skipped"]
        return
    assert "skipped" not in section, section.get("skipped")
    assert (section["engine"], section["device"]) == ("torch", "cpu")
    assert (section["output"], section["output_size"]) == ("alpha-png", "source")
    assert section["decode_threads"] == available_cpus() and section["images"] == 7
    assert "approximate" in section["approximate"]
    runs = section["runs"]
    assert [(r["round"], r["decoding"]) for r in runs] == [(0, "cpu"), (0, "device")]
    for r in runs:
        assert r["complete"] and r["failed"] == 0 and r["images"] == 7
        assert r["images_per_s"] > 0 and r["wall_s"] > 0
        assert {"infer", "wait_decode", "device_decode", "cpu_decode"} <= set(r["stages_s"])
        assert "device_memory_peak_mib" in r  # None on the CPU: torch's CUDA counter
    cpu, device = runs
    assert cpu["decoded"] is None  # --decoding cpu: every image on the CPU, nothing to count
    assert cpu["stages_s"]["device_decode"] == 0 < device["stages_s"]["device_decode"]
    decoded = device["decoded"]
    assert decoded["on"] == "device" and any("opencv" in d for d in decoded["decoders"])
    assert decoded["device"] + decoded["cpu"] == 7
    assert decoded["cpu"] == sum(decoded["fallback"].values())
    assert decoded["device"] == 7  # synthetic photos are baseline JPEGs: none falls back
    medians = section["median_images_per_s"]
    assert medians == {
        "cpu": pytest.approx(cpu["images_per_s"], abs=0.01),
        "device": pytest.approx(device["images_per_s"], abs=0.01),
    }
    assert section["device_vs_cpu"] == pytest.approx(medians["device"] / medians["cpu"], abs=1e-3)


def test_decoding_metric_deltas_compare_device_with_cpu(device_doc: dict) -> None:
    if not _torch_engine_ran(device_doc):
        pytest.skip("the torch engine did not run here: the section is skipped")
    deltas = device_doc["decoding"]["metric_deltas"]
    assert deltas["images"] == 5
    assert deltas["scored"] == {"cpu": 5, "device": 5, "compared": 5}
    assert set(deltas["delta"]) == set(METRICS)
    cpu, device = deltas["metrics"]["cpu"], deltas["metrics"]["device"]
    for k in METRICS:
        assert deltas["delta"][k] == pytest.approx(device[k] - cpu[k]), k
    # the dataset's MSE is the images' mean: it cannot move more than its most moved image
    assert deltas["max_abs_image_mse_delta"] >= abs(deltas["delta"]["mse"])
    assert deltas["max_abs_image_mse_delta_image"].startswith("synth-")
    check = deltas["decode_check"]
    assert check is not None and set(check["delta"]) >= set(METRICS) and check["images"]
    assert "device" in deltas["job_decode"] and "approximate" in deltas["job_decode"]
    assert deltas["decoded"]["device"] + deltas["decoded"]["cpu"] == 5
    assert {r["decoding"] for r in deltas["runs"].values()} == {"cpu", "device"}
    assert all(r["images"] == 5 and r["images_per_s"] > 0 for r in deltas["runs"].values())


def test_decoding_is_skipped_where_the_device_has_no_decoder(
    tiny_model: Path, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    import time

    cfg = Config(model=str(tiny_model), src=str(tmp_path), out=str(tmp_path), device="mps")
    section = decoding_section(
        cfg, "fp32", "eager", 1, tmp_path / "work", GpuMonitor(), time.monotonic() + 60
    )
    assert "not on mps" in section["skipped"]
    assert "runs" not in section and not (tmp_path / "work").exists()
