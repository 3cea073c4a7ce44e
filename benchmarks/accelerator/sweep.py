"""Sections 2 and 3 of the device benchmark: images/s and latency of each engine x precision x
batch size on network inputs held in memory, and each one's metric deltas to the reference."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.accelerator.config import Config, log, open_engine
from benchmarks.accelerator.inputs import RealImages, dataset_metrics, infer_all, metric_deltas
from benchmarks.accelerator.monitor import GpuMonitor, torch_memory_peak, torch_memory_reset
from modnet_batch.bench.model_only import input_batch
from modnet_batch.bench.stats import latency_summary
from modnet_batch.engine import Session
from modnet_batch.execution.batching import smallest_near_fastest, time_runs


def time_batches(
    session: Session, x: npt.NDArray[np.float32], batch: int, seconds: float, warmup: int = 3
) -> dict[str, Any]:
    """Run batches of `batch` cycled from `x` for about `seconds` after `warmup` of them."""
    timing = time_runs(session.run, input_batch(x, batch), min_s=seconds, min_runs=5, warmup=warmup)
    lat = latency_summary(timing.latencies)
    return {
        "images_per_s": round(timing.images_per_s, 2),
        "batches": len(timing.latencies),
        "latency_p50_ms": round(lat["p50_ms"], 3),
        "latency_p99_ms": round(lat["p99_ms"], 3),
    }


def model_only(
    cfg: Config,
    real: RealImages,
    reference_out: npt.NDArray[np.float32],
    reference_metrics: dict[str, Any] | None,
    monitor: GpuMonitor,
    deadline: float,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    deltas: list[dict[str, Any]] = []
    combos = [
        (engine, precision, mode)
        for engine in cfg.engines
        for precision in cfg.precisions
        for mode in (cfg.torch_modes if engine == "torch" else ("eager",))
    ]
    for engine, precision, mode in combos:
        session, facts = open_engine(cfg, engine, precision, mode)
        key = {"engine": engine, "precision": precision, "mode": mode, "device": cfg.device}
        if session is None:
            log(f"{engine} {precision} {mode}: skipped ({facts['skipped']})")
            rows.append({**key, **facts})
            continue
        out = infer_all(session, real.inputs, min(8, len(real.inputs)))
        metrics = dataset_metrics(out, real)
        deltas.append(
            {
                **key,
                "max_abs_output_diff": float(np.max(np.abs(out - reference_out))),
                "mean_abs_output_diff": float(np.mean(np.abs(out - reference_out))),
                "metrics": metrics,
                "delta": metric_deltas(metrics, reference_metrics),
            }
        )
        for batch in cfg.batches:
            if time.monotonic() > deadline:
                rows.append({**key, "batch_size": batch, "skipped": "time budget spent"})
                continue
            torch_memory_reset(cfg.device)
            try:
                with monitor.watch() as util:
                    timed = time_batches(session, real.inputs, batch, cfg.seconds)
            except Exception as exc:  # out of device memory at a large batch: recorded
                rows.append({**key, "batch_size": batch, "error": str(exc).splitlines()[0]})
                log(f"{engine} {precision} {mode} b{batch}: {str(exc).splitlines()[0]}")
                break
            row = {**key, **facts, "batch_size": batch, **timed, **util}
            row["device_memory_peak_mib"] = torch_memory_peak(cfg.device)
            rows.append(row)
            log(
                f"{engine} {precision} {mode} b{batch}: {timed['images_per_s']:.1f} img/s, "
                f"p50 {timed['latency_p50_ms']:.2f} ms"
            )
        del session
    return rows, deltas


def best_batches(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The fastest batch of each engine x precision, and the smallest within 5% of it (what a
    job would default to: the same throughput at less latency and memory)."""
    best: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if "images_per_s" in r:
            key = f"{r['engine']}/{r['precision']}/{r.get('mode', 'eager')}"
            groups.setdefault(key, []).append(r)
    for key, group in groups.items():
        top = max(group, key=lambda r: r["images_per_s"])
        chosen = smallest_near_fastest({r["batch_size"]: r["images_per_s"] for r in group})
        knee = next(r for r in group if r["batch_size"] == chosen)
        best[key] = {
            "fastest_batch": top["batch_size"],
            "fastest_images_per_s": top["images_per_s"],
            "chosen_batch": knee["batch_size"],
            "chosen_images_per_s": knee["images_per_s"],
        }
    return best
