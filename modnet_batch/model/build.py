"""`modnet-batch build`: make a model variant (fp32, fp16, int8) and its `<name>.build.json`.

Each precision is one builder in BUILDERS; build_variant resolves paths, loads the calibration
images, runs the builder in a scratch dir beside the output, verifies the result against the
source and writes the model and its record atomically.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from modnet_batch import __version__
from modnet_batch.digest import sha256_file
from modnet_batch.engine.onnxruntime import import_onnxruntime
from modnet_batch.engine.signature import check_signature
from modnet_batch.errors import ModnetBatchError
from modnet_batch.model.build_config import BuildConfig, expand_path, load_build_config
from modnet_batch.model.calibration import CalibrationImage, load_calibration_images
from modnet_batch.model.fetch import fetch_model
from modnet_batch.model.variants import build_record_path, variants_dir

Progress = Callable[[str], None]
RECORD_SCHEMA = 1


@dataclass(frozen=True)
class BuildResult:
    output: Path  # the variant's ONNX file
    record_path: Path  # <name>.build.json beside it
    record: dict[str, Any]  # what build.json holds


@dataclass
class BuildContext:
    """What a builder gets: the resolved inputs, a scratch dir, and where to report progress."""

    config: BuildConfig
    source: Path
    workdir: Path
    images: list[CalibrationImage]
    threads: int
    progress: Progress
    keep_float: list[dict[str, Any]] = field(default_factory=list)  # node, op_type, reason
    details: dict[str, Any] = field(default_factory=dict)  # precision-specific record entries
    calibration_ids: list[str] | None = None  # images the variant was fitted on (int8)


def build_variant(
    config: BuildConfig | str | Path, *, force: bool = False, progress: Progress | None = None
) -> BuildResult:
    """Build the variant `config` describes; refuses to replace an existing output unless
    `force`. `progress` receives one-line status messages."""
    started = time.perf_counter()
    say = progress or (lambda _msg: None)
    import_onnxruntime()  # its quantization and verification tools build every variant
    if not isinstance(config, BuildConfig):
        config = load_build_config(config)
    source = expand_path(config.source, "source model") if config.source else fetch_model()
    check_signature(source)
    output = (
        expand_path(config.output, "output")
        if config.output
        else variants_dir() / f"{config.name}.onnx"
    )
    output = output.resolve()
    if output == source.resolve():
        raise ModnetBatchError(f"output {output} is the source model; choose another output")
    _refuse_overwrite(output, force)
    output.parent.mkdir(parents=True, exist_ok=True)
    threads = _cpus()
    builder = BUILDERS[config.precision]
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".build-{config.name}-") as tmp:
        workdir = Path(tmp)
        images: list[CalibrationImage] = []
        if config.calibration.datasets:
            images = load_calibration_images(
                config.calibration, input_shape=config.input_shape, progress=say
            )
            if not images:
                raise ModnetBatchError(
                    "the calibration datasets gave no images (check take / ids / exclude)"
                )
        ctx = BuildContext(config, source, workdir, images, threads, say)
        partial = workdir / "variant.onnx"
        say(f"building {config.precision} variant {config.name} from {source}")
        builder(ctx, partial)
        check_signature(partial)
        verification = _verify(ctx, partial)
        record = _record(ctx, output, partial, verification, time.perf_counter() - started)
        record_partial = workdir / "build.json"
        record_partial.write_text(json.dumps(record, indent=2) + "\n")
        _refuse_overwrite(output, force)  # it may have appeared while we built
        record_path = build_record_path(output)
        # The old record goes first: a model must never sit beside another model's record.
        record_path.unlink(missing_ok=True)
        os.replace(partial, output)
        os.replace(record_partial, record_path)
    say(f"wrote {output} ({record['build_seconds']:.0f} s)")
    return BuildResult(output=output, record_path=record_path, record=record)


def _refuse_overwrite(output: Path, force: bool) -> None:
    if output.exists() and not force:
        raise ModnetBatchError(
            f"{output} already exists; pass --force (force=True) to replace it, or set `output:` "
            "in the build config to another path"
        )


# --- builders: each writes the variant to `dest` and fills ctx.keep_float / ctx.details


def _build_fp32(ctx: BuildContext, dest: Path) -> None:
    """A byte-identical, hash-verified copy. Offline optimisation is left to the runtime: at
    ORT_ENABLE_ALL it writes CPU-specific (NCHWc) kernels that GPU sessions cannot load, and the
    portable levels are exactly what every session applies at load anyway."""
    shutil.copyfile(ctx.source, dest)
    if sha256_file(dest) != sha256_file(ctx.source):
        raise ModnetBatchError(f"copy of {ctx.source} to {dest} differs; check the disk")
    ctx.details["method"] = "verified copy of the source (same SHA-256)"


def _build_fp16(ctx: BuildContext, dest: Path) -> None:
    from modnet_batch.model.fp16 import Fp16Keep, convert_fp16, overflow_risks

    keep = ctx.config.fp16.keep_float
    graph = _graph_nodes(ctx.source)
    kept: list[Fp16Keep] = []
    if keep == "auto":
        if not ctx.images:
            raise ModnetBatchError(
                "fp16 keep_float: auto checks activations on real images; add "
                "calibration.datasets, or list what stays fp32 (e.g. keep_float: "
                "[InstanceNormalization])"
            )
        checked = ctx.images[: ctx.config.calibration.images]
        ctx.progress(f"fp16: checking activations for overflow on {len(checked)} images")
        kept = overflow_risks(ctx.source, [i.tensor for i in checked], ctx.threads)
        ctx.details["check_images"] = [i.image_id for i in checked]
        keep_nodes, keep_ops = [k.node for k in kept], []
    else:
        keep_ops = [k for k in keep if k in set(graph.values())]
        keep_nodes = [k for k in keep if k in graph]
        _check_names([k for k in keep if k not in keep_ops and k not in keep_nodes], graph)
        for name, op in graph.items():
            if op in keep_ops or name in keep_nodes:
                kept.append(Fp16Keep(name, op, "listed in fp16.keep_float"))
    default_block = convert_fp16(ctx.source, dest, keep_nodes, keep_ops)
    for name, op in graph.items():
        if op in default_block and name not in {k.node for k in kept}:
            kept.append(Fp16Keep(name, op, "onnxconverter-common default block list"))
    ctx.keep_float = [asdict(k) for k in kept]
    ctx.details["io_types"] = "float32 (keep_io_types)"


def _build_int8(ctx: BuildContext, dest: Path) -> None:
    from modnet_batch.model.quantize import (
        QuantSettings,
        calibrate,
        prepare_for_quantization,
        quantize,
    )
    from modnet_batch.model.sensitivity import (
        candidate_nodes,
        pick_keep_float,
        rank_nodes,
        run_model,
    )

    cfg, calib = ctx.config.int8, ctx.config.calibration
    settings = QuantSettings(
        method=calib.method,
        percentile=calib.percentile,
        quant_format=cfg.quant_format,
        activation_type=cfg.activation_type,
        weight_type=cfg.weight_type,
        per_channel=cfg.per_channel,
        reduce_range=cfg.reduce_range,
        exclude_op_types=cfg.exclude_op_types,
    )
    prepared = ctx.workdir / "prepared.onnx"
    prepare_for_quantization(ctx.source, prepared)
    input_name = check_signature(prepared).input_name
    tensors = [i.tensor for i in ctx.images]
    ranges = ctx.workdir / "ranges.json"
    ctx.progress(f"int8: calibrating ({calib.method}) on {len(tensors)} images")
    calibrate(prepared, input_name, tensors, settings, ranges, ctx.workdir)
    ctx.calibration_ids = [i.image_id for i in ctx.images]
    graph = _graph_nodes(prepared)
    if cfg.keep_float == "auto":
        picks = _spread(len(tensors), cfg.auto_images)
        subset = [tensors[i] for i in picks]
        reference = run_model(prepared, subset, ctx.threads)
        candidates = [
            c
            for c in candidate_nodes(prepared, cfg.auto_op_types)
            if c[1] not in cfg.exclude_op_types
        ]
        ctx.progress(f"int8: measuring {len(candidates)} nodes one at a time (keep_float: auto)")
        ranking = rank_nodes(
            prepared,
            ranges,
            settings,
            subset,
            reference,
            candidates,
            ctx.workdir,
            threads=ctx.threads,
            progress=ctx.progress,
        )
        chosen = pick_keep_float(ranking, cfg.auto_budget)
        keep = [s.node for s in chosen]
        ctx.keep_float = [
            {
                "node": s.node,
                "op_type": s.op_type,
                "reason": (
                    f"auto: rank {rank + 1} of {len(ranking)}; quantized alone it changes the "
                    f"output by MSE {s.mse:.2e} vs float (worst image {s.worst:.2e})"
                ),
            }
            for rank, s in enumerate(chosen)
        ]
        ctx.details["sensitivity"] = {
            "images": [ctx.images[i].image_id for i in picks],
            "metric": "mean over images of the output MSE vs float, only this node in int8",
            "nodes": [[s.node, s.op_type, float(f"{s.mse:.3e}")] for s in ranking],
        }
    else:
        keep = list(cfg.keep_float)
        _check_names([k for k in keep if k not in graph], graph)
        ctx.keep_float = [
            {"node": k, "op_type": graph[k], "reason": "listed in int8.keep_float"} for k in keep
        ]
    ctx.progress(f"int8: quantizing with {len(keep)} node(s) kept in float")
    protected = quantize(prepared, dest, ranges, settings, keep_float=keep)
    ctx.details["protected_from_runtime_requantization"] = protected
    excluded = [op for op in graph.values() if op in cfg.exclude_op_types]
    ctx.details["float_op_types"] = {
        op: excluded.count(op) for op in sorted(set(excluded))
    }  # int8.exclude_op_types: no int8 CPU kernel, so never quantized
    ctx.details["runtime_ops"] = _runtime_ops(dest, ctx.workdir)
    ctx.details["opset"] = "upgraded to >= 13 for per-channel scales; quant_pre_process applied"


BUILDERS: dict[str, Callable[[BuildContext, Path], None]] = {
    "fp32": _build_fp32,
    "fp16": _build_fp16,
    "int8": _build_int8,
}


# --- helpers


def _cpus() -> int:
    """CPUs this process may use: a build is offline work and takes them all."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _graph_nodes(path: Path) -> dict[str, str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {n.name: n.op_type for n in model.graph.node if n.name}


def _check_names(unknown: list[str], graph: dict[str, str]) -> None:
    if unknown:
        sample = ", ".join(list(graph)[:8])
        raise ModnetBatchError(
            f"keep_float names not in the model: {', '.join(unknown)}; use node names (e.g. "
            f"{sample}) or op types present in the graph"
        )


def _spread(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n), so every calibration dataset is represented."""
    if k >= n:
        return list(range(n))
    return sorted({round(float(i)) for i in np.linspace(0, n - 1, k)})


def _verification_inputs(ctx: BuildContext) -> tuple[list[str], list[npt.NDArray[np.float32]]]:
    count = ctx.config.verify_images
    if ctx.images:
        chosen = [ctx.images[i] for i in _spread(len(ctx.images), count)] if count else []
        return [i.image_id for i in chosen], [i.tensor for i in chosen]
    if not count:
        return [], []
    # No images configured: a seeded, smooth random image in [-1, 1] at input_shape.
    import cv2

    h, w = ctx.config.input_shape or (480, 288)
    coarse = np.random.default_rng(0).uniform(-1, 1, (h // 32 + 2, w // 32 + 2, 3))
    smooth = cv2.resize(coarse.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return ["synthetic-seed0"], [np.ascontiguousarray(smooth.transpose(2, 0, 1))]


def _verify(ctx: BuildContext, variant: Path) -> dict[str, Any]:
    """The variant against the source on a few inputs: it loads, runs, and how close it is."""
    from modnet_batch.model.sensitivity import run_model

    ids, tensors = _verification_inputs(ctx)
    if not tensors:
        return {"images": []}
    ctx.progress(f"verifying against the source on {len(tensors)} input(s)")
    ours = run_model(variant, tensors, ctx.threads)
    ref = run_model(ctx.source, tensors, ctx.threads)
    mse = [float(np.mean((a - b) ** 2)) for a, b in zip(ours, ref, strict=True)]
    worst = max(float(np.abs(a - b).max()) for a, b in zip(ours, ref, strict=True))
    finite = all(bool(np.isfinite(a).all()) for a in ours)
    if not finite:
        raise ModnetBatchError(
            f"the {ctx.config.precision} variant outputs NaN or inf on {ids}; keep the failing "
            "nodes in float (keep_float) and rebuild"
        )
    return {
        "images": ids,
        "output_mse_vs_source": float(f"{np.mean(mse):.4e}"),
        "output_max_abs_diff": round(worst, 5),
    }


def _runtime_ops(model: Path, workdir: Path) -> dict[str, int]:
    """Op types of the graph onnxruntime's CPU provider actually runs (after its fusions)."""
    import onnx
    import onnxruntime as ort

    optimized = workdir / "runtime-view.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    counts: dict[str, int] = {}
    for node in onnx.load(str(optimized)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    optimized.unlink()
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _tools() -> dict[str, str]:
    import onnx
    import onnxconverter_common
    import onnxruntime

    return {
        "modnet_batch": __version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxconverter_common": onnxconverter_common.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def _record(
    ctx: BuildContext, output: Path, partial: Path, verification: dict[str, Any], seconds: float
) -> dict[str, Any]:
    settings = replace(ctx.config, source=str(ctx.source), output=str(output)).to_dict()
    record: dict[str, Any] = {
        "schema": RECORD_SCHEMA,
        "name": ctx.config.name,
        "precision": ctx.config.precision,
        "source": {"path": str(ctx.source), "sha256": sha256_file(ctx.source)},
        "output": {
            "path": str(output),
            "sha256": sha256_file(partial),
            "bytes": partial.stat().st_size,
        },
        "settings": settings,
        "calibration": None,
        "keep_float": ctx.keep_float,
        "details": ctx.details,
        "verification": verification,
        "tools": _tools(),
        "build_seconds": round(seconds, 1),
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if ctx.calibration_ids is not None:
        record["calibration"] = {
            "protocol": ctx.config.calibration.protocol,
            "method": ctx.config.calibration.method,
            "count": len(ctx.calibration_ids),
            "ids": ctx.calibration_ids,
            "images": [{"dataset": i.dataset, "image_id": i.image_id} for i in ctx.images],
        }
    return record
