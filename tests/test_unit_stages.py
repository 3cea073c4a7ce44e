"""The unit loop's stages one at a time (execution.stages, prepare, device_prepare, infer,
finish, unit_loop), with small fakes for the engine's device: what each stage does with a good
image, a bad one, and the device's refusals."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from modnet_batch.data.dataset import Dataset, Record
from modnet_batch.engine import EngineSpec
from modnet_batch.engine.device_work import (
    DeviceBatch,
    DeviceFallback,
    DeviceOutcome,
    DeviceOutOfMemory,
    DevicePrepared,
    EncodedPhoto,
)
from modnet_batch.engine.onnxruntime import OnnxRuntimeEngine
from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution.device_prepare import DeviceGroups
from modnet_batch.execution.finish import Finisher
from modnet_batch.execution.infer import (
    DeviceInputInference,
    HostInference,
    ScoredInference,
    inference_for,
)
from modnet_batch.execution.prepare import Preparer
from modnet_batch.execution.processor import UnitProcessor
from modnet_batch.execution.stages import LOOP_STAGES, POOL_STAGES, Item, StageClock
from modnet_batch.execution.unit_loop import UnitRun
from modnet_batch.execution.worker_spec import DeviceStages, WorkerSpec
from modnet_batch.pipeline import DecodeMode, ImagePipeline, NetworkInput
from modnet_batch.protocol import Protocol
from modnet_batch.results import RunDir, WorkUnit
from modnet_batch.results.outputs import OutputKind, OutputSize, OutputSpec

EXECUTION = Path(__file__).parent.parent / "modnet_batch" / "execution"


def _jpeg(h: int = 120, w: int = 90, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 3)
    return bytes(cv2.imencode(".jpg", img)[1])


def _matte(h: int = 120, w: int = 90) -> bytes:
    m = np.zeros((h, w), np.uint8)
    m[h // 4 :, w // 4 : 3 * w // 4] = 255
    return bytes(cv2.imencode(".png", m)[1])


def _record(image_id: str = "a", data: bytes | None = None, matte: bool = True) -> Record:
    return Record(image_id, _jpeg() if data is None else data, _matte() if matte else None, 90, 120)


def _pipeline() -> ImagePipeline:
    return ImagePipeline("seed-area", DecodeMode.EXACT)


# --- stages: the clocks --------------------------------------------------------------------
def test_the_clock_keeps_the_loop_and_pool_views_apart() -> None:
    clock = StageClock()
    clock.wall["infer"] = 2.0
    clock.wall["read"] = 0.5
    clock.add_cpu({"decode": 1.5, "score": 0.25})
    clock.add_cpu({"decode": 0.5})
    assert clock.take("read") == 0.5 and clock.wall["read"] == 0.0
    stages = clock.stages(3.0, {"read_ahead": 0.5})
    assert set(LOOP_STAGES) | {f"cpu_{k}" for k in POOL_STAGES} | {"read_ahead"} == set(stages)
    assert stages["other"] == 1.0  # what no stage of the loop's thread claimed
    assert sum(stages[k] for k in LOOP_STAGES) == 3.0
    assert (stages["cpu_decode"], stages["cpu_score"], stages["read_ahead"]) == (2.0, 0.25, 0.5)


# --- prepare -------------------------------------------------------------------------------
def test_prepare_makes_the_network_input_or_an_error(tmp_path: Path) -> None:
    preparer = Preparer(_pipeline(), RunDir(tmp_path), OutputSpec())
    good = preparer.prepare(_record())
    assert good.error is None and good.inputs is not None and good.inputs.gt is not None
    assert good.inputs.shape[0] == 3 and set(good.cpu) == {"decode", "preprocess"}
    bad = preparer.prepare(_record("b", b"not an image"))
    assert bad.inputs is None and bad.error is not None
    unsafe = preparer.prepare(_record("../escape"))  # ids are checked before any use
    assert unsafe.inputs is None and isinstance(unsafe.error, ModnetBatchError)


def test_prepare_keeps_what_an_earlier_attempt_wrote(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.alpha.mkdir(parents=True)
    run.write_alpha("done", np.zeros((4, 4), np.uint8))
    preparer = Preparer(_pipeline(), run, OutputSpec(), keep_existing=True)
    assert preparer.prepare(_record("done")).kept
    assert not preparer.prepare(_record("new")).kept


def test_prepare_leaves_jpegs_to_the_device_and_decodes_their_mattes(tmp_path: Path) -> None:
    preparer = Preparer(_pipeline(), RunDir(tmp_path), OutputSpec(), on_device=True)
    record = _record()
    left = preparer.prepare(record)
    assert left.encoded is record.image and left.inputs is None and left.gt is not None
    png = bytes(cv2.imencode(".png", np.zeros((120, 90, 3), np.uint8))[1])
    on_cpu = preparer.prepare(_record("p", png))
    assert on_cpu.encoded is None and on_cpu.inputs is not None
    assert on_cpu.decoded_by.startswith("cpu: ")
    told = preparer.prepare(record, cpu_only="the device ran out of memory")
    assert told.inputs is not None and told.decoded_by == "cpu: the device ran out of memory"


# --- prepare on the device -----------------------------------------------------------------
@dataclass
class FakePreparer:
    """A device that prepares every photo as a zero input, unless `outcomes` says otherwise."""

    outcomes: dict[int, DeviceOutcome] = field(default_factory=dict)
    group_pixels: int = 25_000
    groups: list[int] = field(default_factory=list)
    name: str = "fake"

    def prepare(
        self, photos: Sequence[EncodedPhoto], protocol: Protocol, keep_rgb: bool
    ) -> list[DeviceOutcome]:
        self.groups.append(len(photos))
        first = sum(self.groups[:-1])
        return [
            self.outcomes.get(first + i, DevicePrepared(np.zeros((3, 8, 8), np.float32)))
            for i in range(len(photos))
        ]


def _groups(preparer: FakePreparer, tmp_path: Path) -> tuple[DeviceGroups, list[str]]:
    cpu = Preparer(_pipeline(), RunDir(tmp_path), OutputSpec())
    asked: list[str] = []

    def on_cpu(record: Record, reason: str) -> Item:
        asked.append(reason)
        return cpu.prepare(record, cpu_only=reason)

    return DeviceGroups(preparer, _pipeline(), on_cpu, max_images=4, keep_rgb=False), asked


def _left(i: int) -> Item:
    record = _record(f"i{i}")
    return Item(record=record, encoded=record.image)


def test_device_groups_are_bounded_by_pixels(tmp_path: Path) -> None:
    groups, _ = _groups(FakePreparer(group_pixels=25_000), tmp_path)  # two 90x120 photos
    items = [_left(i) for i in range(5)]
    cut = []
    for item in items:
        if groups.full_for(item):
            cut.append(len(groups.decode(StageClock())))
        groups.add(item)
    assert cut == [2, 2] and len(groups.group) == 1


def test_device_refusals_go_to_the_cpu_and_errors_become_rows(tmp_path: Path) -> None:
    preparer = FakePreparer(
        {1: DeviceFallback("the device decoded 89x120"), 2: ValueError("the resize failed")},
        group_pixels=10**9,
    )
    groups, asked = _groups(preparer, tmp_path)
    for i in range(3):
        groups.add(_left(i))
    clock = StageClock()
    ready = groups.decode(clock)
    assert [i.decoded_by for i in ready] == ["device", "cpu: the device decoded 89x120", "device"]
    assert ready[0].inputs is not None and ready[0].inputs.on_device is not None
    assert ready[1].inputs is not None and ready[1].inputs.tensor is not None
    assert isinstance(ready[2].error, ValueError) and ready[2].inputs is None
    assert asked == ["the device decoded 89x120"] and clock.cpu["decode"] > 0
    assert clock.wall["device_decode"] > 0 and not groups.group


def test_running_out_of_host_memory_on_the_device_stops_the_unit(tmp_path: Path) -> None:
    groups, _ = _groups(FakePreparer({0: MemoryError()}), tmp_path)
    groups.add(_left(0))
    with pytest.raises(MemoryError):
        groups.decode(StageClock())


# --- infer ---------------------------------------------------------------------------------
class FakeSession:
    """Outputs of `out_hw` (the input's size by default); no device work."""

    def __init__(self, out_hw: tuple[int, int] | None = None, work: Any = None) -> None:
        self.out_hw = out_hw
        self.work = work
        self.spec = EngineSpec("fake.onnx")

    @property
    def runs_on(self) -> str:
        return "fake"

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        h, w = self.out_hw or batch.shape[-2:]
        return np.full((batch.shape[0], 1, h, w), 0.5, np.float32)

    @property
    def device_work(self) -> Any:
        return self.work


def _host_items(n: int, hw: tuple[int, int] = (8, 6)) -> list[Item]:
    return [
        Item(_record(f"i{i}"), NetworkInput(np.zeros((3, *hw), np.float32), None)) for i in range(n)
    ]


def test_host_inference_and_a_model_of_another_output_size() -> None:
    clock = StageClock()
    done = HostInference(FakeSession()).infer(_host_items(3), clock)
    assert done.output.shape == (3, 1, 8, 6) and done.wrong_size("m.onnx") is None
    assert clock.wall["infer"] > 0
    wrong = HostInference(FakeSession(out_hw=(4, 3))).infer(_host_items(1), clock)
    error = wrong.wrong_size("m.onnx")
    assert error is not None and "output is 3x4 for a 6x8 input" in str(error)
    assert "m.onnx" in str(error)


@dataclass
class FakeWork:
    """A device that infers 0.5 everywhere; resizing back fails for index `oom`."""

    oom: int = -1
    resized: list[int] = field(default_factory=list)

    def open_preparer(self, pixels: int) -> FakePreparer:
        return FakePreparer(group_pixels=pixels)

    def infer(self, inputs: Sequence[Any]) -> DeviceBatch:
        x = np.stack([np.asarray(i) for i in inputs])
        out = np.full((len(inputs), 1, *x.shape[-2:]), 0.5, np.float32)
        return DeviceBatch(out, (x.shape[-2], x.shape[-1]), out)

    def resize_back(
        self, batch: DeviceBatch, index: int, height: int, width: int
    ) -> npt.NDArray[np.float32]:
        if index == self.oom:
            raise DeviceOutOfMemory("full")
        self.resized.append(index)
        return np.full((height, width), 0.5, np.float32)

    def run_scored(
        self, pixels: npt.NDArray[np.uint8], gt: npt.NDArray[np.uint8] | None, protocol: Protocol
    ) -> tuple[npt.NDArray[np.float32], list[dict[str, Any]] | None]:
        out = np.full((len(pixels), 1, *pixels.shape[1:3]), 0.5, np.float32)
        return out, None if gt is None else [{"mse": 0.0}] * len(pixels)


def test_the_engine_decides_where_a_batch_is_inferred() -> None:
    pipeline, outputs = _pipeline(), OutputSpec()
    host = FakeSession()
    assert isinstance(inference_for(host, pipeline, outputs, DeviceStages()), HostInference)
    assert isinstance(
        inference_for(host, pipeline, outputs, DeviceStages(prepare=True)), HostInference
    )
    device = FakeSession(work=FakeWork())
    assert isinstance(
        inference_for(device, pipeline, outputs, DeviceStages(prepare=True)), DeviceInputInference
    )
    assert isinstance(
        inference_for(device, pipeline, outputs, DeviceStages(score=True)), ScoredInference
    )


def test_outputs_are_resized_back_on_the_device_unless_it_is_full() -> None:
    work = FakeWork(oom=1)
    outputs = OutputSpec(kinds=(OutputKind.ALPHA_PNG,), size=OutputSize.SOURCE)
    items = _host_items(3)
    items[0].inputs = NetworkInput(None, None, on_device=np.zeros((3, 8, 6), np.float32))
    clock = StageClock()
    done = DeviceInputInference(work, _pipeline(), outputs).infer(items, clock)
    assert done.resized is not None
    assert [r is None for r in done.resized] == [False, True, False] and work.resized == [0, 2]
    assert done.resized[0] is not None and done.resized[0].shape == (120, 90)
    assert items[0].inputs is not None and items[0].inputs.on_device is None  # freed
    assert clock.wall["infer"] > 0 and clock.wall["device_decode"] > 0


def test_device_scoring_scores_a_batch_where_every_image_has_ground_truth() -> None:
    def item(gt: bool) -> Item:
        pixels = np.zeros((8, 6, 3), np.uint8)
        gt_pixels = np.zeros((8, 6), np.uint8) if gt else None
        return Item(_record(), NetworkInput(None, None, pixels=pixels, gt_pixels=gt_pixels))

    scored = ScoredInference(FakeWork(), _pipeline())
    assert scored.infer([item(True), item(True)], StageClock()).device_metrics is not None
    assert scored.infer([item(True), item(False)], StageClock()).device_metrics is None


# --- finish --------------------------------------------------------------------------------
def test_finish_scores_writes_or_returns_and_keeps_errors_as_rows(tmp_path: Path) -> None:
    pipeline = _pipeline()
    run = RunDir(tmp_path / "run")
    run.alpha.mkdir(parents=True)
    item = Preparer(pipeline, run, OutputSpec()).prepare(_record("a"))
    assert item.inputs is not None and item.inputs.tensor is not None
    output = np.full(item.inputs.tensor.shape[1:], 0.5, np.float32)
    written = Finisher(pipeline, run, OutputSpec()).finish(item, output)
    assert written.row.scored and written.row.error is None and not written.files
    assert run.alpha_path("a").is_file() and set(written.cpu) == set(POOL_STAGES) - {
        "decode",
        "preprocess",
    }
    returned = Finisher(pipeline, RunDir(tmp_path / "elsewhere"), OutputSpec(), return_files=True)
    sent = returned.finish(item, output)
    assert [f.rel for f in sent.files] == ["alpha/a.npz"]
    wrong = Finisher(pipeline, run, OutputSpec()).finish(item, output[:-1])
    assert wrong.row.error is not None and not wrong.cpu


# --- the loop ------------------------------------------------------------------------------
def test_the_loop_reads_ahead_no_more_than_its_bound(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    spec = WorkerSpec(EngineSpec(str(tiny_model)), "seed-area", str(tmp_path / "run"), batch_size=1)
    proc = UnitProcessor(spec)
    try:
        ds = Dataset.open(synth_dataset)
        shard = ds.shards[0]
        run = UnitRun(
            proc.parts, WorkUnit(shard.name, str(ds.shard_path(shard)), shard.rows), lambda: None
        )
        assert proc.parts.max_prepared == 2 < shard.rows
        run.read()
        assert len(run.preparing) == 2 and not run.exhausted
        run.run()
        run.drain()
        rows = len(run.rows)
    finally:
        proc.close()
    assert rows == shard.rows and not run.preparing and not run.finishing


# the unit loop's modules: none asks an engine what it is
LOOP_MODULES = (
    "processor",
    "unit_loop",
    "stages",
    "prepare",
    "device_prepare",
    "infer",
    "finish",
    "worker_spec",
    "shard_check",
    "pixel_batches",
    "batching",
)


def _imported(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
    return names


def test_the_loop_neither_imports_torch_nor_probes_engines() -> None:
    """What an engine does on its device is asked through engine.device_work, so the loop
    reads the same whichever engine runs; torch is imported only under engine/torch/."""
    for path in sorted(EXECUTION.glob("*.py")):
        tree = ast.parse(path.read_text())
        torch = [n for n in _imported(tree) if n.split(".")[0] == "torch" or "engine.torch" in n]
        assert not torch, (path.name, torch)
    for name in LOOP_MODULES:
        tree = ast.parse((EXECUTION / f"{name}.py").read_text())
        calls = [
            n.func.id
            for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
        ]
        assert "hasattr" not in calls and "getattr" not in calls, name


def test_onnxruntime_leaves_device_work_to_the_cpu(tiny_model: Path) -> None:
    assert OnnxRuntimeEngine().open(EngineSpec(str(tiny_model))).device_work is None
