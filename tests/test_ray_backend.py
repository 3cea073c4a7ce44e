"""The Ray backend on a real local Ray: exact equality with the inline run, device pinning."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from modnet_batch.engine import EngineSpec
from modnet_batch.execution.driver import run_job
from modnet_batch.options import JobConfig, load_job

pytestmark = pytest.mark.ray


def _job(dataset: Path, out: Path, model: Path, **kw: object) -> JobConfig:
    return load_job(None, {"dataset": str(dataset), "out": str(out), "model": str(model), **kw})


@pytest.fixture(scope="module")
def inline_run(
    synth_dataset: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("inline") / "run"
    run_job(_job(synth_dataset, out, tiny_model, backend="inline"))
    return out


@pytest.fixture(scope="module")
def fake_device_ray() -> Iterator[None]:
    """A local Ray advertising 2 fake GPUs and 2 units of a custom accelerator resource."""
    import ray

    from modnet_batch.execution.ray_join import start_local_ray

    start_local_ray(num_cpus=2, num_gpus=2, resources={"fake_npu": 2})
    yield
    ray.shutdown()


def _same_results(a: Path, b: Path) -> None:
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (a, b))
    assert sa["metrics"] == sb["metrics"]  # bit-identical floats, not approx
    assert sa["accumulator"] == sb["accumulator"]
    assert sa["images"] == sb["images"]
    assert pq.read_table(a / "metrics.parquet").equals(pq.read_table(b / "metrics.parquet"))
    assert sorted(p.name for p in (a / "alpha").iterdir()) == sorted(
        p.name for p in (b / "alpha").iterdir()
    )


def test_embedded_ray_equals_inline_exactly(
    synth_dataset: Path, tiny_model: Path, inline_run: Path, tmp_path: Path
) -> None:
    outcome = run_job(_job(synth_dataset, tmp_path / "run", tiny_model, threads=1))
    assert outcome.complete
    _same_results(inline_run, tmp_path / "run")
    per_device = outcome.summary.throughput.per_device
    assert len(per_device) == 2  # 2 CPUs / 1 thread = 2 workers
    assert sum(d.images for d in per_device.values()) == 12
    assert {w["provider"] for w in outcome.summary.workers} == {"CPUExecutionProvider"}


def test_one_actor_per_fake_gpu_with_distinct_devices(
    fake_device_ray: None, synth_dataset: Path, tiny_model: Path, inline_run: Path, tmp_path: Path
) -> None:
    # the CPU provider stands in for CUDA: the scheduling and pinning are what is tested
    outcome = run_job(
        _job(synth_dataset, tmp_path / "run", tiny_model, device="gpu", provider="cpu")
    )
    workers = outcome.summary.workers
    gpu_ids = [tuple(w["accelerators"]["GPU"]) for w in workers]
    assert len(workers) == 2 and len(set(gpu_ids)) == 2, gpu_ids
    assert all(w["device_index"] == 0 for w in workers)  # CUDA_VISIBLE_DEVICES maps it to 0
    _same_results(inline_run, tmp_path / "run")


def test_custom_accelerator_resource_gets_distinct_indices(
    fake_device_ray: None, synth_dataset: Path, tiny_model: Path, inline_run: Path, tmp_path: Path
) -> None:
    outcome = run_job(
        _job(
            synth_dataset,
            tmp_path / "run",
            tiny_model,
            device="fake_npu",
            provider="cpu",
            instances=2,
        )
    )
    workers = outcome.summary.workers
    assert len(workers) == 4  # 2 units x 2 instances
    assert sorted(w["device_index"] for w in workers) == [0, 0, 1, 1]
    _same_results(inline_run, tmp_path / "run")


def test_missing_resource_is_a_clear_error(
    fake_device_ray: None, synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    from modnet_batch.errors import ModnetBatchError

    with pytest.raises(ModnetBatchError, match="no 'tpu_v9' resource"):
        run_job(_job(synth_dataset, tmp_path / "run", tiny_model, device="tpu_v9"))


@pytest.mark.parametrize(
    ("options", "layout"),
    [
        ({}, [1, 1]),  # default: one single-threaded worker per core
        ({"workers": 1}, [2]),  # --workers alone spreads the cores over them
        ({"threads": 2}, [2]),
        ({"workers": 1, "threads": 1}, [1]),
    ],
)
def test_cpu_worker_layout(
    fake_device_ray: None, tiny_model: Path, options: dict[str, int], layout: list[int]
) -> None:
    from modnet_batch.execution.ray_plan import plan_actors
    from modnet_batch.execution.worker_spec import WorkerSpec

    job = load_job(None, {"dataset": "d", "out": "r", **options})
    plans = plan_actors(
        job, WorkerSpec(engine=EngineSpec(str(tiny_model)), protocol="seed-area", run_dir="r")
    )
    assert [p.spec.engine.threads for p in plans] == layout
    assert [p.options["num_cpus"] for p in plans] == layout


def test_a_changed_shard_fails_on_ray_without_retries(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """A shard that changed after ingest is a deterministic failure: named, never retried."""
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(synth_dataset, ds)
    shard = sorted((ds / "shards").glob("*.parquet"))[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    outcome = run_job(_job(ds, tmp_path / "run", tiny_model, threads=1))
    assert not outcome.complete
    assert outcome.summary.units.failed == [shard.stem]
    assert outcome.summary.units.retries == 0
    assert outcome.summary.images.scored == 8


def test_one_shard_keeps_every_worker_busy(
    fake_device_ray: None, tiny_model: Path, tmp_path: Path
) -> None:
    """A dataset of one shard (the default --shard-size 64) is cut into units of row groups:
    both CPU workers get images, and the results equal the single-process run's."""
    from modnet_batch.data.ingest import ingest
    from modnet_batch.data.synthetic import make_synthetic

    src = make_synthetic(tmp_path / "src", n=16, height=96, width=64, seed=8)
    ingest(src, tmp_path / "ds", row_group_rows=4)
    run_job(_job(tmp_path / "ds", tmp_path / "inline", tiny_model, backend="inline"))
    outcome = run_job(_job(tmp_path / "ds", tmp_path / "run", tiny_model, threads=1))
    per_device = outcome.summary.throughput.per_device
    assert len(per_device) == 2 and all(d.images > 0 for d in per_device.values())
    assert outcome.summary.units.total == 4  # ceil(16 / (4 * 2)) = 2 images: one row group each
    _same_results(tmp_path / "inline", tmp_path / "run")


def _files(run: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.parent.name in ("alpha", "outputs", "alpha-png", "cutout")
    }


def test_results_via_driver_equal_results_written_by_workers(
    synth_dataset: Path, tiny_model: Path, inline_run: Path, tmp_path: Path
) -> None:
    """Workers that send their files back (no shared file system) give the same run, byte for
    byte, as workers writing them, npz and image outputs alike."""
    runs = {}
    for via in ("storage", "driver"):
        out = tmp_path / via
        outcome = run_job(
            _job(
                synth_dataset,
                out,
                tiny_model,
                threads=1,
                results_via=via,
                output="npz,alpha-png,cutout",
            )
        )
        assert outcome.complete
        assert {w["results_via"] for w in outcome.summary.workers} == {via}
        runs[via] = out
    _same_results(runs["storage"], runs["driver"])
    files = _files(runs["driver"])
    assert len([f for f in files if f.endswith(".npz")]) == 12
    assert len([f for f in files if f.endswith(".png")]) == 24  # alpha-png and cutout
    assert files == _files(runs["storage"])
    assert not list((runs["driver"] / "state").glob("probe-*"))  # the probe is removed


def test_workers_that_see_the_run_write_it_themselves(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    outcome = run_job(_job(synth_dataset, tmp_path / "run", tiny_model, threads=1))
    assert {w["results_via"] for w in outcome.summary.workers} == {"storage"}  # auto, one node


def test_device_decoding_on_ray_workers(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """`--decoding device` on Ray actors (torch on the CPU: the OpenCV stand-in decoder): every
    worker reports its decoder, the counts add up over workers, and the metrics are those of
    the same job inline (torch's CPU kernels may sum in another order with other thread
    counts: within 1e-6 relative)."""
    pytest.importorskip("torch", reason="the torch engine needs PyTorch (make install has it)")
    kw: dict[str, object] = {"engine": "torch", "decoding": "device", "decode_check": 0}
    ray_run = run_job(_job(synth_dataset, tmp_path / "ray", tiny_model, threads=1, **kw))
    inline = run_job(_job(synth_dataset, tmp_path / "inline", tiny_model, backend="inline", **kw))
    assert ray_run.complete and inline.complete
    assert len(ray_run.summary.workers) == 2
    assert {w["decoder"] for w in ray_run.summary.workers} == {"opencv (cpu stand-in)"}
    assert ray_run.summary.decoding is not None and inline.summary.decoding is not None
    assert ray_run.summary.decoding["device"] == inline.summary.decoding["device"] == 12
    for k, v in inline.summary.metrics.items():
        assert ray_run.summary.metrics[k] == pytest.approx(v, rel=1e-6), k
