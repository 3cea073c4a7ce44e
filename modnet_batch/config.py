"""Job configuration: frozen dataclasses, resolved with the precedence CLI > YAML > defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from modnet_batch.errors import ModnetBatchError


@dataclass(frozen=True)
class JobConfig:
    # --- what to run
    dataset: str = ""  # dataset dir made by `modnet-batch ingest`
    model: str | None = None  # path, variant name (fp32/fp16/int8) or None = the reference model
    protocol: str = "seed-area"  # evaluation protocol (seed-area, seed-linear, paper)
    out: str = ""  # run directory
    # --- where to run it
    address: str | None = None  # Ray cluster address; None = embedded local Ray
    backend: str = "ray"  # "ray" or "inline" (one process, no Ray: debugging and reference runs)
    device: str = "cpu"  # cpu | gpu | a Ray custom resource naming one accelerator unit
    provider: str | None = None  # onnxruntime provider short name; default: cpu->cpu, gpu->cuda
    workers: int | None = (
        None  # devices (GPU/custom) or CPU workers to use; None = all / fill the CPUs
    )
    threads: int | None = (
        None  # CPU threads per worker; None = split the CPUs without oversubscribing
    )
    instances: int = 1  # actors per device, like a model zoo's perf tool `-i`
    # --- how
    batch_size: int | None = None  # images per inference; None = 1 on CPU, 4 on accelerators
    decode_threads: int = 1  # per actor, overlapping decode/preprocess with inference
    # JPEG DCT-domain downscale: auto (where it keeps metrics within 1e-4) | off (exact) | 2 | 4 | 8
    decode_reduce: str = "auto"
    shards_in_flight: int = 2  # per actor: one running, one queued
    max_retries: int = 3  # per shard, after a worker dies
    dashboard: bool = False  # embedded Ray only
    runtime_env: dict[str, Any] = field(default_factory=dict)  # extra Ray runtime_env for --address

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_job(
    yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> JobConfig:
    """Defaults, then the YAML file's keys, then the non-None CLI overrides."""
    values: dict[str, Any] = {}
    known = {f.name for f in fields(JobConfig)}
    if yaml_path is not None:
        path = Path(yaml_path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ModnetBatchError(f"job file {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ModnetBatchError(f"job file {path} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ModnetBatchError(f"job file {path} must be a mapping of keys to values")
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise ModnetBatchError(
                f"job file {path} has unknown keys {unknown}; known keys: {sorted(known)}"
            )
        values.update(loaded)
    for key, value in (overrides or {}).items():
        if key not in known:
            raise ModnetBatchError(f"unknown job option {key!r}")
        if value is not None:
            values[key] = value
    if "decode_reduce" in values:
        values["decode_reduce"] = str(values["decode_reduce"])  # YAML may say 4, the CLI "4"
    job = JobConfig(**values)
    validate(job)
    return job


def validate(job: JobConfig) -> None:
    if not job.dataset:
        raise ModnetBatchError(
            "no dataset given; pass --dataset DIR (made by `modnet-batch ingest`)"
        )
    if not job.out:
        raise ModnetBatchError("no run directory given; pass --out RUN")
    from modnet_batch.protocol import get_protocol

    get_protocol(job.protocol)  # an unknown name fails here, listing the known ones
    if job.backend not in {"ray", "inline"}:
        raise ModnetBatchError(f"backend {job.backend!r} is unknown; use 'ray' or 'inline'")
    for name in ("batch_size", "instances", "decode_threads", "shards_in_flight"):
        if getattr(job, name) is not None and getattr(job, name) < 1:
            raise ModnetBatchError(f"{name} must be at least 1, got {getattr(job, name)}")
    if job.max_retries < 0:
        raise ModnetBatchError(f"max_retries must be >= 0, got {job.max_retries}")
    if job.decode_reduce not in {"auto", "off", "1", "2", "4", "8"}:
        raise ModnetBatchError(
            f"decode_reduce {job.decode_reduce!r} is unknown; use auto, off, 2, 4 or 8"
        )


def dump_job(job: JobConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(job.to_dict(), sort_keys=False))
