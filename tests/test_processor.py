"""The shard pipeline: time accounting, prepared inputs, the auto reduce factor, queued shards."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from modnet_batch.data.dataset import Dataset, iter_records
from modnet_batch.data.decode import decode_matte
from modnet_batch.data.ingest import ingest
from modnet_batch.data.synthetic import make_synthetic
from modnet_batch.engine import EngineSpec
from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution.processor import UnitProcessor
from modnet_batch.execution.stages import LOOP_STAGES, POOL_STAGES
from modnet_batch.execution.worker_spec import WorkerSpec
from modnet_batch.pipeline import DecodeMode, auto_reduce
from modnet_batch.protocol import get_protocol
from modnet_batch.results import UnitResult, WorkUnit


def _tasks(dataset: Path) -> list[WorkUnit]:
    ds = Dataset.open(dataset)
    return [WorkUnit(s.name, str(ds.shard_path(s)), s.rows) for s in ds.shards]


def _run_all(dataset: Path, model: Path, run: Path, **spec: object) -> list[UnitResult]:
    proc = UnitProcessor(WorkerSpec(EngineSpec(str(model)), "seed-area", str(run), **spec))  # type: ignore[arg-type]
    try:
        return [proc.process(t) for t in _tasks(dataset)]
    finally:
        proc.close()


@pytest.fixture(scope="module")
def prepared_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same synthetic source ingested as is and with --prepare seed-area."""
    base = tmp_path_factory.mktemp("prep")
    src = make_synthetic(base / "src", n=6, height=200, width=150, seed=5)
    ingest(src, base / "plain", shard_size=4)
    ingest(src, base / "prepared", shard_size=4, prepare="seed-area")
    return base / "plain", base / "prepared"


def test_loop_stages_add_up_to_the_shard_seconds(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    results = _run_all(synth_dataset, tiny_model, tmp_path / "run", batch_size=2)
    assert sum(r.images for r in results) == 12
    for r in results:
        assert set(LOOP_STAGES) <= set(r.stages)
        assert {f"cpu_{k}" for k in POOL_STAGES} <= set(r.stages)
        assert all(v >= 0.0 for v in r.stages.values())
        assert sum(r.stages[k] for k in LOOP_STAGES) == pytest.approx(r.seconds, rel=1e-9)
        assert r.stages["cpu_decode"] > 0.0 and r.stages["cpu_score"] > 0.0


def test_prepared_inputs_give_the_exact_path_results(
    prepared_pair: tuple[Path, Path], tiny_model: Path, tmp_path: Path
) -> None:
    plain, prepared = prepared_pair
    exact = _run_all(plain, tiny_model, tmp_path / "exact")
    fast = _run_all(prepared, tiny_model, tmp_path / "fast")
    rows = [row.to_record() for r in exact for row in r.rows]
    assert rows == [row.to_record() for r in fast for row in r.rows]  # every metric bit-identical
    assert all(row["error"] is None and row["mse"] is not None for row in rows)
    assert [r.accumulator for r in exact] == [r.accumulator for r in fast]
    for row in rows:
        name = f"{row['image_id']}.npz"
        with (
            np.load(tmp_path / "exact" / "alpha" / name) as a,
            np.load(tmp_path / "fast" / "alpha" / name) as b,
        ):
            assert np.array_equal(a["alpha"], b["alpha"])
    assert sum(r.stages["cpu_decode"] for r in fast) < sum(r.stages["cpu_decode"] for r in exact)


def test_prepared_shards_read_only_for_their_protocol(prepared_pair: tuple[Path, Path]) -> None:
    _, prepared = prepared_pair
    meta = Dataset.open(prepared).meta["prepared"]
    assert meta["protocol"] == "seed-area" and meta["image_shape"] == [480, 288, 3]
    assert meta["bytes"] == 6 * (480 * 288 * 3 + 480 * 288)
    path = Dataset.open(prepared).shard_path(Dataset.open(prepared).shards[0])
    rec = next(iter_records(path, prepared_for="seed-area"))
    assert rec.prepared is not None and rec.image == b"" and rec.matte is None
    assert rec.prepared.image.shape == (480, 288, 3) and rec.prepared.matte is not None
    assert not rec.prepared.image.flags.writeable  # a view into the Arrow buffer
    other = next(iter_records(path, prepared_for="seed-linear"))
    assert other.prepared is None and bytes(other.image[:3]) == b"\xff\xd8\xff"


def test_prepare_refuses_a_protocol_without_a_fixed_size(tmp_path: Path) -> None:
    src = make_synthetic(tmp_path / "src", n=1, height=96, width=64)
    with pytest.raises(ModnetBatchError, match=r"paper.*cannot be prepared"):
        ingest(src, tmp_path / "ds", prepare="paper")
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize(
    ("protocol", "height", "width", "factor"),
    [
        ("seed-area", 4000, 3000, 4),  # 1000x750 >= 2 x 480x288, /8 is not
        ("seed-area", 6000, 4000, 4),  # /8 = 750 rows < 960
        ("seed-area", 8000, 5000, 8),
        ("seed-area", 2000, 1500, 2),
        ("seed-area", 1500, 1000, 1),  # /2 = 750 rows < 960
        ("seed-area", 3000, 1100, 1),  # /2 = 550 columns < 576
        ("paper", 1000, 1500, 1),  # network input 512x768 needs >= 1024 rows
        ("paper", 4000, 6000, 2),  # /4 = 1000 rows < 2 x 512
    ],
)
def test_auto_reduce_keeps_twice_the_network_input(
    protocol: str, height: int, width: int, factor: int
) -> None:
    assert auto_reduce(get_protocol(protocol), height, width) == factor


def test_auto_decode_runs_and_changes_little(tiny_model: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for sub in ("image", "matte"):
        (tmp_path / "src" / sub).mkdir(parents=True)
    for i in range(2):  # 2000x1200 JPEGs: auto decodes them at 1000x600
        small = rng.integers(0, 256, (20, 12, 3), np.uint8)
        rgb = cv2.resize(small, (1200, 2000), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(tmp_path / "src" / "image" / f"im{i}.jpg"), rgb)
        ext = ".jpg" if i == 0 else ".png"  # a JPEG matte is reduced too, a PNG one is not
        cv2.imwrite(str(tmp_path / "src" / "matte" / f"im{i}{ext}"), rgb[:, :, 0])
    ingest(tmp_path / "src", tmp_path / "ds", shard_size=4)
    exact = _run_all(tmp_path / "ds", tiny_model, tmp_path / "a")[0]
    auto = _run_all(tmp_path / "ds", tiny_model, tmp_path / "b", decode=DecodeMode.AUTO)[0]
    assert auto.failed == 0 and auto.images == 2
    assert auto.stages["cpu_decode"] > 0.0
    for e, a in (
        (e.to_record(), a.to_record()) for e, a in zip(exact.rows, auto.rows, strict=True)
    ):
        assert a["mse"] == pytest.approx(e["mse"], abs=1e-3)  # decoded at 1000x600
        assert a["mse"] != e["mse"]  # it did decode reduced


@pytest.mark.parametrize(
    ("protocol", "height", "width", "factor"),
    [("seed-area", 4000, 3000, 4), ("seed-area", 1500, 1000, 1), ("paper", 8000, 6000, 1)],
)
def test_auto_reduce_of_the_matte_follows_the_scoring_size(
    protocol: str, height: int, width: int, factor: int
) -> None:
    assert auto_reduce(get_protocol(protocol), height, width, matte=True) == factor


@pytest.mark.parametrize("ext", [".jpg", ".png"])
@pytest.mark.parametrize("reduce", [1, 2, 4, 8])
def test_decode_matte_reduce_gives_ceil_size(ext: str, reduce: int) -> None:
    gray = np.random.default_rng(reduce).integers(0, 256, (61, 45), np.uint8)
    _, buf = cv2.imencode(ext, gray)
    out = decode_matte(buf.tobytes(), name=f"m{ext}", reduce=reduce)
    assert out.shape == (-(-61 // reduce), -(-45 // reduce)) and out.dtype == np.uint8


def test_a_queued_shard_reads_ahead_and_waits_its_turn(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    proc = UnitProcessor(
        WorkerSpec(EngineSpec(str(tiny_model)), "seed-area", str(tmp_path / "run"))
    )
    first, second = _tasks(synth_dataset)[:2]
    try:
        alone = proc.process(first)
        proc._loop_lock.acquire()  # as if another shard were running
        out: list[UnitResult] = []
        worker = threading.Thread(target=lambda: out.append(proc.process(second)))
        worker.start()
        deadline = time.monotonic() + 30
        while proc._waiting == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert proc._waiting == 1 and not out  # it waits for the loop ...
        proc._loop_lock.release()
        worker.join(timeout=30)
    finally:
        proc.close()
    (queued,) = out
    assert queued.images == 4 and queued.failed == 0
    assert queued.stages["read_ahead"] > 0.0  # ... having read its shard meanwhile
    assert sum(queued.stages[k] for k in LOOP_STAGES) == pytest.approx(queued.seconds, rel=1e-9)
    assert alone.images == 4 and "read_ahead" not in alone.stages


def test_cli_ingest_prepare_reports_its_cost(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from modnet_batch.cli import app

    src = make_synthetic(tmp_path / "src", n=2, height=96, width=64)
    result = CliRunner().invoke(
        app, ["ingest", str(src), str(tmp_path / "ds"), "--prepare", "seed-area"]
    )
    assert result.exit_code == 0, result.output
    assert "prepared for seed-area" in result.output
    assert Dataset.open(tmp_path / "ds").meta["prepared"]["protocol"] == "seed-area"
