"""What one worker needs to run work units: the engine, the protocol, where results go, and
how its stages run (decoding, scoring, outputs); small, frozen and picklable (it travels to Ray
actors)."""

from __future__ import annotations

from dataclasses import dataclass, field

from modnet_batch.engine import DEFAULT_ENGINE, EngineSpec
from modnet_batch.pipeline import DecodeMode
from modnet_batch.results.outputs import OutputSpec


@dataclass(frozen=True)
class DeviceStages:
    """The stages besides inference that run on the engine's device (engine.device_work);
    by default none: the pool threads prepare and finish every image."""

    # decode, resize and normalise photos there, and resize outputs back there
    # (`--decoding device`), in groups of at most `group_pixels` decoded pixels
    prepare: bool = False
    group_pixels: int = 128_000_000
    # normalise and score there (`--scoring device`, seed protocols): uint8 pixels travel, the
    # metrics but Conn are computed there, Conn stays on the pool threads
    score: bool = False


@dataclass(frozen=True)
class Writes:
    """What a worker writes per image, and where."""

    # by default npz at the scoring size; frozen, so shared safely
    outputs: OutputSpec = field(default_factory=OutputSpec)
    outputs_dir: str | None = None  # where image files go; None = <run_dir>/outputs
    # a resumed job without ground truth: an image whose every output file exists is done (files
    # are complete or absent, and the run owns its output folder), so it is not matted again
    keep_existing: bool = False
    # per-image files go back to the driver with the unit's result instead of being written
    # here (a worker that cannot see the run directory: --results-via)
    return_files: bool = False


@dataclass(frozen=True)
class WorkerSpec:
    """Everything one worker needs; small and picklable (it travels to Ray actors)."""

    engine: EngineSpec
    protocol: str
    run_dir: str
    decode: DecodeMode = DecodeMode.EXACT  # resolved for the job (DecodeMode.resolve)
    batch_size: int = 4  # 0: measured when the session opens (execution/batching.py)
    tune_hw: tuple[int, int] = (1080, 1920)  # the (H, W) of a photo to measure batches with
    decode_threads: int = 1
    cpus: float = 1.0  # the CPUs Ray holds for this worker (decode_threads feed from them)
    label: str = "cpu:0"
    engine_name: str = DEFAULT_ENGINE
    writes: Writes = field(default_factory=Writes)
    on_device: DeviceStages = field(default_factory=DeviceStages)
