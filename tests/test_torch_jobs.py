"""Jobs on the torch engine: device scoring equals CPU scoring, the torch engine equals
onnxruntime, and (slow) the real model on ppm100-dev meets the reference numbers.

Tolerances: device scoring against CPU scoring of the same outputs, per image: MSE/MAD/SAD/Grad
relative 1e-12 (both float64; the device sums in another order), Conn and the IoU counts exact,
the npz files identical. torch against onnxruntime: dataset MSE, MAD, mIoU within 1e-6 absolute,
SAD within 1e-4 relative, as against the reference (tests/test_reference.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution.driver import run_job
from modnet_batch.options import load_job

torch = pytest.importorskip("torch", reason="the torch engine needs PyTorch (make install has it)")


def _run(dataset: Path, out: Path, model: Path, **kw: Any) -> dict[str, Any]:
    job = load_job(
        None,
        {"dataset": str(dataset), "out": str(out), "model": str(model), "backend": "inline", **kw},
    )
    outcome = run_job(job)
    assert outcome.exit_status == 0
    return {
        "summary": json.loads((out / "summary.json").read_text()),
        "rows": {r["image_id"]: r for r in pq.read_table(out / "metrics.parquet").to_pylist()},
    }


def test_device_scoring_equals_cpu_scoring(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    device = _run(synth_dataset, tmp_path / "d", tiny_model, engine="torch", scoring="device")
    cpu = _run(synth_dataset, tmp_path / "c", tiny_model, engine="torch", scoring="cpu")
    assert device["rows"].keys() == cpu["rows"].keys() and len(cpu["rows"]) == 12
    for image_id, d in device["rows"].items():
        c = cpu["rows"][image_id]
        for k in ("mse", "mad", "sad", "grad"):
            assert d[k] == pytest.approx(c[k], rel=1e-12, abs=1e-15), (image_id, k)
        for k in ("conn", "tp", "fp", "fn", "tn"):
            assert d[k] == c[k], (image_id, k)
    for npz in (tmp_path / "c" / "alpha").iterdir():
        a = np.load(npz)["alpha"]
        b = np.load(tmp_path / "d" / "alpha" / npz.name)["alpha"]
        assert np.array_equal(a, b), npz.name
    workers = device["summary"]["workers"]
    assert workers[0]["provider"] == "torch:cpu" and workers[0]["engine"] == "torch"


def test_torch_engine_matches_onnxruntime(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    torch_run = _run(synth_dataset, tmp_path / "t", tiny_model, engine="torch")
    ort_run = _run(synth_dataset, tmp_path / "o", tiny_model)
    got, ref = torch_run["summary"]["metrics"], ort_run["summary"]["metrics"]
    for k in ("mse", "mad", "miou"):
        assert abs(got[k] - ref[k]) <= 1e-6, (k, got[k], ref[k])
    assert got["sad"] == pytest.approx(ref["sad"], rel=1e-4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"scoring": "device"}, "--scoring device needs --engine torch"),
        (
            {"engine": "torch", "scoring": "device", "protocol": "paper"},
            "--scoring device needs --engine torch and a seed protocol",
        ),
        ({"precision": "bf16"}, "use --model bf16 .* or --engine torch"),
    ],
)
def test_options_that_cannot_run_are_one_line_errors(
    options: dict[str, str], message: str, synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    with pytest.raises(ModnetBatchError, match=message) as info:
        _run(synth_dataset, tmp_path / "r", tiny_model, **options)
    assert "\n" not in str(info.value)


def test_paper_on_torch_scores_on_the_cpu(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    torch_run = _run(synth_dataset, tmp_path / "t", tiny_model, engine="torch", protocol="paper")
    ort_run = _run(synth_dataset, tmp_path / "o", tiny_model, protocol="paper")
    got, ref = torch_run["summary"]["metrics"], ort_run["summary"]["metrics"]
    for k in ("mse", "mad", "miou"):
        assert abs(got[k] - ref[k]) <= 1e-6, (k, got[k], ref[k])


@pytest.mark.slow
def test_real_model_on_torch_meets_the_reference(
    shared: Path, real_model: Path, ppm_dataset: Path, tmp_path: Path
) -> None:
    run = _run(ppm_dataset, tmp_path / "run", real_model, engine="torch", batch_size=4)
    ref = json.loads((shared / "reference" / "ppm100-dev.json").read_text())["results"]
    got = run["summary"]["metrics"]
    assert run["summary"]["images"]["scored"] == 41
    for k in ("mse", "mad", "miou"):
        assert abs(got[k] - ref["seed-area"][k]) <= 1e-6, (k, got[k], ref["seed-area"][k])
    assert got["sad"] == pytest.approx(ref["seed-area"]["sad"], rel=1e-4)
