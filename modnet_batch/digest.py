"""SHA-256 of files: models, shards and builds are identified by their content."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Protocol


class Openable(Protocol):
    """A file that opens for reading in binary (a Path, or a storage.UriPath in object
    storage: its failures are then one line naming the URI)."""

    def open(self, mode: str = ...) -> Any: ...


def sha256_file(path: str | os.PathLike[str] | Openable) -> str:
    """Hex SHA-256 of a file (a local path, or a file in object storage), read in 1 MiB blocks."""
    source = Path(path) if isinstance(path, str | os.PathLike) else path
    digest = hashlib.sha256()
    with source.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
