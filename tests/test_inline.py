"""The inline backend: Ray's CPU layout in one process's threads (one single-threaded session per
core), units to whichever worker is free, every result recorded as it arrives, an error in one
worker stopping the job with the finished units kept."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from modnet_batch.engine import EngineSpec
from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution.driver import run_job
from modnet_batch.execution.inline import worker_specs
from modnet_batch.execution.processor import UnitProcessor
from modnet_batch.execution.worker_spec import WorkerSpec
from modnet_batch.options import JobConfig, load_job
from modnet_batch.results import RunDir
from modnet_batch.runner import Terminal


def _job(dataset: Path, out: Path, model: Path, **kw: object) -> JobConfig:
    return load_job(
        None,
        {"dataset": str(dataset), "out": str(out), "model": str(model), "backend": "inline", **kw},
    )


def _base(model: Path) -> WorkerSpec:
    return WorkerSpec(EngineSpec(str(model)), "seed-area", "run")


def test_on_the_cpu_one_single_threaded_session_per_core(tiny_model: Path, tmp_path: Path) -> None:
    job = _job(tmp_path, tmp_path / "out", tiny_model)
    specs = worker_specs(job, _base(tiny_model), cpus=4)
    assert [s.label for s in specs] == ["inline:cpu0", "inline:cpu1", "inline:cpu2", "inline:cpu3"]
    assert {(s.engine.threads, s.decode_threads, s.cpus) for s in specs} == {(1, 1, 1.0)}
    # --workers 1: one session on every core, named as before
    (one,) = worker_specs(
        _job(tmp_path, tmp_path / "o", tiny_model, workers=1), _base(tiny_model), cpus=4
    )
    assert (one.label, one.engine.threads, one.decode_threads) == ("inline:cpu", 4, 1)
    # --threads 2 on 4 cores: two workers of two threads
    two = worker_specs(
        _job(tmp_path, tmp_path / "o", tiny_model, threads=2), _base(tiny_model), cpus=4
    )
    assert [(s.engine.threads, s.cpus) for s in two] == [(2, 2.0), (2, 2.0)]


def test_an_accelerator_gets_one_session_that_every_core_feeds(
    tiny_model: Path, tmp_path: Path
) -> None:
    job = _job(tmp_path, tmp_path / "out", tiny_model, device="gpu")
    (spec,) = worker_specs(job, _base(tiny_model), cpus=6)
    assert (spec.label, spec.engine.threads, spec.decode_threads) == ("inline:gpu", 6, 6)


def test_every_worker_gets_units_and_every_result_is_recorded(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: dict[str, set[str]] = {}
    process = UnitProcessor.process

    def spy(self: UnitProcessor, unit: Any, on_image: Any = None) -> Any:
        threads.setdefault(self.spec.label, set()).add(threading.current_thread().name)
        return process(self, unit, on_image)

    monkeypatch.setattr(UnitProcessor, "process", spy)
    out = tmp_path / "run"
    outcome = run_job(_job(synth_dataset, out, tiny_model, workers=2, threads=1))
    assert outcome.complete and outcome.summary.images.total == 12
    per_device = outcome.summary.throughput.per_device
    assert set(per_device) == {"inline:cpu0", "inline:cpu1"}
    assert all(share.images > 0 for share in per_device.values())
    assert sum(share.images for share in per_device.values()) == 12
    assert set(threads) == {"inline:cpu0", "inline:cpu1"}
    assert all(name != "MainThread" for names in threads.values() for name in names)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["units"]["processed"] == len(RunDir(out).done_units())
    assert [w["threads"] for w in summary["workers"]] == [1, 1]


def test_an_error_in_one_worker_stops_the_job_and_keeps_what_finished(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    process = UnitProcessor.process
    seen: list[str] = []
    lock = threading.Lock()

    def second_fails(self: UnitProcessor, unit: Any, on_image: Any = None) -> Any:
        with lock:
            seen.append(unit.name)
            fail = len(seen) == 2
        if fail:
            raise ModnetBatchError(f"unit {unit.name} broke")
        return process(self, unit, on_image)

    monkeypatch.setattr(UnitProcessor, "process", second_fails)
    out = tmp_path / "run"
    job = _job(synth_dataset, out, tiny_model, workers=2, threads=1)
    with pytest.raises(ModnetBatchError, match=r"unit .* broke"):
        run_job(job)
    kept = RunDir(out).load_results()  # each finished unit's marker, with its rows
    broken = seen[1]
    assert kept and broken not in {r.unit for r in kept}
    kept_images = sum(len(r.rows) for r in kept)
    assert 0 < kept_images < 12
    monkeypatch.setattr(UnitProcessor, "process", process)
    again = run_job(job)  # the same command resumes: only what is missing runs
    assert again.complete and again.summary.images.total == 12
    assert again.summary.throughput.images == 12 - kept_images


def test_an_errors_notes_print_under_its_line() -> None:
    err = io.StringIO()
    term = Terminal(Console(file=io.StringIO()), Console(file=err, width=200))
    exc = ModnetBatchError("worker cpu0 could not start: boom")
    exc.add_note("Ray's logs: /tmp/run/logs/ray.log")
    term.error(exc)
    assert err.getvalue().splitlines() == [
        "error: worker cpu0 could not start: boom",
        "Ray's logs: /tmp/run/logs/ray.log",
    ]


def test_a_stopped_worker_stops_its_unit_at_the_next_image(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    from modnet_batch.data.dataset import Dataset
    from modnet_batch.execution.processor import Stopped
    from modnet_batch.results import WorkUnit

    ds = Dataset.open(synth_dataset)
    shard = ds.shards[0]
    unit = WorkUnit(shard.name, str(ds.shard_path(shard)), shard.rows)
    processor = UnitProcessor(
        WorkerSpec(EngineSpec(str(tiny_model)), "seed-area", str(tmp_path / "run"), batch_size=1)
    )
    seen: list[int] = []

    def on_image(n: int) -> None:
        seen.append(n)
        processor.stop()  # as the inline backend does when the job unwinds

    try:
        with pytest.raises(Stopped, match="worker cpu:0 was stopped"):
            processor.process(unit, on_image)
    finally:
        processor.close()
    assert 1 <= len(seen) < shard.rows


def test_an_error_while_recording_stops_the_workers_and_is_raised(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    from modnet_batch.execution import driver

    def broken(self: Any, result: Any) -> None:
        raise OSError(28, "No space left on device", str(tmp_path / "run" / "state"))

    job = _job(synth_dataset, tmp_path / "run", tiny_model, workers=2, threads=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(driver._Recorder, "__call__", broken)
        with pytest.raises(ModnetBatchError, match="no space left on its device"):
            run_job(job)
    # no worker thread is left behind
    assert not [t for t in threading.enumerate() if t.name.startswith("inline:cpu")]
