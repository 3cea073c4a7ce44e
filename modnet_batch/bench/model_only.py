"""Model-only throughput: the inference sessions alone on preprocessed tensors held in memory.

Each session runs in its own thread (onnxruntime releases the GIL), all released at once by a
barrier after their warm-up; per-batch latencies and finish times give every figure.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from modnet_batch.bench.devices import Device
from modnet_batch.bench.stats import latency_summary, stability, window_rates
from modnet_batch.engine import EngineSpec, Session, open_session
from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution.batching import time_runs
from modnet_batch.execution.resources import available_cpus
from modnet_batch.options.bench import BenchConfig


@dataclass
class _Worker:
    label: str
    session: Session
    session_seconds: float
    first_result_s: float = 0.0
    warmup_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    error: BaseException | None = None

    def warm_up(self, x: npt.NDArray[np.float32], count: int) -> None:
        if count > 0:
            timing = time_runs(self.session.run, x, min_s=0.0, min_runs=count, warmup=0)
            self.warmup_s, self.first_result_s = sum(timing.latencies), timing.latencies[0]

    def run_timed(self, x: npt.NDArray[np.float32], cfg: BenchConfig, t0: float) -> None:
        """Batches until `cfg.iterations` of them, or else until `cfg.duration_s` after `t0`."""
        if cfg.iterations is not None:
            timing = time_runs(self.session.run, x, min_s=0.0, min_runs=cfg.iterations, warmup=0)
        else:
            left = t0 + cfg.duration_s - time.perf_counter()
            timing = time_runs(self.session.run, x, min_s=left, min_runs=0, warmup=0)
        self.latencies, self.ends = timing.latencies, timing.ends


def input_batch(samples: npt.NDArray[np.float32], batch: int) -> npt.NDArray[np.float32]:
    """`batch` network inputs (Bx3xHxW float32) cycling through `samples` (Nx3xHxW)."""
    idx = np.arange(batch) % samples.shape[0]
    return np.ascontiguousarray(samples[idx])


def measure(
    cfg: BenchConfig,
    model_path: str,
    devices: Sequence[Device],
    samples: npt.NDArray[np.float32],
    batch: int,
) -> dict[str, Any]:
    """Throughput and latency of `cfg.instances` sessions on each of `devices`, all at once."""
    x = input_batch(samples, batch)
    workers: list[_Worker] = []
    for dev in devices:
        for i in range(cfg.instances):
            t = time.perf_counter()
            session = open_session(
                EngineSpec(
                    model=model_path,
                    provider=dev.provider,
                    device_index=dev.index,
                    threads=dev.threads,
                    # as the pipeline's workers run it: no spinning on CPU
                    spin=dev.provider != "cpu",
                )
            )
            label = dev.label if cfg.instances == 1 else f"{dev.label}.{i}"
            workers.append(_Worker(label, session, time.perf_counter() - t))
    try:
        return _run(cfg, workers, devices, x)
    finally:
        workers.clear()  # drop the sessions before the next measurement opens its own


def _run(
    cfg: BenchConfig, workers: list[_Worker], devices: Sequence[Device], x: npt.NDArray[np.float32]
) -> dict[str, Any]:
    batch = int(x.shape[0])
    clock: dict[str, float] = {}

    def release() -> None:  # runs once, when every thread has warmed up
        clock["t0"] = time.perf_counter()

    barrier = threading.Barrier(len(workers), action=release)

    def loop(w: _Worker) -> None:
        try:
            w.warm_up(x, cfg.warmup)
            barrier.wait()
            w.run_timed(x, cfg, clock["t0"])
        except BaseException as exc:  # reported below; a broken barrier frees the others
            w.error = exc
            barrier.abort()

    threads = [threading.Thread(target=loop, args=(w,), daemon=True) for w in workers]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    failed = [
        w
        for w in workers
        if w.error is not None and not isinstance(w.error, threading.BrokenBarrierError)
    ]
    if failed:
        raise ModnetBatchError(
            f"model-only run on {failed[0].label} failed: {type(failed[0].error).__name__}: "
            f"{failed[0].error}"
        )
    t0 = clock["t0"]
    end = max(w.ends[-1] for w in workers if w.ends)
    images = batch * sum(len(w.ends) for w in workers)
    events = [(e, batch) for w in workers for e in w.ends]
    per_device: dict[str, Any] = {}
    for w in workers:
        span = (w.ends[-1] - t0) if w.ends else 0.0
        per_device[w.label] = {
            "images": batch * len(w.ends),
            "images_per_s": batch * len(w.ends) / span if span > 0 else 0.0,
            "latency": latency_summary(w.latencies),
        }
    threads_total = sum(d.threads for d in devices) * cfg.instances
    return {
        "batch_size": batch,
        "devices": len(devices),
        "instances": cfg.instances,
        "threads_per_device": devices[0].threads,
        "threads_total": threads_total,
        "oversubscribed": devices[0].provider == "cpu" and threads_total > available_cpus(),
        "images": images,
        "seconds": end - t0,
        "images_per_s": images / (end - t0),
        "per_device": per_device,
        "latency": latency_summary([lat for w in workers for lat in w.latencies]),
        "warmup": {
            "batches_per_session": cfg.warmup,
            "session_seconds": {w.label: w.session_seconds for w in workers},
            "first_result_s": {w.label: w.first_result_s for w in workers},
            "warmup_s": {w.label: w.warmup_s for w in workers},
        },
        "stability": stability(window_rates(events, t0, end)),
    }


def random_samples(height: int, width: int, n: int = 4, seed: int = 0) -> npt.NDArray[np.float32]:
    """Stand-in network inputs in [-1, 1] (the network's cost does not depend on the content)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, (n, 3, height, width)).astype(np.float32)
