"""A model named by URI (`--model s3://bucket/models/modnet.onnx`): fetched once into the local
cache, keyed by its content, with its build record (`<name>.build.json` beside it) if it has one.

`<cache>/remote/<sha256>/<name>.onnx` holds the file (written through a temp file, renamed only
once complete, so the cache never holds half a model); `<cache>/remote/seen/<key>.json` maps the
URI (redacted), size and mtime the object had to that SHA-256, so that the next job finds it with
one metadata request instead of a download. A changed object (other size or mtime) is fetched
again. Each process resolves the URI itself (a Ray worker on another node: into its own cache).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

from modnet_batch.cache import cache_dir
from modnet_batch.errors import ModnetBatchError
from modnet_batch.storage import UriPath, redact

BLOCK = 1 << 20


def remote_dir() -> Path:
    return cache_dir() / "remote"


def _download(src: UriPath, target: Path) -> str:
    """`src` into `target` (through a temp file beside it); its SHA-256."""
    digest = hashlib.sha256()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, src.open_input_file() as fh:
            while block := fh.read(BLOCK):
                digest.update(block)
                out.write(block)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest.hexdigest()


def fetch_uri_model(uri: str) -> Path:
    """The local copy of the model at `uri` (downloaded when not cached or changed)."""
    src = UriPath(uri)
    try:
        stat = src.stat()
    except FileNotFoundError:
        raise ModnetBatchError(
            f"model {src} does not exist; pass the URI of an ONNX file, a local path or a "
            "variant name"
        ) from None
    shown = redact(src.uri)
    key = hashlib.sha256(f"{shown}\0{stat.st_size}\0{stat.st_mtime}".encode()).hexdigest()[:32]
    seen = remote_dir() / "seen" / f"{key}.json"
    name = src.name if src.suffix else f"{src.name}.onnx"
    try:
        known = json.loads(seen.read_text())
        cached = remote_dir() / str(known["sha256"]) / name
        if cached.is_file():
            return cached
    except (OSError, ValueError, KeyError, TypeError):
        pass
    staging = remote_dir() / f".incoming-{os.getpid()}"
    digest = _download(src, staging / name)
    target = remote_dir() / digest / name
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging / name, target)
    record = src.with_name(src.stem + ".build.json")
    if record.is_file():  # a built variant's record travels with it
        local_record = target.with_name(target.stem + ".build.json")
        _download(record, local_record)
    with contextlib.suppress(OSError):
        staging.rmdir()
    seen.parent.mkdir(parents=True, exist_ok=True)
    seen.write_text(json.dumps({"uri": shown, "sha256": digest, "size": stat.st_size}) + "\n")
    return target
