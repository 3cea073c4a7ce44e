"""MODNet's ONNX graph as a torch module, by a converter of the project's own.

Two steps, so that the slow one runs once per model:

1. `read_program(path)` (needs `onnx`): the graph as plain data, a `Program`: the node list
   (op type, input and output names, attributes as ints, floats, strings and lists) and every
   initializer and Constant value as an array. Ops outside `SUPPORTED_OPS` (e.g. the QDQ ops of
   an int8 build) are refused here, in one line that names them.
2. `build_module(program)`: a `torch.fx.GraphModule` generated from the node list. Everything is
   decided at this step: constants become buffers or Python numbers, Slice bounds become Python
   slices, Resize scales Python floats. Shape arithmetic (Shape -> Gather -> Unsqueeze ->
   Concat -> Reshape/Expand, MODNet's SE block) is evaluated on host values whose elements
   are ints or fx nodes reading `x.size(i)`, so batch, height and width stay dynamic and the
   forward is one flat generated function with no per-node dispatch, which torch.compile and
   CUDA graphs can take as it is.

`convert()` does both and compares the module with onnxruntime on check inputs; `load_program()`
does that once per model file and torch version and caches the result beside the model (see
`cache_path`). The op set is MODNet's (opset 11), plus Cast (the fp16 build keeps float32 I/O
and some fp32 nodes with Cast) and the few ops of the tests' models; Resize reproduces
onnxruntime for the modes listed at `resize_like_onnxruntime`.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.fx

from modnet_batch.cache import cache_dir
from modnet_batch.digest import sha256_file
from modnet_batch.engine.torch.ops import build_module
from modnet_batch.engine.torch.program import (
    PROGRAM_FORMAT,
    TOLERANCE,
    TORCH_VERSION,
    UNSUPPORTED_HINT,
    HostArray,
    Program,
    read_program,
)
from modnet_batch.errors import ModnetBatchError

# ---------------------------------------------------------------------------------------------
# The check against onnxruntime


@dataclass(frozen=True)
class CheckResult:
    """How far the converted module's alpha lies from onnxruntime's on the check inputs."""

    max_abs_diff: float
    mean_abs_diff: float
    inputs: int
    shapes: list[list[int]]
    tolerance: float
    reference: str  # what the module was compared with

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance  # NaN fails

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "mean_abs_diff": self.mean_abs_diff,
            "inputs": self.inputs,
            "shapes": self.shapes,
            "tolerance": self.tolerance,
            "reference": self.reference,
            "passed": self.passed,
        }


CHECK_SEED = 7  # the synthetic check portraits' set


def synthetic_check_inputs(count: int = 4, protocol: str = "seed-area") -> list[HostArray]:
    """`count` synthetic portraits (modnet_batch.data.synthetic) preprocessed as `protocol`
    does: the check a conversion gets when no real images are given."""
    from modnet_batch.data.synthetic import synthetic_sample
    from modnet_batch.protocol import get_protocol

    preprocess = get_protocol(protocol).preprocess
    return [preprocess(synthetic_sample(i, seed=CHECK_SEED).image) for i in range(count)]


def check_inputs_from_images(
    paths: Sequence[str | Path], protocol: str = "seed-area"
) -> list[npt.NDArray[np.float32]]:
    """Image files decoded and preprocessed exactly as a job with `protocol` does: float32
    [3,H,W] arrays in [-1, 1]."""
    from modnet_batch.data.decode import decode_image
    from modnet_batch.protocol import get_protocol

    preprocess = get_protocol(protocol).preprocess
    return [preprocess(decode_image(Path(p).read_bytes(), name=str(p))) for p in paths]


def compare_with_onnxruntime(
    module: torch.nn.Module,
    model_path: str | Path,
    inputs: Sequence[npt.NDArray[np.float32]],
    tolerance: float,
    threads: int = 1,
) -> CheckResult:
    """Run `module` (on the CPU, as it is) and onnxruntime's CPU session of `model_path` on
    each input (batch 1); max and mean |diff| over every output pixel."""
    import onnxruntime as ort

    from modnet_batch.engine.base import EngineSpec
    from modnet_batch.engine.onnxruntime import OnnxRuntimeEngine

    if not inputs:
        raise ModnetBatchError("the torch conversion check needs at least one input")
    # spin off: onnxruntime's spinning threads would compete with torch's for the cores
    spec = EngineSpec(model=str(model_path), threads=threads, spin=False)
    session = OnnxRuntimeEngine().open(spec)
    batches = [np.ascontiguousarray(x[None], dtype=np.float32) for x in inputs]
    wanted = [session.run(batch).astype(np.float64) for batch in batches]
    worst, total, count = 0.0, 0.0, 0
    with torch.inference_mode():
        for batch, want in zip(batches, wanted, strict=True):
            got = module(torch.from_numpy(batch)).float().numpy().astype(np.float64)
            if got.shape != want.shape:
                raise ModnetBatchError(
                    f"the torch conversion of {model_path} gives shape {list(got.shape)} where "
                    f"onnxruntime gives {list(want.shape)}; {UNSUPPORTED_HINT}"
                )
            diff = np.abs(got - want)
            worst = max(worst, float(diff.max())) if np.isfinite(diff).all() else math.nan
            total += float(diff.sum())
            count += diff.size
    return CheckResult(
        max_abs_diff=worst,
        mean_abs_diff=total / count,
        inputs=len(inputs),
        shapes=[list(x.shape) for x in inputs],
        tolerance=tolerance,
        reference=f"onnxruntime {ort.__version__} {session.runs_on}",
    )


def convert(
    model_path: str | Path,
    check_inputs: Sequence[npt.NDArray[np.float32]],
    *,
    tolerance: float | None = None,
    threads: int = 1,
) -> tuple[Program, CheckResult]:
    """Read, build and check `model_path`; refuse (ModnetBatchError with the measured difference
    and the tolerance) a conversion whose alpha differs from onnxruntime's beyond `tolerance`
    (default `TOLERANCE` for the graph's precision)."""
    program = read_program(model_path)
    tol = TOLERANCE[program.precision] if tolerance is None else tolerance
    module = build_module(program)
    check = compare_with_onnxruntime(module, model_path, check_inputs, tol, threads)
    if not check.passed:
        raise ModnetBatchError(
            f"the torch conversion of {model_path} is refused: its alpha differs from "
            f"onnxruntime's by max |diff| {check.max_abs_diff:.3g} (mean "
            f"{check.mean_abs_diff:.3g}) on {check.inputs} check input(s), beyond the "
            f"tolerance {tol:g}; {UNSUPPORTED_HINT}"
        )
    return program, check


# ---------------------------------------------------------------------------------------------
# The conversion cache


@dataclass
class Converted:
    """A checked program, and where it came from."""

    program: Program
    record: dict[str, Any]  # source, source_sha256, torch, format, check, convert_seconds
    path: Path | None  # the cache file, None when nothing could be written
    from_cache: bool
    seconds: float  # spent converting or loading, here


def cache_name(model_path: str | Path, sha256: str) -> str:
    """The cache file's name: the model's name and content hash, torch's version, the format."""
    version = re.sub(r"[^0-9A-Za-z.]", "_", TORCH_VERSION)
    return f"{Path(model_path).stem}-{sha256[:16]}-torch{version}-p{PROGRAM_FORMAT}.pt"


def cache_paths(model_path: str | Path, sha256: str) -> list[Path]:
    """Where a conversion is looked for and written, in order: `<cache>/torch/`, then beside the
    ONNX file (for a cache directory that is not writable)."""
    name = cache_name(model_path, sha256)
    return [cache_dir() / "torch" / name, Path(model_path).resolve().parent / name]


def _read_cache(path: Path, sha256: str, tolerance: float | None) -> Converted | None:
    start = time.perf_counter()
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        record = saved["record"]
        ok = (
            record["source_sha256"] == sha256
            and record["torch"] == TORCH_VERSION
            and record["format"] == PROGRAM_FORMAT
            and (tolerance is None or record["check"]["max_abs_diff"] <= tolerance)
        )
        program = Program.from_plain(saved["program"]) if ok else None
    except Exception:  # absent, partial, or from another version: convert again
        return None
    if program is None:
        return None
    return Converted(program, record, path, True, time.perf_counter() - start)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[bool]:
    """Hold an exclusive lock beside `path` (workers opening the same model convert it once);
    yields False when the directory cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)


def load_program(
    model_path: str | Path,
    check_inputs: Callable[[], Sequence[npt.NDArray[np.float32]]] = synthetic_check_inputs,
    *,
    tolerance: float | None = None,
    threads: int = 1,
) -> Converted:
    """The checked program of `model_path` from the cache, converting and checking it once
    per model content, torch version and converter format. `check_inputs` is called only
    when a conversion runs. A cached conversion whose recorded difference exceeds an explicit
    `tolerance` is converted (and checked) again."""
    from modnet_batch.storage import atomic_write_bytes, atomic_write_json

    sha256 = sha256_file(model_path)
    paths = cache_paths(model_path, sha256)
    for path in paths:
        hit = _read_cache(path, sha256, tolerance)
        if hit is not None:
            return hit
    for path in paths:
        with _locked(path) as writable:
            if not writable:
                continue
            hit = _read_cache(path, sha256, tolerance)  # another worker converted meanwhile
            if hit is not None:
                return hit
            converted = _convert_record(model_path, sha256, check_inputs(), tolerance, threads)
            buffer = _serialise(converted)
            try:
                atomic_write_bytes(path, buffer)
                atomic_write_json(path.with_suffix(".json"), converted.record)
            except OSError:
                continue  # not writable after all: the next place, else uncached
            converted.path = path
            return converted
    return _convert_record(model_path, sha256, check_inputs(), tolerance, threads)


def _convert_record(
    model_path: str | Path,
    sha256: str,
    inputs: Sequence[npt.NDArray[np.float32]],
    tolerance: float | None,
    threads: int,
) -> Converted:
    start = time.perf_counter()
    program, check = convert(model_path, inputs, tolerance=tolerance, threads=threads)
    seconds = time.perf_counter() - start
    record = {
        "source": str(model_path),
        "source_sha256": sha256,
        "torch": TORCH_VERSION,
        "format": PROGRAM_FORMAT,
        "precision": program.precision,
        "nodes": len(program.nodes),
        "check": check.to_dict(),
        "convert_seconds": round(seconds, 3),
    }
    return Converted(program, record, None, False, seconds)


def _serialise(converted: Converted) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save({"record": converted.record, "program": converted.program.to_plain()}, buffer)
    return buffer.getvalue()


def describe(converted: Converted) -> str:
    """One line for logs: where the program came from and its check."""
    check = converted.record["check"]
    origin = "cached" if converted.from_cache else "converted"
    return (
        f"{origin} {converted.record['source']} ({converted.seconds:.2f} s): max |diff| "
        f"{check['max_abs_diff']:.2g} vs {check['reference']} on {check['inputs']} input(s), "
        f"tolerance {check['tolerance']:g}"
    )


__all__ = [
    "UNSUPPORTED_HINT",
    "CheckResult",
    "Converted",
    "build_module",
    "check_inputs_from_images",
    "compare_with_onnxruntime",
    "convert",
    "load_program",
    "synthetic_check_inputs",
]
