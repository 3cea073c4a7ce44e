"""The project's error types: library code raises them, the CLI prints each as one line."""

from __future__ import annotations

import errno
import os
from typing import TypeGuard


class ModnetBatchError(Exception):
    """A user-facing error whose message names the input, what was expected and the fix."""


class StorageError(ModnetBatchError):
    """The run directory cannot be written (full, read-only, no permission): every further image
    would fail the same way, so the job stops; what finished is kept for a resume."""


class JobInterrupted(ModnetBatchError):
    """The job was stopped by a signal (SIGTERM, SIGINT); what finished is kept for a resume."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


# Write errors that no retry of an image can pass: the whole run directory is affected.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})

_FIXES = {
    errno.ENOSPC: "no space left on its device: free space (or pass another --out)",
    errno.EDQUOT: "the disk quota is exceeded: free space (or pass another --out)",
    errno.EROFS: "its file system is read-only: pass a writable --out",
    errno.EACCES: "permission denied: make it writable for this user (or pass another --out)",
    errno.EPERM: "not permitted: make it writable for this user (or pass another --out)",
}


def storage_error(exc: OSError, resume: bool = True) -> StorageError:
    """One line for a write that failed on the run directory's storage: the path and the fix."""
    then = "; then run the same command again: finished work is kept" if resume else ""
    if getattr(exc, "permanent", False):  # object storage (storage.UriStorageError): says both
        return StorageError(f"{exc.strerror or exc}{then}")
    path = exc.filename or "the run directory"
    fix = _FIXES.get(exc.errno or 0, f"{os.strerror(exc.errno or 0)}")
    return StorageError(f"cannot write {path}: {fix}{then}")


def is_storage_error(exc: BaseException) -> TypeGuard[OSError]:
    return isinstance(exc, OSError) and (
        exc.errno in STORAGE_ERRNOS or bool(getattr(exc, "permanent", False))
    )
