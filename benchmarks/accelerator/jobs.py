"""Sections 5 and 6 of the device benchmark: real jobs end to end (original and prepared inputs),
and matting with CPU decoding against device decoding."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.accelerator.config import PROTOCOL, Config, engine_spec, log
from benchmarks.accelerator.inputs import replicated_source
from benchmarks.accelerator.monitor import GpuMonitor, torch_memory_peak, torch_memory_reset
from modnet_batch.engine import EngineSpec
from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution.resources import available_cpus
from modnet_batch.metrics import DATASET


def end_to_end(
    cfg: Config,
    engine: str,
    precision: str,
    batch: int,
    work: Path,
    monitor: GpuMonitor,
    mode: str = "eager",
) -> list[dict[str, Any]]:
    from modnet_batch.data.ingest import ingest
    from modnet_batch.execution.driver import run_job
    from modnet_batch.options import load_job

    planned = engine_spec(cfg, engine, precision, mode)
    if isinstance(planned, str):
        return [{"engine": engine, "precision": precision, "mode": mode, "skipped": planned}]
    spec, _ = planned
    src = replicated_source(cfg, work / "src", cfg.e2e_images)
    records = []
    for inputs in ("original", "prepared"):
        dataset = work / f"dataset-{inputs}"
        t = time.perf_counter()
        ingest(
            src,
            dataset,
            shard_size=64,
            workers=available_cpus(),
            prepare=PROTOCOL if inputs == "prepared" else None,
        )
        ingest_s = time.perf_counter() - t
        job = load_job(
            None,
            {
                "dataset": str(dataset),
                "model": spec.model,
                "protocol": PROTOCOL,
                "out": str(work / f"run-{inputs}"),
                "backend": "inline",
                "engine": engine,
                "device": "gpu" if cfg.device == "cuda" else "cpu",
                "provider": spec.provider,
                "batch_size": batch,
                "decode_check": 0,
                **(
                    {
                        "precision": precision,
                        "channels_last": spec.channels_last,
                        "torch_compile": spec.compile,
                    }
                    if engine == "torch"
                    else {}
                ),
            },
        )
        with monitor.watch() as util:
            outcome = run_job(job)
        thr = outcome.summary.throughput
        record = {
            "engine": engine,
            "precision": precision,
            "mode": mode,
            "inputs": inputs,
            "batch_size": batch,
            "images": thr.images,
            "images_per_s": thr.overall_images_per_s,
            "wall_s": thr.wall_s,
            "startup_s": outcome.summary.startup_seconds,
            "ingest_s": round(ingest_s, 2),
            "stages_s": thr.stages_s,
            "metrics": outcome.summary.metrics,
            **util,
        }
        records.append(record)
        log(f"end to end {engine} {precision} from {inputs}: {record['images_per_s']} img/s")
    return records


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _decoding_job(
    cfg: Config, dataset: Path, out: Path, decoding: str, spec: EngineSpec, batch: int, **kw: Any
) -> Any:
    from modnet_batch.execution.driver import run_job
    from modnet_batch.options import load_job

    job = load_job(
        None,
        {
            "dataset": str(dataset),
            "model": spec.model,
            "protocol": PROTOCOL,
            "out": str(out),
            "backend": "inline",
            "engine": "torch",
            "device": "gpu" if cfg.device == "cuda" else "cpu",
            "precision": spec.precision,
            "channels_last": spec.channels_last,
            "torch_compile": spec.compile,
            "batch_size": batch,
            "decode_threads": available_cpus(),  # every core decodes (cpu) or encodes PNGs
            "decoding": decoding,
            **kw,
        },
    )
    return run_job(job)


def _decoding_run(
    cfg: Config,
    dataset: Path,
    out: Path,
    how: str,
    spec: EngineSpec,
    batch: int,
    monitor: GpuMonitor,
) -> dict[str, Any]:
    """One matting job decoding `how` (cpu or device); raises what the job raises."""
    torch_memory_reset(cfg.device)
    reduce = {"decode_reduce": cfg.decoding_cpu_reduce} if how == "cpu" else {}
    reduce = {k: v for k, v in reduce.items() if v is not None}
    with monitor.watch() as util:
        outcome = _decoding_job(cfg, dataset, out, how, spec, batch, output="alpha-png", **reduce)
    thr = outcome.summary.throughput
    return {
        "images": thr.images,
        "failed": outcome.summary.images.failed,
        "images_per_s": thr.overall_images_per_s,
        "wall_s": thr.wall_s,
        "startup_s": outcome.summary.startup_seconds,
        "stages_s": thr.stages_s,
        "decoded": outcome.summary.decoding,
        "decode": outcome.summary.job.decode,  # how the pool threads decoded
        "torch_memory_peak_mib": torch_memory_peak(cfg.device),
        **util,
    }


def _medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median images/s of each decoding, and device over cpu."""
    medians: dict[str, float] = {}
    for how in ("cpu", "device"):
        rates = [r["images_per_s"] for r in runs if r["decoding"] == how and r.get("images_per_s")]
        if rates:
            medians[how] = float(np.median(rates))
    figures: dict[str, Any] = {"median_images_per_s": medians}
    if "cpu" in medians and "device" in medians and medians["cpu"] > 0:
        figures["device_over_cpu"] = round(medians["device"] / medians["cpu"], 3)
    return figures


def _scored_deltas(cfg: Config, spec: EngineSpec, batch: int, work: Path) -> dict[str, Any]:
    """A scored job of the real images, decoded both ways: the metric deltas of device decoding."""
    import pyarrow.parquet as pq

    from modnet_batch.data.ingest import ingest

    scored_src = replicated_source(cfg, work / "scored-src", cfg.images)
    if not (scored_src / "matte").is_dir():
        return {"skipped": f"{cfg.src} has no mattes to score against"}
    scored = work / "scored"
    ingest(scored_src, scored, shard_size=64, workers=available_cpus())
    results: dict[str, Any] = {}
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for how in ("cpu", "device"):
        out = work / f"scored-{how}"
        try:
            outcome = _decoding_job(
                cfg, scored, out, how, spec, batch, decode_check=8 if how == "device" else 0
            )
        except Exception as exc:  # the throughput figures are kept either way
            error = f"scored --decoding {how}: {_first_line(exc)}"
            log(f"decoding metric deltas: {error}")
            return {"error": error}
        results[how] = outcome.summary
        table = pq.read_table(out / "metrics.parquet").to_pylist()
        rows[how] = {r["image_id"]: r for r in table}
    cpu_m, dev_m = results["cpu"].metrics, results["device"].metrics
    moved = {
        i: abs(rows["device"][i]["mse"] - r["mse"])
        for i, r in rows["cpu"].items()
        if r["mse"] is not None and rows["device"].get(i, {}).get("mse") is not None
    }
    worst = max(moved, key=lambda i: moved[i]) if moved else None
    return {
        "images": len(rows["cpu"]),
        "cpu": cpu_m,
        "device": dev_m,
        "delta": {
            k: None if cpu_m.get(k) is None or dev_m.get(k) is None else dev_m[k] - cpu_m[k]
            for k in DATASET
        },
        "max_abs_image_mse_delta": moved[worst] if worst is not None else None,
        "max_abs_image_mse_delta_image": worst,
        "compared": len(moved),
        "decoded": results["device"].decoding,
        "decode_check": results["device"].decode_check,
        "job_decode": results["device"].job.decode,
    }


def decoding(
    cfg: Config,
    precision: str,
    mode: str,
    batch: int,
    work: Path,
    monitor: GpuMonitor,
    deadline: float,
) -> dict[str, Any]:
    """Section 6: matting throughput from original JPEGs, CPU decoding against device decoding
    in the same run, and the metric deltas of device decoding on the real images."""
    from modnet_batch.data.ingest import ingest

    planned = engine_spec(cfg, "torch", precision, mode)
    if isinstance(planned, str):
        return {"skipped": planned}
    spec, _ = planned
    section: dict[str, Any] = {
        "engine": "torch",
        "precision": precision,
        "mode": mode,
        "batch_size": batch,
        "protocol": PROTOCOL,
        "output": "alpha-png at each photo's size",
        "cpu_decode_reduce": cfg.decoding_cpu_reduce or "the job's default",
        "note": "device decoding is approximate by design (GPU JPEG decoding is not "
        "bit-identical to libjpeg); scored jobs decode on the CPU by default",
    }
    src = replicated_source(cfg, work / "src", cfg.e2e_images, mattes=False)
    dataset = work / "dataset"
    ingest(src, dataset, shard_size=64, workers=available_cpus())
    runs: list[dict[str, Any]] = []
    for round_ in range(cfg.decode_rounds):
        for how in ("cpu", "device"):
            if time.monotonic() > deadline:
                section["stopped"] = "time budget spent"
                break
            out = work / f"run-{how}-{round_}"
            key = {"decoding": how, "round": round_}
            try:
                runs.append({**key, **_decoding_run(cfg, dataset, out, how, spec, batch, monitor)})
            except ModnetBatchError as exc:  # no torchvision, no device decoder: say why
                return {**section, "skipped": str(exc), "runs": runs}
            except Exception as exc:  # e.g. out of device memory: recorded, the bench goes on
                runs.append({**key, "error": _first_line(exc)})
                log(f"decoding {how} round {round_}: {runs[-1]['error']}")
            else:
                log(f"decoding {how} round {round_}: {runs[-1]['images_per_s']} img/s")
            shutil.rmtree(out, ignore_errors=True)
    section["runs"] = runs
    section.update(_medians(runs))
    if time.monotonic() > deadline:
        section["metric_deltas"] = {"skipped": "time budget spent"}
    else:
        section["metric_deltas"] = _scored_deltas(cfg, spec, batch, work)
    return section
