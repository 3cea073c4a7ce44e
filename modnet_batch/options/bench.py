"""The options of `bench`: what it measures, where and for how long, like a model zoo's perf tool
flags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modnet_batch.errors import ModnetBatchError
from modnet_batch.options.job import BACKENDS
from modnet_batch.options.spec import (
    ADVANCED,
    DEVICES,
    INPUT,
    MEASURE,
    MODEL,
    OUTPUTS,
    check_all,
    option,
    plain,
)
from modnet_batch.pipeline import DecodeMode
from modnet_batch.protocol import DEFAULT_PROTOCOL, PROTOCOLS

MODES = ("model", "e2e", "both")


@dataclass(frozen=True)
class BenchConfig:
    # --- what to measure
    mode: str = option(
        "both",
        "model (session alone), e2e (a real submit), both.",
        choices=lambda: MODES,
        panel=MEASURE,
    )
    model: str | None = option(
        None,
        "A path, or a built variant fp32/fp16/int8; none = the reference model.",
        panel=MODEL,
    )
    protocol: str = option(
        DEFAULT_PROTOCOL,
        "seed-area, seed-linear or paper (fixes the input size).",
        choices=PROTOCOLS.keys,
        panel=INPUT,
    )
    dataset: str | None = option(
        None, "Dataset dir (from `ingest`); needed for end-to-end.", panel=INPUT
    )
    # --- where
    device: str = option("cpu", "cpu, gpu, or a Ray custom resource.", panel=DEVICES)
    provider: str | None = option(
        None, "onnxruntime provider; none = cuda on gpu, else cpu.", panel=MODEL
    )
    workers: tuple[int, ...] = option(
        (),
        "Device / CPU-worker counts to measure, e.g. 1,2; none = all.",
        min=1,
        panel=DEVICES,
    )
    threads: int | None = option(
        None, "Threads per CPU worker; none = split the cores.", min=1, panel=DEVICES
    )
    instances: int = option(1, "Sessions (actors) per device.", min=1, panel=DEVICES)
    # --- how long
    batch_sizes: tuple[int, ...] = option(
        (1, 4),
        "Batch sizes, comma-separated.",
        min=1,
        flag="--batch-size",
        panel=MEASURE,
    )
    duration_s: float = option(
        10.0,
        "Seconds per model-only measurement.",
        min=1e-3,
        flag="--duration",
        panel=MEASURE,
    )
    iterations: int | None = option(
        None, "Batches per session instead of --duration.", min=1, panel=MEASURE
    )
    warmup: int = option(2, "Warm-up batches per session (reported apart).", min=0, panel=MEASURE)
    rounds: int = option(1, "Interleaved repetitions; figures are medians.", min=1, panel=MEASURE)
    # --- the end-to-end pipeline
    backend: str = option(
        "ray", "End-to-end backend: ray or inline.", choices=lambda: BACKENDS, panel=DEVICES
    )
    decode_reduce: DecodeMode | None = option(
        None,
        "End-to-end decode: off, auto, 2, 4, 8; none = as submit.",
        parse=DecodeMode.parse,
        panel=ADVANCED,
    )
    decode_threads: int = option(1, "Decode/score threads per worker.", min=1, panel=DEVICES)
    naive: bool = option(
        False, "Also time the naive sequential loop on the same images.", panel=MEASURE
    )
    keep_runs: bool = option(False, "Keep the end-to-end run dirs.", panel=OUTPUTS)
    out: str = option("bench/bench.json", "JSON file to write.", panel=OUTPUTS)

    def to_dict(self) -> dict[str, Any]:
        return plain(self)


def validate(cfg: BenchConfig) -> None:
    """Every option's type and range, then the rules between options."""
    check_all(cfg, "bench option")
    if cfg.mode != "model" and not cfg.dataset:
        raise ModnetBatchError(
            "the end-to-end bench needs --dataset DIR (made by `modnet-batch ingest`); "
            "or use --mode model"
        )
    if cfg.naive and not cfg.dataset:
        raise ModnetBatchError("--naive needs --dataset DIR")
    if not cfg.batch_sizes:
        raise ModnetBatchError("give at least one batch size")
