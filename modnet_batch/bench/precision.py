"""Precision benchmark: fp32 vs fp16 vs int8 MODNet, accuracy and model-only speed side by side.

Calibrates on the first 20 ppm100-dev ids (sorted) + p3m10k-sample, evaluates on the other 21
ppm100-dev images (seed-area, 3x480x288). `python -m modnet_batch.bench.precision --out DIR`.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from modnet_batch.data.decode import decode_image, decode_matte
from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution.rundir import atomic_write_json
from modnet_batch.metrics import confusion, mad, mse
from modnet_batch.model.build import build_variant
from modnet_batch.model.build_config import (
    BuildConfig,
    CalibrationConfig,
    Fp16Config,
    ImageSource,
    Int8Config,
)
from modnet_batch.model.calibration import load_calibration_images
from modnet_batch.model.fetch import fetch_model, sha256_file
from modnet_batch.model.quantize import QuantSettings, calibrate, prepare_for_quantization, quantize
from modnet_batch.model.session import ModelSession, SessionSpec, open_session
from modnet_batch.model.signature import check_signature
from modnet_batch.model.variants import read_build_record
from modnet_batch.protocol import Protocol, get_protocol

SCHEMA = 1
PROTOCOL = "seed-area"
CALIBRATION_PPM = 20  # first N sorted ppm100-dev ids calibrate; the rest evaluate
SEED_TABLE = {  # the seed model zoo's PPM-100 numbers at 3x480x288 (other images, other protocol)
    "fp32": {"mse": 0.00945, "mad": 0.01456, "miou": 0.9709},
    "fp16": {"mse": 0.00951, "mad": 0.01378, "miou": 0.9708},
    "int8": {"mse": 0.01915, "mad": 0.02453, "miou": 0.9465},
}
TARGETS = {"int8_mse_ratio_max": 1.10, "int8_miou_drop_max": 0.005, "int8_speedup_min": 1.4}
FP16_MSE_TOLERANCE = 1e-4
SPIN_MODES = {"on": (True,), "off": (False,), "both": (True, False)}
Log = Callable[[str], None]


@dataclass(frozen=True)
class EvalImage:
    image_id: str
    tensor: npt.NDArray[np.float32]  # 3x480x288, the protocol's network input
    gt: npt.NDArray[np.float64]  # 480x288 ground truth in [0, 1]


def split_ids(shared: Path) -> tuple[list[str], list[str]]:
    """(calibration, evaluation) ppm100-dev ids: the first CALIBRATION_PPM sorted, the rest."""
    folder = shared / "datasets" / "ppm100-dev" / "image"
    if not folder.is_dir():
        raise ModnetBatchError(
            f"{folder} does not exist; pass --shared DIR (or set MODNET_SHARED_DIR) to the shared "
            "data directory holding datasets/ppm100-dev"
        )
    ids = sorted(p.stem for p in folder.iterdir() if p.is_file())
    return ids[:CALIBRATION_PPM], ids[CALIBRATION_PPM:]


def calibration_config(shared: Path) -> CalibrationConfig:
    datasets = (
        ImageSource(path=str(shared / "datasets" / "ppm100-dev"), take=CALIBRATION_PPM),
        ImageSource(path=str(shared / "datasets" / "p3m10k-sample")),
    )
    return CalibrationConfig(datasets=datasets, images=50, protocol=PROTOCOL)


def load_eval_images(shared: Path, ids: Sequence[str], protocol: Protocol) -> list[EvalImage]:
    """Decode and preprocess exactly as a job does (decode_image, protocol.preprocess)."""
    root = shared / "datasets" / "ppm100-dev"
    out = []
    for image_id in ids:
        image = next((root / "image").glob(f"{image_id}.*"))
        matte = next((root / "matte").glob(f"{image_id}.*"))
        rgb = decode_image(image.read_bytes(), name=image_id)
        gt = protocol.ground_truth(decode_matte(matte.read_bytes(), name=image_id))
        out.append(EvalImage(image_id, protocol.preprocess(rgb), gt))
    return out


def evaluate(
    model: Path, images: Sequence[EvalImage], protocol: Protocol, threads: int
) -> dict[str, Any]:
    """Per-image MSE/MAD averaged; mIoU from the confusion matrix pooled over all pixels."""
    session = open_session(SessionSpec(model=str(model), provider="cpu", threads=threads))
    errors: list[tuple[float, float]] = []
    tp = fp = fn = tn = 0
    for img in images:
        out = np.asarray(session.run(img.tensor[None]))[0, 0]
        pred = protocol.postprocess(out, *img.gt.shape).score
        errors.append((mse(pred, img.gt), mad(pred, img.gt)))
        c = confusion(protocol.foreground(pred), protocol.foreground(img.gt))
        tp, fp, fn, tn = tp + c[0], fp + c[1], fn + c[2], tn + c[3]
    miou = (tp / (tp + fp + fn) + tn / (tn + fp + fn)) / 2
    return {
        "n": len(images),
        "mse": float(np.mean([e[0] for e in errors])),
        "mad": float(np.mean([e[1] for e in errors])),
        "miou": float(miou),
        "per_image_mse": {
            img.image_id: round(e[0], 6) for img, e in zip(images, errors, strict=True)
        },
    }


def throughput(
    models: dict[str, Path],
    images: Sequence[EvalImage],
    batch: int,
    reps: int,
    threads: int,
    spin: bool,
) -> dict[str, Any]:
    """Model-only latency of each model, interleaved rep by rep (rotating the order), medians."""
    sessions: dict[str, ModelSession] = {
        k: open_session(SessionSpec(model=str(p), provider="cpu", threads=threads, spin=spin))
        for k, p in models.items()
    }
    x = np.ascontiguousarray(np.stack([images[i % len(images)].tensor for i in range(batch)]))
    for s in sessions.values():  # warm-up: first runs allocate and pick kernels
        s.run(x)
        s.run(x)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    labels = list(sessions)
    for rep in range(reps):
        for k in labels[rep % len(labels) :] + labels[: rep % len(labels)]:
            t0 = time.perf_counter()
            sessions[k].run(x)
            times[k].append(time.perf_counter() - t0)
    base = labels[0]
    result: dict[str, Any] = {}
    for k, t in times.items():
        med = float(np.median(t))
        paired = np.asarray(times[base]) / np.asarray(t)
        result[k] = {
            "median_ms": round(med * 1000, 2),
            "p10_ms": round(float(np.percentile(t, 10)) * 1000, 2),
            "p90_ms": round(float(np.percentile(t, 90)) * 1000, 2),
            "images_per_s": round(batch / med, 3),
            f"speedup_vs_{base}": round(float(np.median(times[base])) / med, 3),
            f"paired_speedup_vs_{base}": round(float(np.median(paired)), 3),
        }
    return result


def tradeoff(
    source: Path,
    int8_record: dict[str, Any],
    shared: Path,
    budgets: Sequence[int],
    images: Sequence[EvalImage],
    protocol: Protocol,
    out: Path,
    reps: int,
    threads: int,
    spin: bool,
    log: Log,
) -> list[dict[str, Any]]:
    """Accuracy and speed with the K most sensitive nodes in float, for each K in `budgets`."""
    ranking = [n[0] for n in int8_record["details"]["sensitivity"]["nodes"]]
    s = int8_record["settings"]
    settings = QuantSettings(
        method=s["calibration"]["method"],
        percentile=s["calibration"]["percentile"],
        quant_format=s["int8"]["quant_format"],
        activation_type=s["int8"]["activation_type"],
        weight_type=s["int8"]["weight_type"],
        per_channel=s["int8"]["per_channel"],
        reduce_range=s["int8"]["reduce_range"],
        exclude_op_types=tuple(s["int8"]["exclude_op_types"]),
    )
    work = out / "tradeoff"
    work.mkdir(parents=True, exist_ok=True)
    prepared = work / "prepared.onnx"
    prepare_for_quantization(source, prepared)
    calib = load_calibration_images(calibration_config(shared), input_shape=(480, 288))
    ranges = work / "ranges.json"
    log(f"trade-off: calibrating on {len(calib)} images")
    calibrate(
        prepared,
        check_signature(prepared).input_name,
        [c.tensor for c in calib],
        settings,
        ranges,
        work,
    )
    models: dict[str, Path] = {"fp32": source}
    rows: list[dict[str, Any]] = []
    for k in budgets:
        path = work / f"int8-keep{k}.onnx"
        quantize(prepared, path, ranges, settings, keep_float=ranking[:k])
        models[f"keep{k}"] = path
        acc = evaluate(path, images, protocol, threads)
        rows.append(
            {"keep_float": k, "nodes": ranking[:k], **{m: acc[m] for m in ("mse", "mad", "miou")}}
        )
        log(f"trade-off: keep {k}: MSE {acc['mse']:.5f} mIoU {acc['miou']:.4f}")
    speed = throughput(models, images, 1, reps, threads, spin)
    for row in rows:
        row["speedup_vs_fp32_batch1"] = speed[f"keep{row['keep_float']}"]["speedup_vs_fp32"]
    return rows


def run(args: argparse.Namespace, log: Log) -> dict[str, Any]:
    shared = Path(args.shared).resolve()
    out = Path(args.out).resolve()
    protocol = get_protocol(PROTOCOL)
    calib_ids, eval_ids = split_ids(shared)
    source = fetch_model()
    variants = out / "variants"
    calibration = calibration_config(shared)
    configs = {
        "fp16": BuildConfig(
            name="fp16",
            precision="fp16",
            calibration=replace(calibration, images=8),
            fp16=Fp16Config(keep_float="auto"),
        ),
        "int8": BuildConfig(
            name="int8",
            precision="int8",
            calibration=calibration,
            int8=Int8Config(auto_budget=args.budget),
        ),
    }
    paths: dict[str, Path] = {"fp32": source}
    builds: dict[str, Any] = {}
    for name, cfg in configs.items():
        path = variants / f"{name}.onnx"
        if args.rebuild or not path.exists():
            log(f"building {name}")
            build_variant(replace(cfg, output=str(path)), force=True, progress=log)
        paths[name] = path
        record = read_build_record(path) or {}
        builds[name] = {
            "path": str(path),
            "sha256": sha256_file(path),
            "build_seconds": record.get("build_seconds"),
            "keep_float": record.get("keep_float"),
            "calibration_ids": (record.get("calibration") or {}).get("ids"),
        }
    images = load_eval_images(shared, eval_ids, protocol)
    overlap = set(builds["int8"]["calibration_ids"] or []) & set(eval_ids)
    if overlap:
        raise ModnetBatchError(f"calibration and evaluation overlap: {sorted(overlap)}")
    log(f"evaluating fp32, fp16, int8 on {len(images)} images")
    accuracy = {k: evaluate(p, images, protocol, args.threads) for k, p in paths.items()}
    speed: dict[str, Any] = {}
    for spin in SPIN_MODES[args.spin]:
        for batch in args.batches:
            key = f"batch_{batch}" + ("" if spin else "_nospin")
            log(f"throughput {key}: {args.reps} interleaved reps, {args.threads} threads")
            speed[key] = throughput(paths, images, batch, args.reps, args.threads, spin)
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "protocol": PROTOCOL,
        "split": {"calibration": [*calib_ids, "p3m10k-sample/*"], "evaluation": eval_ids},
        "builds": builds,
        "accuracy": accuracy,
        "throughput": {"threads": args.threads, "reps": args.reps, **speed},
        "targets": _targets(accuracy, speed),
        "seed_table": SEED_TABLE,
        "environment": {
            "cpu_count": os.cpu_count(),
            "load_average": list(os.getloadavg()),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
        },
    }
    if args.tradeoff:
        int8_record = read_build_record(paths["int8"]) or {}
        doc["tradeoff"] = tradeoff(
            source,
            int8_record,
            shared,
            args.tradeoff,
            images,
            protocol,
            out,
            args.reps,
            args.threads,
            SPIN_MODES[args.spin][0],
            log,
        )
    return doc


def _targets(accuracy: dict[str, Any], speed: dict[str, Any]) -> dict[str, Any]:
    fp32, int8, fp16 = accuracy["fp32"], accuracy["int8"], accuracy["fp16"]
    ratio = int8["mse"] / fp32["mse"]
    drop = fp32["miou"] - int8["miou"]
    fp16_diff = abs(fp16["mse"] - fp32["mse"])
    checks = {
        "int8_mse_ratio": (ratio, ratio <= TARGETS["int8_mse_ratio_max"]),
        "int8_miou_drop": (drop, drop <= TARGETS["int8_miou_drop_max"]),
        "fp16_mse_diff": (fp16_diff, fp16_diff <= FP16_MSE_TOLERANCE),
    }
    for key, s in speed.items():
        v = s["int8"]["speedup_vs_fp32"]
        checks[f"int8_speedup_{key}"] = (v, v >= TARGETS["int8_speedup_min"])
    return {k: {"value": round(float(v), 5), "met": bool(ok)} for k, (v, ok) in checks.items()}


def format_table(doc: dict[str, Any]) -> str:
    acc, thr = doc["accuracy"], doc["throughput"]
    batches = [k for k in thr if k.startswith("batch_")]
    head = f"{'variant':8s} {'MSE':>9s} {'MAD':>9s} {'mIoU':>7s}" + "".join(
        f" {b + ' img/s':>14s} {'x fp32':>7s}" for b in batches
    )
    lines = [head, "-" * len(head)]
    for k in ("fp32", "fp16", "int8"):
        row = f"{k:8s} {acc[k]['mse']:9.5f} {acc[k]['mad']:9.5f} {acc[k]['miou']:7.4f}"
        for b in batches:
            row += f" {thr[b][k]['images_per_s']:14.2f} {thr[b][k]['speedup_vs_fp32']:7.2f}"
        lines.append(row)
    lines.append("")
    for name, t in doc["targets"].items():
        lines.append(f"{name:26s} {t['value']:>10.5f}  {'met' if t['met'] else 'NOT met'}")
    for row in doc.get("tradeoff", []):
        lines.append(
            f"keep {row['keep_float']:2d} in float: MSE {row['mse']:.5f} mIoU {row['miou']:.4f} "
            f"speed x{row['speedup_vs_fp32_batch1']:.2f} (batch 1)"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="directory for variants and precision.json")
    parser.add_argument("--shared", default=os.environ.get("MODNET_SHARED_DIR", "../shared"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--reps", type=int, default=15, help="interleaved repetitions per model")
    parser.add_argument("--budget", type=int, default=8, help="int8 auto keep-float budget")
    parser.add_argument("--tradeoff", type=int, nargs="*", default=[0, 2, 4, 8, 12, 16])
    parser.add_argument(
        "--spin",
        choices=sorted(SPIN_MODES),
        default="on",
        help="onnxruntime threads busy-wait between ops: on (the session default), off, both",
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild variants found in OUT")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f}s] {msg}", file=sys.stderr, flush=True)

    try:
        doc = run(args, log)
    except ModnetBatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    doc["seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    atomic_write_json(out / "precision.json", doc)
    print(format_table(doc))
    print(f"\nwrote {out / 'precision.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
