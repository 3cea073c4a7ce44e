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
6. `decoding`: matting only (no ground truth, source-size PNG alphas) from the original JPEGs
   with the torch engine, `--decoding cpu` (every core decodes) against `--decoding device`
   (the device's JPEG decoder), alternated over rounds with medians and their ratio, each run's
   fallback counts, device memory peak and utilisation; then a scored job of the real images
   both ways and the metric deltas of device decoding (approximate by design). The CPU runs
   decode as an unscored job does by default (reduced where the protocol allows);
   `--decoding-cpu-reduce off` makes them decode at full size, as the device does.

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
    decode_rounds: int = 3  # alternated cpu/device rounds of the `decoding` section (0: none)
    # the decoding section's --decoding cpu runs' decode_reduce: None is an unscored job's
    # default (auto: JPEGs decoded reduced where the protocol allows, while the device decodes
    # at full size); "off" decodes at full size as the device does (like for like)
    decoding_cpu_reduce: str | None = None


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
    `mattes`, the photos alone (a matting job)."""
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


# --- 6. decoding on the device ---------------------------------------------------------------
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
    import pyarrow.parquet as pq

    from modnet_batch.data.ingest import ingest

    planned = _spec(cfg, "torch", precision, mode)
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
    src = _replicated_source(cfg, work / "src", cfg.e2e_images, mattes=False)
    dataset = work / "dataset"
    ingest(src, dataset, shard_size=64, workers=available_cpus())
    runs: list[dict[str, Any]] = []
    for round_ in range(cfg.decode_rounds):
        for how in ("cpu", "device"):
            if time.monotonic() > deadline:
                section["stopped"] = "time budget spent"
                break
            out = work / f"run-{how}-{round_}"
            _torch_memory_reset(cfg.device)
            reduce = {"decode_reduce": cfg.decoding_cpu_reduce} if how == "cpu" else {}
            reduce = {k: v for k, v in reduce.items() if v is not None}
            try:
                with monitor.watch() as util:
                    outcome = _decoding_job(
                        cfg, dataset, out, how, spec, batch, output="alpha-png", **reduce
                    )
            except ModnetBatchError as exc:  # no torchvision, no device decoder: say why
                return {**section, "skipped": str(exc), "runs": runs}
            except Exception as exc:  # e.g. out of device memory: recorded, the bench goes on
                runs.append({"decoding": how, "round": round_, "error": _first_line(exc)})
                log(f"decoding {how} round {round_}: {runs[-1]['error']}")
                shutil.rmtree(out, ignore_errors=True)
                continue
            thr = outcome.summary.throughput
            runs.append(
                {
                    "decoding": how,
                    "round": round_,
                    "images": thr.images,
                    "failed": outcome.summary.images.failed,
                    "images_per_s": thr.overall_images_per_s,
                    "wall_s": thr.wall_s,
                    "startup_s": outcome.summary.startup_seconds,
                    "stages_s": thr.stages_s,
                    "decoded": outcome.summary.decoding,
                    "decode": outcome.summary.job.decode,  # how the pool threads decoded
                    "torch_memory_peak_mib": _torch_memory_peak(cfg.device),
                    **util,
                }
            )
            log(f"decoding {how} round {round_}: {runs[-1]['images_per_s']} img/s")
            shutil.rmtree(out, ignore_errors=True)
    section["runs"] = runs
    medians: dict[str, float] = {}
    for how in ("cpu", "device"):
        rates = [r["images_per_s"] for r in runs if r["decoding"] == how and r.get("images_per_s")]
        if rates:
            medians[how] = float(np.median(rates))
    section["median_images_per_s"] = medians
    if "cpu" in medians and "device" in medians and medians["cpu"] > 0:
        section["device_over_cpu"] = round(medians["device"] / medians["cpu"], 3)
    if time.monotonic() > deadline:
        section["metric_deltas"] = {"skipped": "time budget spent"}
        return section
    # the metric deltas: a scored job of the real images, decoded both ways
    scored_src = _replicated_source(cfg, work / "scored-src", cfg.images)
    if not (scored_src / "matte").is_dir():
        section["metric_deltas"] = {"skipped": f"{cfg.src} has no mattes to score against"}
        return section
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
        except Exception as exc:  # the throughput figures above are kept either way
            section["metric_deltas"] = {"error": f"scored --decoding {how}: {_first_line(exc)}"}
            log(f"decoding metric deltas: {section['metric_deltas']['error']}")
            return section
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
    section["metric_deltas"] = {
        "images": len(rows["cpu"]),
        "cpu": cpu_m,
        "device": dev_m,
        "delta": {
            k: None if cpu_m.get(k) is None or dev_m.get(k) is None else dev_m[k] - cpu_m[k]
            for k in METRICS
        },
        "max_abs_image_mse_delta": moved[worst] if worst is not None else None,
        "max_abs_image_mse_delta_image": worst,
        "compared": len(moved),
        "decoded": results["device"].decoding,
        "decode_check": results["device"].decode_check,
        "job_decode": results["device"].job.decode,
    }
    return section


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
    save("end_to_end")
    if cfg.decode_rounds and "torch" in cfg.engines:
        # the fastest torch configuration the model-only section found (fp32 on the CPU)
        chosen, rate = ("fp32", "eager", 4), -1.0
        for (engine, precision), (mode, best) in fastest.items():
            if engine != "torch" or (cfg.device == "cpu" and precision != "fp32"):
                continue
            if float(best["chosen_images_per_s"] or 0.0) > rate:
                rate = float(best["chosen_images_per_s"] or 0.0)
                chosen = (precision, mode, int(best["chosen_batch"]))
        if time.monotonic() > deadline:
            doc["decoding"] = {"skipped": "time budget spent"}
        else:
            doc["decoding"] = decoding(cfg, *chosen, work / "decoding", monitor, deadline)
        shutil.rmtree(work, ignore_errors=True)
        save("decoding")
    doc["seconds"] = round(time.monotonic() - started, 1)
    save("done")
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
        "--decode-rounds",
        type=int,
        default=3,
        help="alternated --decoding cpu/device rounds of the decoding section (0: skip it)",
    )
    ap.add_argument(
        "--decoding-cpu-reduce",
        default=None,
        help="the decoding section's --decoding cpu runs' --decode-reduce: none (an unscored "
        "job's default, auto) or off (full-size decoding, as on the device)",
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
        decode_rounds=a.decode_rounds,
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
