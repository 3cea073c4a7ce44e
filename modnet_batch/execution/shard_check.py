"""A work unit's shard is the file ingest wrote: hashed against dataset.json before it is read
(once per file and worker), and the errors that say whether a retry can help."""

from __future__ import annotations

import threading

from modnet_batch.digest import sha256_file
from modnet_batch.errors import ModnetBatchError
from modnet_batch.results import WorkUnit
from modnet_batch.storage import location, shown


class ShardUnreadable(ModnetBatchError):
    """A shard that cannot be read as ingested (changed or damaged): retrying cannot help."""


class ShardReadError(ModnetBatchError):
    """Reading a shard that was intact failed (an I/O error): a retry may succeed."""


def check_shard(unit: WorkUnit) -> None:
    """The shard is the file dataset.json recorded: hashing it costs ~1 ms per MB, read once
    more from the page cache, against seconds of work per shard."""
    if unit.sha256 is None:
        return
    try:
        actual = sha256_file(location(unit.path))
    except FileNotFoundError:
        raise ShardUnreadable(
            f"shard {unit.name} ({shown(unit.path)}) does not exist; re-create the dataset"
        ) from None
    except OSError as exc:  # the storage failed, not the shard: a retry may pass
        raise ShardReadError(
            f"reading shard {unit.name} ({shown(unit.path)}) failed: {shown(exc)}"
        ) from None
    if actual != unit.sha256:
        raise ShardUnreadable(
            f"shard {unit.name} ({shown(unit.path)}) changed after ingest (SHA-256 "
            f"{actual[:12]}..., "
            f"dataset.json records {unit.sha256[:12]}...); re-create the dataset"
        )


class CheckedShards:
    """The shard files this worker has hashed: each work unit is a part of a file, and a file
    is hashed once per worker (again only when its size or mtime changed since)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], tuple[int, int]] = {}

    def check(self, unit: WorkUnit) -> None:
        if unit.sha256 is None:
            return
        key = (unit.path, unit.sha256)
        with self._lock:  # units of one file queued together wait for one hash
            try:
                st = location(unit.path).stat()
                stamp = (st.st_size, int(st.st_mtime * 1e9))
            except OSError:
                stamp = None
            if stamp is not None and self._seen.get(key) == stamp:
                return
            check_shard(unit)
            if stamp is not None:
                self._seen[key] = stamp
