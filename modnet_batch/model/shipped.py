"""A model that travels to the workers with the job (through Ray's object store), so that no
node needs the driver's model path or a shared model cache.

The driver reads the ONNX file once; a worker uses the file at the same path when it holds the
same bytes (one machine, a shared file system), else writes them once into its own node's cache,
named by content, and opens that.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from modnet_batch.cache import cache_dir
from modnet_batch.digest import sha256_file
from modnet_batch.errors import ModnetBatchError
from modnet_batch.storage import atomic_write_bytes

SHIPPED_DIR = "shipped"  # <cache>/shipped/<sha256[:16]>-<file name>


@dataclass(frozen=True)
class ShippedModel:
    """The model's bytes as they travel, with what identifies them."""

    name: str  # the driver's file name (kept in the cached copy's name, for people)
    sha256: str
    data: bytes

    @classmethod
    def read(cls, path: str | Path) -> ShippedModel:
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise ModnetBatchError(
                f"cannot read model {p}: {exc.strerror or exc}; check --model"
            ) from None
        return cls(p.name, hashlib.sha256(data).hexdigest(), data)


def materialize(shipped: ShippedModel, path: str | Path) -> Path:
    """A local file holding the shipped model: `path` itself when it holds these bytes, else
    `<cache>/shipped/<sha256[:16]>-<name>` (written atomically once per node)."""
    here = Path(path)
    try:
        if here.stat().st_size == len(shipped.data) and sha256_file(here) == shipped.sha256:
            return here
    except OSError:
        pass  # not on this node
    target = cache_dir() / SHIPPED_DIR / f"{shipped.sha256[:16]}-{shipped.name}"
    try:
        if target.stat().st_size == len(shipped.data) and sha256_file(target) == shipped.sha256:
            return target
    except OSError:
        pass
    try:
        atomic_write_bytes(target, shipped.data)
    except OSError as exc:
        raise ModnetBatchError(
            f"cannot write the job's model to {target} on this node: {exc.strerror or exc}; "
            "set MODNET_BATCH_CACHE to a writable folder on every node"
        ) from None
    return target
