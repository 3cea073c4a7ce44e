"""What a benchmark measures: a frozen configuration, like a model zoo's perf tool flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from modnet_batch.errors import ModnetBatchError

MODES = ("model", "e2e", "both")


@dataclass(frozen=True)
class BenchConfig:
    # --- what to measure
    mode: str = "both"  # model (session alone on in-memory tensors) | e2e (a real submit) | both
    model: str | None = None  # path, built variant fp32/fp16/int8, None = the reference model
    protocol: str = "seed-area"  # fixes the network input size (and the e2e pipeline)
    dataset: str | None = None  # needed for e2e; model-only takes its input tensors from it
    # --- where
    device: str = "cpu"  # cpu | gpu | a Ray custom resource naming one accelerator unit
    provider: str | None = None  # onnxruntime provider; default cpu->cpu, gpu->cuda
    workers: tuple[int, ...] = ()  # device / CPU-worker counts to measure; () = all of them
    threads: int | None = None  # intra-op threads per CPU worker; None = split the cores
    instances: int = 1  # sessions (actors) per device, like the perf tool's -i
    # --- how long
    batch_sizes: tuple[int, ...] = (1, 4)
    duration_s: float = 10.0  # timed span of each model-only measurement
    iterations: int | None = None  # batches per session instead of a duration
    warmup: int = 2  # batches per session run before timing, reported apart
    rounds: int = 1  # interleaved repetitions of every measurement; figures are medians
    # --- the end-to-end pipeline
    backend: str = "ray"  # ray (embedded local Ray, as `submit`) | inline (one process)
    decode_reduce: str = "auto"  # as `submit`
    decode_threads: int = 1
    naive: bool = False  # also time the naive sequential loop on the same images and cores
    keep_runs: bool = False  # keep the e2e run directories (alpha files) under the output
    out: str = "bench/bench.json"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def validate(cfg: BenchConfig) -> None:
    """Raise ModnetBatchError naming the first bad option."""
    if cfg.mode not in MODES:
        raise ModnetBatchError(f"bench mode {cfg.mode!r} is unknown; use one of {', '.join(MODES)}")
    if cfg.mode != "model" and not cfg.dataset:
        raise ModnetBatchError(
            "the end-to-end bench needs --dataset DIR (made by `modnet-batch ingest`); "
            "or use --mode model"
        )
    if cfg.naive and not cfg.dataset:
        raise ModnetBatchError("--naive needs --dataset DIR")
    for name in ("batch_sizes", "workers"):
        bad = [v for v in getattr(cfg, name) if v < 1]
        if bad:
            raise ModnetBatchError(f"{name} must be positive integers, got {bad}")
    if not cfg.batch_sizes:
        raise ModnetBatchError("give at least one batch size")
    for name in ("instances", "rounds", "decode_threads"):
        if getattr(cfg, name) < 1:
            raise ModnetBatchError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.warmup < 0:
        raise ModnetBatchError(f"warmup must be >= 0, got {cfg.warmup}")
    if cfg.iterations is None and cfg.duration_s <= 0:
        raise ModnetBatchError(f"duration must be positive, got {cfg.duration_s}")
    if cfg.iterations is not None and cfg.iterations < 1:
        raise ModnetBatchError(f"iterations must be at least 1, got {cfg.iterations}")
    if cfg.threads is not None and cfg.threads < 1:
        raise ModnetBatchError(f"threads must be at least 1, got {cfg.threads}")
    if cfg.backend not in {"ray", "inline"}:
        raise ModnetBatchError(f"backend {cfg.backend!r} is unknown; use 'ray' or 'inline'")
