"""The devices a benchmark spreads over: CPU workers of T threads, GPUs, or accelerator units."""

from __future__ import annotations

from dataclasses import dataclass

from modnet_batch.bench.environment import gpu_names
from modnet_batch.engine import default_provider
from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution.resources import available_cpus, cpu_split
from modnet_batch.options.bench import BenchConfig


@dataclass(frozen=True)
class Device:
    """One device: a CPU worker (`threads` intra-op threads) or one accelerator."""

    label: str
    provider: str
    index: int
    threads: int


def provider_for(cfg: BenchConfig) -> str:
    return default_provider(cfg.device, cfg.provider)


def cpu_threads(cfg: BenchConfig) -> int:
    """Threads per CPU worker: given; else, with --workers, the cores split over the largest
    count; else 1 (one single-threaded worker per core, as `submit` defaults to)."""
    workers = max(cfg.workers) * cfg.instances if cfg.workers else None
    return cpu_split(workers, cfg.threads).threads


def all_devices(cfg: BenchConfig) -> list[Device]:
    """Every device the largest measurement uses, in order; the first n make a count of n."""
    provider = provider_for(cfg)
    if cfg.device == "cpu":
        threads = cpu_threads(cfg)
        count = max(cfg.workers) if cfg.workers else max(1, available_cpus() // threads)
        return [Device(f"cpu{i}", provider, 0, threads) for i in range(count)]
    if cfg.workers:
        count = max(cfg.workers)
    elif cfg.device == "gpu":
        count = len(gpu_names())
    else:
        count = 1
    if count == 0:
        raise ModnetBatchError(
            "no GPU found (nvidia-smi lists none); use --device cpu or give --workers N"
        )
    name = "gpu" if cfg.device == "gpu" else cfg.device
    return [Device(f"{name}{i}", provider, i, cfg.threads or 1) for i in range(count)]


def device_counts(cfg: BenchConfig, devices: list[Device]) -> list[int]:
    """The device counts to measure, ascending: the given ones, else 1 and all of them."""
    counts = sorted(set(cfg.workers)) if cfg.workers else sorted({1, len(devices)})
    return counts
