"""Atomic file writes: a file is complete or absent, never half-written (local: a temp file and a
rename; object storage: one upload, UriPath.write_bytes)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from modnet_batch.storage.paths import AnyPath
from modnet_batch.storage.uri import UriPath


def _umask() -> int:
    """The process's umask (os.umask can only be read by setting it; done once, at import)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; results live on storage other users (and cluster nodes) read, so
# they get the mode any other file the process writes gets: 0666 less the umask.
FILE_MODE = 0o666 & ~_umask()
# A file being written is `.<name>.<random><TEMP_SUFFIX>` beside its destination; one left by a
# killed process is removed when its run resumes.
TEMP_SUFFIX = ".tmp"


def atomic_write_bytes(path: AnyPath, data: bytes) -> None:
    """Write through a temp file in the same directory and rename: complete or absent."""
    if isinstance(path, UriPath):
        path.write_bytes(data)  # visible only once the whole object is uploaded
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None  # name the file, not a temp
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            os.fchmod(fh.fileno(), FILE_MODE)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):  # a write on the descriptor names no file: name ours
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


def atomic_write_json(path: AnyPath, obj: Any, *, sort_keys: bool = True) -> None:
    """`obj` as indented JSON, atomically (`sort_keys=False`: in the order it was built)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n").encode())
