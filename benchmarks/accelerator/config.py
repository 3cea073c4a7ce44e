"""The device benchmark's configuration and the engine sessions it opens (engine x precision x
torch mode)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from modnet_batch.engine import EngineSpec, Session, open_session
from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution.resources import available_cpus

BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


PROTOCOL = "seed-area"  # one network input size (288x480) for every image: batches of any size


@dataclass(frozen=True)
class Config:
    model: str
    src: str
    out: str
    device: str = "cpu"  # cpu or cuda
    engines: tuple[str, ...] = ("onnxruntime", "torch")
    precisions: tuple[str, ...] = ("fp32", "fp16", "bf16")
    batches: tuple[int, ...] = BATCHES
    seconds: float = 2.0  # timed span of each model-only configuration
    images: int = 16  # real images used (their network inputs cycle to fill a batch)
    e2e_images: int = 256  # images of each end-to-end job (the real ones replicated)
    fp16_model: str | None = None  # a built fp16 ONNX for onnxruntime's fp16
    # torch engine variants: eager, channels_last, cudagraphs (CUDA), compile (torch.compile)
    torch_modes: tuple[str, ...] = ("eager",)
    budget_s: float = 420.0  # stop starting new configurations after this
    decode_rounds: int = 3  # alternated cpu/device rounds of the `decoding` section (0: none)
    # the decoding section's --decoding cpu runs' decode_reduce: None is an unscored job's
    # default (auto: JPEGs decoded reduced where the protocol allows, while the device decodes
    # at full size); "off" decodes at full size as the device does (like for like)
    decoding_cpu_reduce: str | None = None


def log(msg: str) -> None:
    print(f"[device-bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


MODES: dict[str, dict[str, Any]] = {  # torch mode -> EngineSpec fields
    "eager": {},
    "channels_last": {"channels_last": True},
    "cudagraphs": {"compile": "cudagraphs"},
    "compile": {"compile": "compile"},
}


def engine_spec(
    cfg: Config, engine: str, precision: str, mode: str = "eager"
) -> tuple[EngineSpec, str] | str:
    """The session to open for engine x precision (x torch mode), or why it is skipped."""
    threads = available_cpus() if cfg.device == "cpu" else 1
    if engine == "onnxruntime":
        if precision == "bf16":
            return "onnxruntime runs the model's own precision; there is no bf16 build"
        model = cfg.model
        if precision == "fp16":
            if not cfg.fp16_model:
                return "no --fp16-model given (build one with `modnet-batch build fp16`)"
            model = cfg.fp16_model
        provider = "cuda" if cfg.device == "cuda" else "cpu"
        return EngineSpec(model, provider=provider, threads=threads, precision=precision), engine
    provider = "cuda" if cfg.device == "cuda" else "cpu"
    if mode not in MODES:
        return f"unknown torch mode {mode!r}; use one of {', '.join(MODES)}"
    if mode == "cudagraphs" and cfg.device != "cuda":
        return "CUDA graphs need a CUDA device"
    spec = EngineSpec(cfg.model, provider=provider, threads=threads, precision=precision)
    return replace(spec, **MODES[mode]), engine


def open_engine(
    cfg: Config, engine: str, precision: str, mode: str = "eager"
) -> tuple[Session | None, dict[str, Any]]:
    planned = engine_spec(cfg, engine, precision, mode)
    if isinstance(planned, str):
        return None, {"skipped": planned}
    spec, name = planned
    t0 = time.perf_counter()
    try:
        session = open_session(spec, name)
    except ModnetBatchError as exc:
        return None, {"skipped": str(exc)}
    return session, {"runs_on": session.runs_on, "open_s": round(time.perf_counter() - t0, 3)}
