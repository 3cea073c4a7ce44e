"""`modnet-batch bench`: model-only and end-to-end throughput, per device and in total, written
as one JSON document; several rounds interleave the measurements and the figures are medians."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from modnet_batch import __version__
from modnet_batch.bench.devices import all_devices, device_counts
from modnet_batch.bench.end_to_end import run_end_to_end
from modnet_batch.bench.environment import LoadMonitor, environment, load_average
from modnet_batch.bench.model_only import measure, random_samples
from modnet_batch.bench.naive import run_naive
from modnet_batch.bench.stats import median
from modnet_batch.data.dataset import Dataset
from modnet_batch.execution.resources import available_cpus
from modnet_batch.model.variants import checked_model, resolve_model
from modnet_batch.options.bench import BenchConfig, validate
from modnet_batch.pipeline import ImagePipeline
from modnet_batch.protocol import get_protocol
from modnet_batch.storage import atomic_write_json

SCHEMA = 1
Log = Callable[[str], None]


def dataset_samples(dataset: str, protocol_name: str, n: int = 4) -> npt.NDArray[np.float32]:
    """The network inputs of the first `n` images of `dataset` that share the first one's size."""
    pipeline = ImagePipeline(protocol_name)
    ds = Dataset.open(dataset)
    out: list[npt.NDArray[np.float32]] = []
    for shard in ds.shards:
        for rec in pipeline.records(ds.shard_path(shard)):
            x = pipeline.network_input(rec)
            if not out or x.shape == out[0].shape:
                out.append(x)
            if len(out) == n:
                return np.stack(out)
    return np.stack(out)


def run_bench(cfg: BenchConfig, log: Log | None = None) -> dict[str, Any]:
    """Run every measurement `cfg` asks for, write the JSON document to cfg.out, return it."""
    validate(cfg)
    say = log or (lambda msg: None)
    model_path = resolve_model(cfg.model)
    model_info = checked_model(model_path)
    model = str(model_path)
    protocol = get_protocol(cfg.protocol)
    devices = all_devices(cfg)
    counts = device_counts(cfg, devices)
    if cfg.dataset:
        samples = dataset_samples(cfg.dataset, cfg.protocol)
    else:
        samples = random_samples(*protocol.network_size(480, 288))
    env = environment()
    out = Path(cfg.out)
    runs_dir = out.parent / f"{out.stem}-runs"
    records: dict[str, list[dict[str, Any]]] = {"model_only": [], "end_to_end": [], "naive": []}
    started = time.perf_counter()
    for rnd in range(cfg.rounds):
        for batch in cfg.batch_sizes:
            if cfg.mode in {"model", "both"}:
                for n in counts:
                    say(f"round {rnd + 1}/{cfg.rounds}: model-only, batch {batch}, {n} device(s)")
                    with LoadMonitor() as load:
                        rec = measure(cfg, model, devices[:n], samples, batch)
                    records["model_only"].append({"round": rnd, **rec, "machine_load": load.result})
            if cfg.mode in {"e2e", "both"}:
                n = counts[-1]
                say(f"round {rnd + 1}/{cfg.rounds}: end-to-end, batch {batch}, {n} device(s)")
                workers = n
                threads = devices[0].threads if cfg.device == "cpu" else cfg.threads
                with LoadMonitor() as load:
                    run = run_end_to_end(
                        cfg, model, batch, workers, threads, runs_dir / f"r{rnd}-b{batch}"
                    )
                records["end_to_end"].append(
                    {
                        "round": rnd,
                        "batch_size": batch,
                        "devices": n,
                        **run,
                        "machine_load": load.result,
                    }
                )
        if cfg.naive and cfg.dataset:
            say(f"round {rnd + 1}/{cfg.rounds}: naive sequential loop")
            with LoadMonitor() as load:
                naive = run_naive(
                    cfg.dataset,
                    model,
                    cfg.protocol,
                    sum(d.threads for d in devices) if cfg.device == "cpu" else available_cpus(),
                    runs_dir / f"r{rnd}-naive",
                )
            records["naive"].append({"round": rnd, **naive, "machine_load": load.result})
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "tool_version": __version__,
        "config": cfg.to_dict(),
        "model": {"path": model, **model_info},
        "environment": env,
        "load_average_after": load_average(),
        "seconds": time.perf_counter() - started,
        **records,
        "summary": summarize(records, counts),
    }
    doc["model"].pop("build", None)
    doc = json.loads(json.dumps(doc))  # what the file holds (tuples become lists)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, doc)
    return doc


def summarize(records: dict[str, list[dict[str, Any]]], counts: list[int]) -> dict[str, Any]:
    """Medians over rounds, and the derived figures (ratios are per round, then their median)."""
    model: dict[tuple[int, int], list[float]] = defaultdict(list)
    for r in records["model_only"]:
        model[(r["batch_size"], r["devices"])].append(r["images_per_s"])
    e2e: dict[int, list[float]] = defaultdict(list)
    e2e_devices: dict[int, int] = {}
    for r in records["end_to_end"]:
        e2e[r["batch_size"]].append(r["images_per_s"])
        e2e_devices[r["batch_size"]] = r["devices"]
    naive = [r["images_per_s"] for r in records["naive"]]
    out: dict[str, Any] = {
        "model_only_images_per_s": {f"b{b}/d{n}": median(v) for (b, n), v in sorted(model.items())},
        "end_to_end_images_per_s": {f"b{b}": median(v) for b, v in sorted(e2e.items())},
        "naive_images_per_s": median(naive) if naive else None,
    }
    derived: dict[str, Any] = {}
    base = counts[0]
    scaling = {
        f"b{b}/d{n}": (median(v) / n) / (median(model[(b, base)]) / base)
        for (b, n), v in sorted(model.items())
        if (b, base) in model and n != base
    }
    if scaling:
        derived["scaling_efficiency"] = scaling
        derived["scaling_efficiency_note"] = (
            f"images/s per device at n devices over images/s per device at {base}"
        )
    per_round = _per_round(records)
    eff = {
        f"b{b}": median(
            [
                e["images_per_s"] / m
                for rnd, e in per_round["e2e"].get(b, {}).items()
                if (m := per_round["model"].get((b, e2e_devices[b]), {}).get(rnd))
            ]
        )
        for b in e2e
        if (b, e2e_devices[b]) in model
    }
    if eff:
        derived["pipeline_efficiency"] = eff
        derived["pipeline_efficiency_note"] = (
            "end-to-end images/s over model-only images/s, same model, batch, devices and "
            "threads, per round then the median"
        )
    if naive and e2e:
        derived["speedup_vs_naive"] = {
            f"b{b}": median(
                [
                    e["images_per_s"] / n["images_per_s"]
                    for rnd, e in per_round["e2e"][b].items()
                    if (n := per_round["naive"].get(rnd))
                ]
            )
            for b in e2e
        }
    out["derived"] = derived
    return out


def _per_round(records: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    model: dict[tuple[int, int], dict[int, float]] = defaultdict(dict)
    for r in records["model_only"]:
        model[(r["batch_size"], r["devices"])][r["round"]] = r["images_per_s"]
    e2e: dict[int, dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in records["end_to_end"]:
        e2e[r["batch_size"]][r["round"]] = r
    naive = {r["round"]: r for r in records["naive"]}
    return {"model": model, "e2e": e2e, "naive": naive}
