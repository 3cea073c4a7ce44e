"""The device benchmark end to end on the CPU with the tiny model: every section and field that a
GPU run fills is written, in seconds (the GPU run itself is never part of the tests)."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks.accelerator import jobs
from benchmarks.accelerator.config import Config
from benchmarks.accelerator.monitor import GpuMonitor
from benchmarks.accelerator.run import run
from benchmarks.accelerator.sweep import best_batches
from modnet_batch.data.synthetic import make_synthetic


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
        decode_rounds=1,
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


def test_the_results_say_where_they_came_from(device_doc: dict) -> None:
    """benchmarks/stamp.py: the commit of this checkout, the UTC date and the machine."""
    assert len(device_doc["commit"].removesuffix("+dirty")) == 40
    assert device_doc["date_utc"].endswith("+00:00")
    machine = device_doc["environment"]
    assert machine["cpu"]["model"] and machine["cpu"]["logical_cores"] >= 1
    assert machine["memory_gib"] > 0 and isinstance(machine["gpus"], list)


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


def test_decoding_section_compares_cpu_and_device_decoding(device_doc: dict) -> None:
    """Section 6 on the CPU (torch's CPU, the OpenCV stand-in decoder): both decodings matted
    the same 9 photos, the device run counts every photo as device-decoded (synthetic JPEGs are
    baseline), and the scored comparison reports a delta per metric."""
    section = device_doc["decoding"]
    if "skipped" in section:
        assert "torch" not in {r["engine"] for r in device_doc["model_only"] if "images_per_s" in r}
        return
    runs = {r["decoding"]: r for r in section["runs"]}
    assert set(runs) == {"cpu", "device"}
    for how, r in runs.items():
        assert r["images"] == 9 and r["failed"] == 0 and r["images_per_s"] > 0, how
        assert "torch_memory_peak_mib" in r and "device_decode" in r["stages_s"]
    assert runs["cpu"]["decoded"] is None
    assert runs["device"]["decoded"]["device"] == 9 and runs["device"]["decoded"]["cpu"] == 0
    assert (
        runs["device"]["stages_s"]["device_decode"] > 0 == runs["cpu"]["stages_s"]["device_decode"]
    )
    medians = section["median_images_per_s"]
    assert section["device_over_cpu"] == pytest.approx(medians["device"] / medians["cpu"], rel=1e-2)
    deltas = section["metric_deltas"]
    assert deltas["images"] == 5 and deltas["decoded"]["device"] == 5
    assert set(deltas["delta"]) == {"mse", "mad", "sad", "grad", "conn", "miou"}
    assert all(v is not None for v in deltas["delta"].values())
    assert deltas["max_abs_image_mse_delta"] >= abs(deltas["delta"]["mse"])
    assert "metrics approximate" in deltas["job_decode"]
    assert deltas["decode_check"] is not None and len(deltas["decode_check"]["images"]) == 5
    assert "approximate by design" in section["note"]
    # what the pool threads decoded is recorded beside it (unscored: reduced where allowed)
    assert section["cpu_decode_reduce"] == "the job's default"
    assert all(r["decode"] for r in runs.values())
    assert deltas["compared"] == 5
    assert deltas["max_abs_image_mse_delta_image"].startswith("synth-")


def test_decoding_section_records_failed_runs_and_goes_on(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that fails other than by a refusal (e.g. out of device memory) is recorded in the
    section and the bench goes on: the scored comparison then says which job failed."""

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore")

    monkeypatch.setattr(jobs, "_decoding_job", out_of_memory)
    src = make_synthetic(tmp_path / "src", n=2, height=80, width=64, seed=1)
    cfg = Config(model=str(tiny_model), src=str(src), out=str(tmp_path), e2e_images=2)
    section = jobs.decoding(
        replace(cfg, decode_rounds=1),
        "fp32",
        "eager",
        1,
        tmp_path / "work",
        GpuMonitor(),
        time.monotonic() + 60,
    )
    assert section["runs"] == [
        {"decoding": how, "round": 0, "error": "CUDA out of memory. Tried to allocate 2.00 GiB"}
        for how in ("cpu", "device")
    ]
    assert section["median_images_per_s"] == {} and "device_over_cpu" not in section
    assert section["metric_deltas"]["error"].startswith("scored --decoding cpu: CUDA out of")


def test_best_batch_prefers_the_smallest_within_five_percent() -> None:
    rows = [
        {"engine": "torch", "precision": "fp16", "batch_size": b, "images_per_s": r}
        for b, r in ((1, 100.0), (8, 960.0), (16, 1000.0), (32, 990.0))
    ]
    best = best_batches(rows)["torch/fp16/eager"]
    assert (best["fastest_batch"], best["chosen_batch"]) == (16, 8)
