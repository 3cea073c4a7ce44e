"""Resolve a model spec (None, a variant name, or a path) to an ONNX file, and describe it.

Variants live in `<cache>/variants/<name>.onnx` with `<name>.build.json` beside them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from modnet_batch.digest import sha256_file
from modnet_batch.engine.signature import check_signature
from modnet_batch.errors import ModnetBatchError
from modnet_batch.model.fetch import cache_dir, fetch_model
from modnet_batch.model.remote import fetch_uri_model
from modnet_batch.storage import atomic_write_bytes, is_uri

VARIANTS = ("fp32", "fp16", "int8")


def variants_dir() -> Path:
    """Where `modnet-batch build` writes variants unless a config says otherwise."""
    return cache_dir() / "variants"


def build_record_path(model_path: str | Path) -> Path:
    """`<dir>/<name>.build.json` for `<dir>/<name>.onnx`."""
    path = Path(model_path)
    return path.with_name(path.stem + ".build.json")


def read_build_record(model_path: str | Path) -> dict[str, Any] | None:
    """The model's build.json, or None when it has none (e.g. the reference model).

    Raises ModnetBatchError if the record exists but is unreadable.
    """
    record_path = build_record_path(model_path)
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModnetBatchError(
            f"{record_path} is unreadable ({exc}); rebuild the variant with `modnet-batch build`"
        ) from exc
    if not isinstance(record, dict):
        raise ModnetBatchError(f"{record_path} is not a build record; rebuild the variant")
    return record


def resolve_model(spec: str | None) -> Path:
    """None -> the fetched reference; fp32/fp16/int8 -> the built variant; a URI -> its copy
    in the local cache (model/remote.py); else a path."""
    if spec is None:
        return fetch_model()
    if is_uri(spec):
        return fetch_uri_model(spec)
    if spec in VARIANTS:
        path = variants_dir() / f"{spec}.onnx"
        if not path.is_file():
            raise ModnetBatchError(
                f"model variant {spec!r} is not built (no {path}); run "
                f"`modnet-batch build {spec}` first"
            )
        return path
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModnetBatchError(
            f"model {spec!r} is neither a variant name ({', '.join(VARIANTS)}) nor an existing "
            "ONNX file; pass a path, or build the variant with `modnet-batch build CONFIG`"
        )
    return path


def variant_info(path: str | Path, digest: str | None = None) -> dict[str, Any]:
    """name, precision, sha256, path and, when built here, the build record (`build`).

    `precision` comes from build.json, else from the graph (quantize ops -> int8, fp16
    initializers -> fp16, else fp32). `stale` is True when build.json names another file hash.
    `digest`: the file's sha256 where the caller has it.
    """
    path = Path(path)
    digest = digest or sha256_file(path)
    info: dict[str, Any] = {"name": path.stem, "path": str(path), "sha256": digest}
    record = read_build_record(path)
    if record is not None:
        info["precision"] = record.get("precision") or graph_precision(path, digest)
        info["name"] = record.get("name", path.stem)
        info["stale"] = record.get("output", {}).get("sha256") != digest
        info["build"] = record
    else:
        info["precision"] = graph_precision(path, digest)
    return info


def checked_model(path: str | Path) -> dict[str, Any]:
    """variant_info of a model with MODNet's signature; else one line saying what the file
    is. Both are read from the graph once per model file (see `remembered`)."""
    path = Path(path)
    if not path.is_file():
        check_signature(path)  # says how to get a model
    digest = sha256_file(path)

    def signature() -> str:
        found = check_signature(path)
        return f"{found.input_name}\n{found.output_name}"

    # the rule's version in the name: a change to what check_signature accepts takes a new one
    remembered("signature-1", digest, signature, lambda text: len(text.splitlines()) == 2)
    return variant_info(path, digest)


def calibration_ids(model_path: str | Path) -> set[str]:
    """The image ids the model was calibrated on; empty if it has no build record with them."""
    record = read_build_record(model_path)
    calibration = (record or {}).get("calibration") or {}
    return set(calibration.get("ids") or [])


def calibration_overlap(model_path: str | Path, image_ids: Iterable[str]) -> list[str]:
    """The ids among `image_ids` that the model was calibrated on (sorted); [] if none or if the
    model has no build record with calibration ids."""
    return sorted(calibration_ids(model_path).intersection(image_ids))


def graph_precision(path: Path, digest: str) -> str:
    """int8 (quantize ops), fp16 (fp16 initializers) or fp32, read from the graph once per model
    file: reading it needs the onnx package, whose import alone takes most of a second."""
    return remembered(
        "graph-precision", digest, lambda: _graph_precision(path), VARIANTS.__contains__
    )


def remembered(
    fact: str, digest: str, read: Callable[[], str], valid: Callable[[str], bool]
) -> str:
    """A fact about a model file, `read` from its graph once per content and remembered under
    `<cache>/<fact>/<sha256>`. A record that is not `valid` is read again; in a read-only
    cache, each time."""
    record = cache_dir() / fact / digest
    with contextlib.suppress(OSError, UnicodeDecodeError):
        known = record.read_text(encoding="utf-8").rstrip("\n")
        if valid(known):
            return known
    text = read()
    with contextlib.suppress(OSError):
        atomic_write_bytes(record, text.encode() + b"\n")
    return text


def _graph_precision(path: Path) -> str:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger"}:
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    return "fp32"
