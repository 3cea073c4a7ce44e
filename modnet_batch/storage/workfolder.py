"""Resume by identity: a folder that one job at a time builds, and that the same job continues.

Its identity record (a JSON object) says which job builds it: a job with the same identity
resumes it, a job with another is refused in one line naming the folder and the fix (the caller
words it: which options differ, and what to do). Its lock (storage/lock.py) says which process
writes it now. A run directory (results/rundir.py) and an ingest's work folder (data/ingest.py)
are both such folders.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from modnet_batch.errors import ModnetBatchError
from modnet_batch.storage.atomic import atomic_write_json
from modnet_batch.storage.lock import FolderLock
from modnet_batch.storage.paths import AnyPath

# the caller's refusal: (the identity keys that differ, the recorded identity) -> one line
Refusal = Callable[[list[str], dict[str, Any]], str]


def differences(recorded: Mapping[str, Any], identity: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ, `identity`'s in its order, then those only recorded."""
    keys = [*identity, *(k for k in recorded if k not in identity)]
    return [k for k in keys if recorded.get(k) != identity.get(k)]


class WorkFolder:
    """A folder with an identity record `record` and the lock `lock` (both files inside it)."""

    def __init__(self, record: AnyPath, lock: FolderLock) -> None:
        self.record, self.lock = record, lock

    def recorded(self) -> dict[str, Any] | None:
        """The identity recorded, None before one is (a new folder, or one that stopped before
        it recorded anything)."""
        if not self.record.exists():
            return None
        value = json.loads(self.record.read_text())
        return value if isinstance(value, dict) else {}

    def claim(self, identity: Mapping[str, Any], refuse: Refusal) -> bool:
        """Take the lock, then: True when the folder records `identity` (resume it), False when
        it records none (the caller builds it, then `record_identity`). Another identity
        releases the lock and raises ModnetBatchError(refuse(differing keys, recorded))."""
        self.lock.acquire()
        try:
            recorded = self.recorded()
            if recorded is None:
                return False
            differ = differences(recorded, identity)
            if differ:
                raise ModnetBatchError(refuse(differ, recorded))
        except BaseException:
            self.lock.release()
            raise
        return True

    def record_identity(self, identity: Mapping[str, Any]) -> None:
        """Record `identity`: from now on the folder resumes for that job only."""
        atomic_write_json(self.record, dict(identity))

    def release(self) -> None:
        self.lock.release()
