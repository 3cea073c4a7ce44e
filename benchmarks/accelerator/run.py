"""The device benchmark's run, section after section, into one JSON, and its command line."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from benchmarks import accelerator
from benchmarks.accelerator.config import BATCHES, Config, log
from benchmarks.accelerator.feed import feed
from benchmarks.accelerator.inputs import dataset_metrics, infer_all, load_real_images
from benchmarks.accelerator.jobs import decoding, end_to_end
from benchmarks.accelerator.monitor import GpuMonitor
from benchmarks.accelerator.sweep import best_batches, model_only
from benchmarks.stamp import stamp, write_results
from modnet_batch.engine import EngineSpec, open_session
from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution.resources import available_cpus

Fastest = dict[tuple[str, str], tuple[str, dict[str, Any]]]  # (engine, precision) -> mode, best


def _fastest_modes(best_batch: dict[str, dict[str, Any]]) -> Fastest:
    """The fastest torch mode of each engine x precision, with its best batch."""
    fastest: Fastest = {}
    for key, best in best_batch.items():
        engine, precision, mode = key.split("/")
        held = fastest.get((engine, precision))
        if held is None or best["chosen_images_per_s"] > held[1]["chosen_images_per_s"]:
            fastest[(engine, precision)] = (mode, best)
    return fastest


def _end_to_end_section(
    cfg: Config, fastest: Fastest, work: Path, monitor: GpuMonitor, deadline: float
) -> list[dict[str, Any]]:
    e2e: list[dict[str, Any]] = []
    for (engine, precision), (mode, best) in fastest.items():
        if precision != "fp32" and cfg.device == "cpu":
            continue  # reduced precision only pays on accelerators
        if time.monotonic() > deadline:
            e2e.append({"engine": engine, "precision": precision, "skipped": "time budget spent"})
            continue
        folder = work / f"{engine}-{precision}-{mode}"
        e2e.extend(end_to_end(cfg, engine, precision, best["chosen_batch"], folder, monitor, mode))
    return e2e


def _decoding_choice(cfg: Config, fastest: Fastest) -> tuple[str, str, int]:
    """The fastest torch configuration the model-only section found (fp32 on the CPU)."""
    chosen, rate = ("fp32", "eager", 4), -1.0
    for (engine, precision), (mode, best) in fastest.items():
        if engine != "torch" or (cfg.device == "cpu" and precision != "fp32"):
            continue
        if float(best["chosen_images_per_s"] or 0.0) > rate:
            rate = float(best["chosen_images_per_s"] or 0.0)
            chosen = (precision, mode, int(best["chosen_batch"]))
    return chosen


def run(
    cfg: Config, on_section: Callable[[str, dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    started = time.monotonic()
    deadline = started + cfg.budget_s
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {**stamp(), "config": cfg.__dict__}

    def save(section: str) -> None:
        write_results(out / "device.json", doc)
        if on_section is not None:
            on_section(section, doc)

    save("environment")
    monitor = GpuMonitor()
    real = load_real_images(Path(cfg.src), cfg.images)
    log(f"{len(real.ids)} real images at {real.inputs.shape[2]}x{real.inputs.shape[3]}")
    cpu = open_session(EngineSpec(cfg.model, provider="cpu", threads=available_cpus()))
    reference_out = infer_all(cpu, real.inputs, 4)
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
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    fastest = _fastest_modes(doc["best_batch"])
    doc["end_to_end"] = _end_to_end_section(cfg, fastest, work, monitor, deadline)
    shutil.rmtree(work, ignore_errors=True)
    save("end_to_end")
    if cfg.decode_rounds and "torch" in cfg.engines:
        chosen = _decoding_choice(cfg, fastest)
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
        prog="python -m benchmarks.accelerator",
        description=accelerator.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
