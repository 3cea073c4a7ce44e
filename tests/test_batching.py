"""The measured batch size of accelerators (execution/batching.py) on scripted devices: a fake
clock advanced by each run, so the choice is exact and the test takes milliseconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modnet_batch.execution.batching import tune_batch


class FakeDevice:
    """A device whose batch of B takes `fixed + per_image * B` seconds; fails from `oom_at`."""

    def __init__(self, fixed: float, per_image: float, oom_at: int | None = None) -> None:
        self.now = 0.0
        self.fixed, self.per_image, self.oom_at = fixed, per_image, oom_at
        self.seen: list[int] = []

    def clock(self) -> float:
        return self.now

    def run(self, x: np.ndarray) -> None:
        b = x.shape[0]
        self.seen.append(b)
        if self.oom_at is not None and b >= self.oom_at:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore lines")
        self.now += self.fixed + self.per_image * b


def test_a_launch_bound_device_gets_a_large_batch() -> None:
    # 5 ms per launch, 0.1 ms per image: images/s keeps growing until ~64
    dev = FakeDevice(fixed=5e-3, per_image=1e-4)
    choice = tune_batch(dev.run, (3, 8, 8), clock=dev.clock)
    rates = choice.rates
    assert list(rates) == sorted(rates) and rates[1] < rates[8] < rates[64]
    top = max(rates.values())
    assert rates[choice.batch_size] >= 0.95 * top
    smaller = [b for b in rates if b < choice.batch_size]
    assert all(rates[b] < 0.95 * top for b in smaller)  # the smallest near the fastest
    assert choice.batch_size >= 64


def test_a_compute_bound_device_stops_early_and_keeps_batches_small() -> None:
    dev = FakeDevice(fixed=1e-5, per_image=1e-2)  # batching does not help
    choice = tune_batch(dev.run, (3, 8, 8), clock=dev.clock)
    assert choice.batch_size == 1
    assert len(choice.rates) == 3 and "less than 5% twice" in choice.stopped
    assert max(dev.seen) == 4


def test_out_of_memory_ends_the_sweep_below_it() -> None:
    dev = FakeDevice(fixed=5e-3, per_image=1e-5, oom_at=32)
    choice = tune_batch(dev.run, (3, 8, 8), clock=dev.clock)
    assert choice.batch_size == 16
    assert choice.stopped == "batch 32 failed: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert choice.to_dict()["images_per_s"].keys() == {"1", "2", "4", "8", "16"}


def test_the_budget_and_the_input_size_bound_the_sweep() -> None:
    dev = FakeDevice(fixed=1.0, per_image=1e-3)
    choice = tune_batch(dev.run, (3, 8, 8), clock=dev.clock, budget_s=10)
    # 4 runs of ~1 s per candidate: the budget is spent after batch 4 (12 s)
    assert choice.stopped == "time budget of 10 s spent" and max(choice.rates) == 4
    huge = FakeDevice(fixed=1e-3, per_image=1e-6)
    choice = tune_batch(huge.run, (3, 4000, 6000), clock=huge.clock)  # 288 MB per image
    assert max(choice.rates) == 4 and "would hold more than 2048 MiB" in choice.stopped


def test_an_accelerator_job_measures_its_batch(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """--device gpu without --batch-size: the worker measures (the CPU provider stands in)."""
    from modnet_batch.execution.driver import run_job
    from modnet_batch.options import load_job

    overrides: dict[str, Any] = {
        "dataset": str(synth_dataset),
        "out": str(tmp_path / "run"),
        "model": str(tiny_model),
        "backend": "inline",
        "device": "gpu",
        "provider": "cpu",
    }
    outcome = run_job(load_job(None, overrides))
    (worker,) = outcome.summary.workers
    tuning = worker["batch_tuning"]
    assert tuning is not None and worker["batch_size"] == tuning["batch_size"]
    assert tuning["images_per_s"]["1"] > 0
    assert outcome.summary.images.scored == 12
    # an explicit batch size is used as given, nothing measured
    overrides.update(out=str(tmp_path / "fixed"), batch_size=3)
    (worker,) = run_job(load_job(None, overrides)).summary.workers
    assert (worker["batch_size"], worker["batch_tuning"]) == (3, None)


def test_cpu_jobs_keep_batch_one(synth_dataset: Path, tiny_model: Path, tmp_path: Path) -> None:
    from modnet_batch.execution.driver import run_job
    from modnet_batch.options import load_job

    job = load_job(
        None,
        {
            "dataset": str(synth_dataset),
            "out": str(tmp_path / "run"),
            "model": str(tiny_model),
            "backend": "inline",
            "device": "cpu",
        },
    )
    workers = run_job(job).summary.workers
    assert workers and {(w["batch_size"], w["batch_tuning"]) for w in workers} == {(1, None)}
