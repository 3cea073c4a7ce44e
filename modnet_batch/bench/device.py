"""The device benchmark: one accelerator machine, no Ray, every figure in one JSON.

`python -m modnet_batch.bench.device --model M.onnx --src PPM_DIR --out OUT` (`make bench-device`)
measures, in this order and within a time budget:

1. `reference`: onnxruntime fp32 on the CPU over the real images: the outputs and metrics every
   other configuration is compared with;
2. `model_only`: for each engine x precision x batch size, images/s and per-batch latency p50/p99
   on the real images' network inputs held in memory, the device memory peak, and the GPU's
   utilisation while it ran (NVML, sampled every 50 ms); the best batch of each;
3. `metric_deltas`: each engine x precision's dataset-level metrics on the same images, minus the
   reference's, and the largest per-pixel output difference;
4. `feed`: how fast the node's CPUs alone decode and preprocess the original photos (threads of
   one process, 1..all cores, and as many processes as cores): the bound end to end can reach;
5. `end_to_end`: real jobs (`run_job`, `--backend inline`, all cores decoding) from prepared
   inputs and from original JPEGs, with the stage breakdown of their summary;
6. `decoding`: `--decoding cpu` (all cores decoding) against `--decoding device` (JPEGs decoded
   and resized on the torch engine's device) on the same unscored original JPEGs, alpha-png at
   the photos' size, runs alternated over rounds: each run's images/s, stage breakdown, fallback
   counts, device memory peak and utilisation, the median of each and device/cpu; then a scored
   job on the real images both ways: the metric deltas device - cpu (device decoding is
   approximate by design), the largest per-image |delta MSE| and the job's own decode_check.
   `--decoding-rounds 0` leaves it out.

It runs on the CPU too (tests, with the tiny model, in seconds); on a GPU machine `--device cuda`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from modnet_batch.bench.stats import latency_summary
from modnet_batch.engine import EngineSpec, Session, open_session
from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution.resources import available_cpus
from modnet_batch.metrics import ImageMetrics, MetricAccumulator
from modnet_batch.pipeline import ImagePipeline
from modnet_batch.protocol import get_protocol

BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PROTOCOL = "seed-area"  # one network input size (288x480) for every image: batches of any size
# each metric is compared at the dataset level, as a job reports it
METRICS = ("mse", "mad", "sad", "grad", "conn", "miou")


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
    decoding_rounds: int = 3  # cpu/device pairs of the decoding section (0: no section)
    decoding_images: int | None = None  # images of each of its runs; None: e2e_images
    # the CPU runs' decode_reduce: off decodes at full size as the device does (like for like);
    # auto is what an unscored job does by default
    decoding_cpu_reduce: str = "off"


def log(msg: str) -> None:
    print(f"[device-bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- the device: memory and utilisation -------------------------------------------------------
class GpuMonitor:
    """NVML utilisation samples of GPU `index` while a block runs; nothing without NVML."""

    def __init__(self, index: int = 0, interval: float = 0.05) -> None:
        self.interval = interval
        self.samples: list[int] = []
        self.memory_used: list[int] = []
        self._handle: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml: Any = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception:  # no NVML (CPU machine, no driver): no samples
            self._handle = None

    @property
    def available(self) -> bool:
        return self._handle is not None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with suppress(Exception):
                self.samples.append(int(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))
                self.memory_used.append(int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used))

    @contextmanager
    def watch(self) -> Iterator[dict[str, Any]]:
        """Yields a dict filled, when the block ends, with the utilisation seen during it."""
        figures: dict[str, Any] = {}
        self.samples, self.memory_used = [], []
        if self.available:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        try:
            yield figures
        finally:
            if self._thread is not None:
                self._stop.set()
                self._thread.join()
                self._thread = None
            if self.samples:
                figures["gpu_util_median_pct"] = float(np.median(self.samples))
                figures["gpu_util_mean_pct"] = float(np.mean(self.samples))
                figures["gpu_util_samples"] = len(self.samples)
            if self.memory_used:
                figures["gpu_memory_used_max_mib"] = round(max(self.memory_used) / 2**20, 1)


def _torch_memory_reset(device: str) -> None:
    if device == "cuda" and "torch" in sys.modules:
        torch: Any = sys.modules["torch"]
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _torch_memory_peak(device: str) -> float | None:
    if device == "cuda" and "torch" in sys.modules:
        torch: Any = sys.modules["torch"]
        return round(float(torch.cuda.max_memory_allocated()) / 2**20, 1)
    return None


# --- inputs -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RealImages:
    ids: list[str]
    inputs: npt.NDArray[np.float32]  # N x 3 x 288 x 480, the protocol's network inputs
    gts: list[npt.NDArray[np.float64] | None]  # at the scoring size
    heights: list[int]
    widths: list[int]


def _pairs(src: Path, limit: int) -> list[tuple[Path, Path | None]]:
    folder = src / "image" if (src / "image").is_dir() else src
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not images:
        raise ModnetBatchError(f"no .jpg/.jpeg/.png images in {folder}; pass --src PPM_DIR")
    pairs = []
    for p in images[:limit]:
        mattes = sorted((src / "matte").glob(p.stem + ".*")) if (src / "matte").is_dir() else []
        pairs.append((p, mattes[0] if mattes else None))
    return pairs


def load_real_images(src: Path, limit: int) -> RealImages:
    """The first `limit` photos of `src` (PPM layout or a folder) as the protocol sees them."""
    from modnet_batch.data.decode import decode_image, decode_matte

    protocol = get_protocol(PROTOCOL)
    ids, inputs, gts, hs, ws = [], [], [], [], []
    for image, matte in _pairs(src, limit):
        rgb = decode_image(image.read_bytes(), name=image.name)
        ids.append(image.stem)
        inputs.append(protocol.preprocess(rgb))
        hs.append(rgb.shape[0])
        ws.append(rgb.shape[1])
        gt = None
        if matte is not None:
            gt = protocol.ground_truth(decode_matte(matte.read_bytes(), name=matte.name))
        gts.append(gt)
    return RealImages(ids, np.stack(inputs), gts, hs, ws)


# --- sessions ---------------------------------------------------------------------------------
MODES: dict[str, dict[str, Any]] = {  # torch mode -> EngineSpec fields
    "eager": {},
    "channels_last": {"channels_last": True},
    "cudagraphs": {"compile": "cudagraphs"},
    "compile": {"compile": "compile"},
}


def _spec(
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


def _open(
    cfg: Config, engine: str, precision: str, mode: str = "eager"
) -> tuple[Session | None, dict[str, Any]]:
    planned = _spec(cfg, engine, precision, mode)
    if isinstance(planned, str):
        return None, {"skipped": planned}
    spec, name = planned
    t0 = time.perf_counter()
    try:
        session = open_session(spec, name)
    except ModnetBatchError as exc:
        return None, {"skipped": str(exc)}
    return session, {"runs_on": session.runs_on, "open_s": round(time.perf_counter() - t0, 3)}


def _infer_all(session: Session, x: npt.NDArray[np.float32], batch: int) -> npt.NDArray[np.float32]:
    outs = [session.run(np.ascontiguousarray(x[i : i + batch])) for i in range(0, len(x), batch)]
    return np.concatenate(outs)


# --- 1./3. reference and metric deltas ------------------------------------------------------
def dataset_metrics(
    outputs: npt.NDArray[np.float32], real: RealImages
) -> dict[str, float | int | None] | None:
    """Dataset-level metrics of network outputs [N,1,h,w] under the bench's protocol."""
    if any(gt is None for gt in real.gts):
        return None
    pipeline = ImagePipeline(PROTOCOL)
    acc = MetricAccumulator()
    protocol = pipeline.protocol
    for out, gt, h, w in zip(outputs, real.gts, real.heights, real.widths, strict=True):
        assert gt is not None
        alpha = protocol.postprocess(out[0], h, w)
        m: ImageMetrics = pipeline.score(alpha, gt)
        acc.update(m)
    return acc.summary()


def _deltas(
    metrics: dict[str, Any] | None, reference: dict[str, Any] | None
) -> dict[str, float] | None:
    if metrics is None or reference is None:
        return None
    return {k: float(metrics[k]) - float(reference[k]) for k in METRICS if k in metrics}


# --- 2. model only ----------------------------------------------------------------------------
def time_batches(
    session: Session, x: npt.NDArray[np.float32], batch: int, seconds: float, warmup: int = 3
) -> dict[str, Any]:
    """Run batches of `batch` cycled from `x` for about `seconds` after `warmup` of them."""
    idx = np.arange(batch) % len(x)
    xb = np.ascontiguousarray(x[idx])
    for _ in range(warmup):
        session.run(xb)
    latencies: list[float] = []
    start = time.perf_counter()
    while True:
        t = time.perf_counter()
        session.run(xb)
        latencies.append(time.perf_counter() - t)
        if time.perf_counter() - start >= seconds and len(latencies) >= 5:
            break
    span = time.perf_counter() - start
    lat = latency_summary(latencies)
    return {
        "images_per_s": round(batch * len(latencies) / span, 2),
        "batches": len(latencies),
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
        session, facts = _open(cfg, engine, precision, mode)
        key = {"engine": engine, "precision": precision, "mode": mode, "device": cfg.device}
        if session is None:
            log(f"{engine} {precision} {mode}: skipped ({facts['skipped']})")
            rows.append({**key, **facts})
            continue
        out = _infer_all(session, real.inputs, min(8, len(real.inputs)))
        metrics = dataset_metrics(out, real)
        deltas.append(
            {
                **key,
                "max_abs_output_diff": float(np.max(np.abs(out - reference_out))),
                "mean_abs_output_diff": float(np.mean(np.abs(out - reference_out))),
                "metrics": metrics,
                "delta": _deltas(metrics, reference_metrics),
            }
        )
        for batch in cfg.batches:
            if time.monotonic() > deadline:
                rows.append({**key, "batch_size": batch, "skipped": "time budget spent"})
                continue
            _torch_memory_reset(cfg.device)
            try:
                with monitor.watch() as util:
                    timed = time_batches(session, real.inputs, batch, cfg.seconds)
            except Exception as exc:  # out of device memory at a large batch: recorded
                rows.append({**key, "batch_size": batch, "error": str(exc).splitlines()[0]})
                log(f"{engine} {precision} {mode} b{batch}: {str(exc).splitlines()[0]}")
                break
            row = {**key, **facts, "batch_size": batch, **timed, **util}
            row["device_memory_peak_mib"] = _torch_memory_peak(cfg.device)
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
        knee = min(
            (r for r in group if r["images_per_s"] >= 0.95 * top["images_per_s"]),
            key=lambda r: r["batch_size"],
        )
        best[key] = {
            "fastest_batch": top["batch_size"],
            "fastest_images_per_s": top["images_per_s"],
            "chosen_batch": knee["batch_size"],
            "chosen_images_per_s": knee["images_per_s"],
        }
    return best


# --- 4. what the CPUs can feed ----------------------------------------------------------------
def _decode_one(pipeline: ImagePipeline, image: bytes, matte: bytes | None) -> None:
    from modnet_batch.data.decode import decode_image, decode_matte

    rgb = decode_image(image, name="feed")
    pipeline.protocol.preprocess(rgb)
    if matte is not None:
        pipeline.protocol.ground_truth(decode_matte(matte, name="feed"))


def _decode_share(args: tuple[list[tuple[bytes, bytes | None]], int]) -> int:
    import cv2

    cv2.setNumThreads(1)
    items, repeat = args
    pipeline = ImagePipeline(PROTOCOL)
    for _ in range(repeat):
        for image, matte in items:
            _decode_one(pipeline, image, matte)
    return repeat * len(items)


def feed(cfg: Config, seconds: float) -> dict[str, Any]:
    """Images/s the CPUs decode and preprocess (with ground truth) from the original files."""
    import cv2

    cv2.setNumThreads(1)
    items = [
        (p.read_bytes(), m.read_bytes() if m else None)
        for p, m in _pairs(Path(cfg.src), cfg.images)
    ]
    pipeline = ImagePipeline(PROTOCOL)
    t = time.perf_counter()
    _decode_one(pipeline, *items[0])
    per_image = max(time.perf_counter() - t, 1e-4)
    cpus = available_cpus()
    counts = sorted({1, *(n for n in (2, 4, 8, 16, 32, 64) if n < cpus), cpus})
    threads: dict[str, float] = {}
    for n in counts:
        total = max(n, int(seconds * n / per_image))
        work = [items[i % len(items)] for i in range(total)]
        with ThreadPoolExecutor(n) as pool:
            t = time.perf_counter()
            list(pool.map(lambda it: _decode_one(pipeline, *it), work))
            threads[str(n)] = round(total / (time.perf_counter() - t), 2)
        log(f"feed: {n} thread(s) {threads[str(n)]:.1f} img/s")
    repeat = max(1, int(seconds / (per_image * len(items))))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(cpus) as pool:
        pool.map(_decode_share, [(items[:1], 1)] * cpus)  # imports and warm-up, not timed
        t = time.perf_counter()
        done = sum(pool.map(_decode_share, [(items, repeat)] * cpus))
        processes = round(done / (time.perf_counter() - t), 2)
    log(f"feed: {cpus} processes {processes:.1f} img/s")
    best_threads = max(threads.values())
    return {
        "cpus": cpus,
        "threads_images_per_s": threads,
        "processes": cpus,
        "processes_images_per_s": processes,
        "threads_vs_processes": round(best_threads / processes, 3) if processes else None,
        "bound_images_per_s": max(best_threads, processes),
    }


# --- 5. end to end ----------------------------------------------------------------------------
def _replicated_source(cfg: Config, dest: Path, n: int, mattes: bool = True) -> Path:
    """A PPM-layout folder of `n` images: the real ones repeated under new ids (links); without
    `mattes`, image/ only (an unscored dataset)."""
    pairs = _pairs(Path(cfg.src), cfg.images)
    (dest / "image").mkdir(parents=True)
    if mattes and all(m is not None for _, m in pairs):
        (dest / "matte").mkdir()
    for i in range(n):
        image, matte = pairs[i % len(pairs)]
        name = f"{image.stem}-{i:05d}"
        os.symlink(image.resolve(), dest / "image" / f"{name}{image.suffix.lower()}")
        if matte is not None and (dest / "matte").is_dir():
            os.symlink(matte.resolve(), dest / "matte" / f"{name}{matte.suffix.lower()}")
    return dest


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

    planned = _spec(cfg, engine, precision, mode)
    if isinstance(planned, str):
        return [{"engine": engine, "precision": precision, "mode": mode, "skipped": planned}]
    spec, _ = planned
    src = _replicated_source(cfg, work / "src", cfg.e2e_images)
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
            "images": int(thr["images"]),
            "images_per_s": thr.get("images_per_s"),
            "wall_s": thr.get("wall_s"),
            "startup_s": outcome.summary.startup_seconds,
            "ingest_s": round(ingest_s, 2),
            "stages_s": thr.get("stages_s"),
            "metrics": outcome.summary.metrics,
            **util,
        }
        records.append(record)
        log(f"end to end {engine} {precision} from {inputs}: {record['images_per_s']} img/s")
    return records


# --- 6. decoding on the device ----------------------------------------------------------------
APPROXIMATE = (
    "--decoding device is approximate by design: the device's JPEG decoder is not bit-identical "
    "to libjpeg and the resizes run there (engine.torch_resize), so outputs and metrics differ "
    "slightly from --decoding cpu, which is exact"
)


def _decoding_skip(cfg: Config) -> str | None:
    """Why the decoding section cannot run here (None: it can)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (--decoding device runs on the torch engine)"
    import torch

    from modnet_batch.engine.device_decode import open_decoder

    try:
        open_decoder(torch.device(cfg.device))
    except ModnetBatchError as exc:
        return str(exc)
    return None


def _decoding_job(
    cfg: Config, spec: EngineSpec, batch: int, dataset: Path, out: Path, decoding: str, scored: bool
) -> dict[str, Any]:
    return {
        "dataset": str(dataset),
        "model": spec.model,
        "protocol": PROTOCOL,
        "out": str(out),
        "backend": "inline",
        "engine": "torch",
        "device": "gpu" if cfg.device == "cuda" else "cpu",
        "provider": spec.provider,
        "batch_size": batch,
        "decode_threads": available_cpus(),
        "decoding": decoding,
        # scored: exact either way but the device's; unscored: like for like at full size
        "decode_reduce": "off" if scored or decoding == "device" else cfg.decoding_cpu_reduce,
        "decode_check": min(8, cfg.images) if scored and decoding == "device" else 0,
        "output": "none" if scored else "alpha-png",
        "output_size": "source",
        "precision": spec.precision,
        "channels_last": spec.channels_last,
        "torch_compile": spec.compile,
    }


def _decoding_run(
    cfg: Config, job_fields: dict[str, Any], monitor: GpuMonitor
) -> tuple[dict[str, Any], Any]:
    """One job of the section: its figures, and its outcome (None when it failed)."""
    from modnet_batch.execution.driver import run_job
    from modnet_batch.options import load_job

    record: dict[str, Any] = {"decoding": job_fields["decoding"]}
    _torch_memory_reset(cfg.device)
    try:
        with monitor.watch() as util:
            outcome = run_job(load_job(None, job_fields))
    except Exception as exc:  # the section records it; the bench's JSON keeps what it has
        record["error"] = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return record, None
    thr = outcome.summary.throughput
    record.update(
        {
            "complete": outcome.complete,
            "images": int(thr["images"]),
            "failed": outcome.summary.images.failed,
            "images_per_s": thr.get("images_per_s"),
            "wall_s": thr.get("wall_s"),
            "startup_s": outcome.summary.startup_seconds,
            "stages_s": thr.get("stages_s"),
            "decoded": outcome.summary.decoding,  # None for --decoding cpu: all on the CPU
            "device_memory_peak_mib": _torch_memory_peak(cfg.device),
            **util,
        }
    )
    return record, outcome


def _per_image_mse(run_dir: Path) -> dict[str, float]:
    import pyarrow.parquet as pq

    table = pq.read_table(run_dir / "metrics.parquet", columns=["image_id", "mse"]).to_pylist()
    return {str(r["image_id"]): float(r["mse"]) for r in table if r["mse"] is not None}


def _median(values: Sequence[float]) -> float | None:
    return round(float(np.median(values)), 2) if values else None


def decoding_section(
    cfg: Config,
    precision: str,
    mode: str,
    batch: int,
    work: Path,
    monitor: GpuMonitor,
    deadline: float,
) -> dict[str, Any]:
    """`--decoding cpu` against `--decoding device`: throughput (alternated rounds) on unscored
    JPEGs, then metric deltas on the real images with their mattes."""
    from modnet_batch.data.ingest import ingest

    n = cfg.decoding_images or cfg.e2e_images
    section: dict[str, Any] = {
        "engine": "torch",
        "precision": precision,
        "mode": mode,
        "device": cfg.device,
        "batch_size": batch,
        "decode_threads": available_cpus(),
        "images": n,
        "output": "alpha-png",
        "output_size": "source",
        "cpu_decode_reduce": cfg.decoding_cpu_reduce,
        "approximate": APPROXIMATE,
    }
    skip = _decoding_skip(cfg)
    planned = _spec(cfg, "torch", precision, mode)
    if skip is None and isinstance(planned, str):
        skip = planned
    if skip is not None:
        log(f"decoding: skipped ({skip})")
        return {**section, "skipped": skip}
    assert not isinstance(planned, str)
    spec, _ = planned
    src = _replicated_source(cfg, work / "src", n, mattes=False)
    ingest(src, work / "dataset", shard_size=64, workers=available_cpus())
    runs: list[dict[str, Any]] = []
    for round_ in range(cfg.decoding_rounds):
        if time.monotonic() > deadline:
            section["rounds_skipped"] = f"time budget spent after {round_} round(s)"
            break
        for decoding in ("cpu", "device"):
            out = work / f"run-{decoding}-{round_}"
            fields = _decoding_job(cfg, spec, batch, work / "dataset", out, decoding, False)
            record, _ = _decoding_run(cfg, fields, monitor)
            runs.append({"round": round_, **record})
            shutil.rmtree(out, ignore_errors=True)  # the alpha PNGs: only their time counts
            rate = record.get("images_per_s")
            told = f"{rate:.1f} img/s" if rate is not None else f"error: {record.get('error')}"
            log(f"decoding {decoding} round {round_}: {told}")
    section["runs"] = runs
    medians = {
        d: _median([r["images_per_s"] for r in runs if r["decoding"] == d and "images_per_s" in r])
        for d in ("cpu", "device")
    }
    section["median_images_per_s"] = medians
    cpu_rate, device_rate = medians["cpu"], medians["device"]
    section["device_vs_cpu"] = (
        round(device_rate / cpu_rate, 3) if cpu_rate and device_rate else None
    )
    section["metric_deltas"] = _decoding_deltas(
        cfg, spec, batch, work / "scored", monitor, deadline
    )
    return section


def _decoding_deltas(
    cfg: Config, spec: EngineSpec, batch: int, work: Path, monitor: GpuMonitor, deadline: float
) -> dict[str, Any]:
    """A scored job on the real images decoded on the device and on the CPU: its dataset-level
    metrics device - cpu and the largest per-image |delta MSE| (metrics.parquet of both)."""
    from modnet_batch.data.ingest import ingest

    pairs = _pairs(Path(cfg.src), cfg.images)
    if any(m is None for _, m in pairs):
        return {"skipped": f"{cfg.src} has images without mattes: nothing to score"}
    if time.monotonic() > deadline:
        return {"skipped": "time budget spent"}
    src = _replicated_source(cfg, work / "src", len(pairs))
    ingest(src, work / "dataset", shard_size=64, workers=available_cpus())
    runs: dict[str, dict[str, Any]] = {}
    outcomes: dict[str, Any] = {}
    for decoding in ("cpu", "device"):
        fields = _decoding_job(cfg, spec, batch, work / "dataset", work / decoding, decoding, True)
        runs[decoding], outcomes[decoding] = _decoding_run(cfg, fields, monitor)
    if outcomes["cpu"] is None or outcomes["device"] is None:
        return {"images": len(pairs), "runs": runs, "error": "a scored run failed"}
    cpu_m, dev_m = outcomes["cpu"].summary.metrics, outcomes["device"].summary.metrics
    mse_cpu, mse_dev = _per_image_mse(work / "cpu"), _per_image_mse(work / "device")
    per_image = {i: abs(mse_dev[i] - mse_cpu[i]) for i in mse_cpu.keys() & mse_dev.keys()}
    worst = max(per_image, key=lambda i: per_image[i]) if per_image else None
    device_summary = outcomes["device"].summary
    deltas = {
        "images": len(pairs),
        "scored": {"cpu": len(mse_cpu), "device": len(mse_dev), "compared": len(per_image)},
        "metrics": {"cpu": cpu_m, "device": dev_m},
        "delta": _deltas(dev_m, cpu_m),
        "max_abs_image_mse_delta": per_image[worst] if worst is not None else None,
        "max_abs_image_mse_delta_image": worst,
        "decode_check": device_summary.decode_check,
        "job_decode": device_summary.job.decode,
        "decoded": device_summary.decoding,
        "approximate": APPROXIMATE,
        "runs": runs,
    }
    log(f"decoding metric deltas device - cpu: {deltas['delta']}")
    return deltas


# --- main -------------------------------------------------------------------------------------
def run(
    cfg: Config, on_section: Callable[[str, dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    from modnet_batch.bench.environment import environment

    started = time.monotonic()
    deadline = started + cfg.budget_s
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"config": cfg.__dict__, "environment": environment()}

    def save(section: str) -> None:
        (out / "device.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
        if on_section is not None:
            on_section(section, doc)

    save("environment")
    monitor = GpuMonitor()
    real = load_real_images(Path(cfg.src), cfg.images)
    log(f"{len(real.ids)} real images at {real.inputs.shape[2]}x{real.inputs.shape[3]}")
    cpu = open_session(EngineSpec(cfg.model, provider="cpu", threads=available_cpus()))
    reference_out = _infer_all(cpu, real.inputs, 4)
    reference_metrics = dataset_metrics(reference_out, real)
    doc["reference"] = {
        "engine": "onnxruntime",
        "precision": "fp32",
        "device": "cpu",
        "images": real.ids,
        "metrics": reference_metrics,
    }
    del cpu
    save("reference")
    rows, deltas = model_only(cfg, real, reference_out, reference_metrics, monitor, deadline)
    doc["model_only"] = rows
    doc["metric_deltas"] = deltas
    doc["best_batch"] = best_batches(rows)
    save("model_only")
    doc["feed"] = feed(cfg, seconds=min(cfg.seconds * 2, 6.0))
    save("feed")
    e2e: list[dict[str, Any]] = []
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    fastest: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
    for key, best in doc["best_batch"].items():  # the fastest torch mode of each precision
        engine, precision, mode = key.split("/")
        held = fastest.get((engine, precision))
        if held is None or best["chosen_images_per_s"] > held[1]["chosen_images_per_s"]:
            fastest[(engine, precision)] = (mode, best)
    for (engine, precision), (mode, best) in fastest.items():
        if precision != "fp32" and cfg.device == "cpu":
            continue  # reduced precision only pays on accelerators
        if time.monotonic() > deadline:
            e2e.append({"engine": engine, "precision": precision, "skipped": "time budget spent"})
            continue
        folder = work / f"{engine}-{precision}-{mode}"
        e2e.extend(end_to_end(cfg, engine, precision, best["chosen_batch"], folder, monitor, mode))
    shutil.rmtree(work, ignore_errors=True)
    doc["end_to_end"] = e2e
    doc["seconds"] = round(time.monotonic() - started, 1)
    save("end_to_end")
    if cfg.decoding_rounds > 0:
        # the fastest torch mode of fp32 (and fp16 on an accelerator), else fp32 eager
        candidates = [
            (best["chosen_images_per_s"], precision, mode, best["chosen_batch"])
            for (engine, precision), (mode, best) in fastest.items()
            if engine == "torch"
            and (precision == "fp32" or (precision == "fp16" and cfg.device != "cpu"))
        ]
        _, precision, mode, batch = max(
            candidates, default=(0.0, "fp32", "eager", min(8, max(cfg.batches)))
        )
        if time.monotonic() > deadline:
            doc["decoding"] = {"skipped": "time budget spent"}
        else:
            doc["decoding"] = decoding_section(
                cfg, precision, mode, batch, out / "work-decoding", monitor, deadline
            )
        shutil.rmtree(out / "work-decoding", ignore_errors=True)
        doc["seconds"] = round(time.monotonic() - started, 1)
        save("decoding")
    log(f"done in {doc['seconds']} s: {out / 'device.json'}")
    return doc


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", required=True, help="the fp32 MODNet ONNX")
    ap.add_argument("--src", required=True, help="PPM-layout folder (image/ + matte/) or images")
    ap.add_argument("--out", required=True, help="folder for device.json")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when present)")
    ap.add_argument("--engines", default="onnxruntime,torch")
    ap.add_argument("--precisions", default="fp32,fp16,bf16")
    ap.add_argument("--batch-sizes", default=",".join(map(str, BATCHES)))
    ap.add_argument("--seconds", type=float, default=2.0, help="timed span per configuration")
    ap.add_argument("--images", type=int, default=16, help="real images to use")
    ap.add_argument("--e2e-images", type=int, default=256, help="images per end-to-end job")
    ap.add_argument("--fp16-model", default=None, help="a built fp16 ONNX for onnxruntime")
    ap.add_argument(
        "--torch-modes",
        default=None,
        help="torch variants: eager, channels_last, cudagraphs, compile (default: eager on the "
        "CPU; eager,channels_last,cudagraphs on CUDA)",
    )
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop new measurements after")
    ap.add_argument(
        "--decoding-rounds",
        type=int,
        default=3,
        help="cpu/device pairs of the decoding section (0 leaves the section out)",
    )
    ap.add_argument(
        "--decoding-images", type=int, default=None, help="images per decoding run (--e2e-images)"
    )
    ap.add_argument(
        "--decoding-cpu-reduce",
        default="off",
        help="the decoding section's --decoding cpu runs' --decode-reduce: off (full size, as "
        "the device decodes) or auto (an unscored job's default)",
    )
    a = ap.parse_args(argv)
    device = a.device
    if device == "auto":
        device = "cpu"
        with suppress(ImportError):
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = Config(
        model=a.model,
        src=a.src,
        out=a.out,
        device=device,
        engines=_csv(a.engines),
        precisions=_csv(a.precisions),
        batches=tuple(int(b) for b in _csv(a.batch_sizes)),
        seconds=a.seconds,
        images=a.images,
        e2e_images=a.e2e_images,
        fp16_model=a.fp16_model,
        budget_s=a.budget_s,
        decoding_rounds=a.decoding_rounds,
        decoding_images=a.decoding_images,
        decoding_cpu_reduce=a.decoding_cpu_reduce,
        torch_modes=_csv(a.torch_modes)
        if a.torch_modes
        else (("eager", "channels_last", "cudagraphs") if device == "cuda" else ("eager",)),
    )
    try:
        run(cfg)
    except ModnetBatchError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
