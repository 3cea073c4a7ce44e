"""Resolve a model spec (None, a variant name, or a path) to an ONNX file, and describe it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modnet_batch.errors import ModnetBatchError
from modnet_batch.model.fetch import cache_dir, fetch_model, sha256_file

VARIANTS = ("fp32", "fp16", "int8")


def _build_json(path: Path) -> Path:
    return path.with_suffix(".build.json")


def resolve_model(spec: str | None) -> Path:
    if spec is None:
        return fetch_model()
    if spec in VARIANTS:
        path = cache_dir() / "variants" / f"{spec}.onnx"
        if not path.exists():
            raise ModnetBatchError(
                f"variant {spec} is not built; run `modnet-batch build configs/build-{spec}.yaml`"
            )
        return path
    return Path(spec)


def variant_info(path: Path) -> dict[str, Any]:
    info: dict[str, Any] = {"name": path.stem, "sha256": sha256_file(path), "precision": "fp32"}
    meta = _build_json(path)
    if meta.exists():
        data = json.loads(meta.read_text())
        info["precision"] = data.get("precision", "fp32")
        info["build"] = data
    return info


def calibration_overlap(model_path: Path, image_ids: list[str]) -> list[str]:
    meta = _build_json(model_path)
    if not meta.exists():
        return []
    calibrated = set(json.loads(meta.read_text()).get("calibration_ids", []))
    return sorted(calibrated.intersection(image_ids))
