"""An ingest's work folder: the dataset is built in `.OUT.ingest/` beside OUT and renamed onto
OUT at the end, so an interrupted ingest leaves no partial dataset where the dataset goes.

It is a storage.WorkFolder: `identity.json` says which ingest builds it (the source's listing
and the options), `state.json` what it finished (each shard recorded once complete), `lock`
which process writes it. The same ingest run again continues after the finished shards; another
is refused, naming what differs; `restart` discards them.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modnet_batch import __version__
from modnet_batch.data.dataset import SCHEMA_VERSION, SHARD_DIR
from modnet_batch.data.sources import Skip, SourcePairs
from modnet_batch.errors import ModnetBatchError
from modnet_batch.storage import LOCK_FILE, FolderLock, WorkFolder, atomic_write_json

IDENTITY_FILE = "identity.json"  # which ingest builds the folder
STATE_FILE = "state.json"  # what it finished
WORK_DATASET = "dataset"  # becomes OUT

# how each identity field is named in a refusal, and the option that sets it
_IDENTITY_NAMES = {
    "source": "source folder",
    "listing_sha256": "source files (added, removed or changed since)",
    "files": "number of images",
    "shard_size": "--shard-size",
    "row_group_rows": "row group size",
    "prepare": "--prepare",
    "strict": "--strict",
    "schema_version": "dataset schema version",
    "tool_version": "modnet-batch version",
}


def work_dir(out: Path) -> Path:
    """Where an ingest into `out` builds its dataset and records its progress."""
    return out.parent / f".{out.name}.ingest"


def ingest_identity(
    src: Path,
    pairs: SourcePairs,
    shard_size: int,
    row_group_rows: int,
    prepare: str | None,
    strict: bool,
) -> dict[str, Any]:
    """What must be the same for an interrupted ingest to be continued."""
    return {
        "source": str(src),
        "listing_sha256": pairs.listing,
        "files": len(pairs.items),
        "shard_size": shard_size,
        "row_group_rows": row_group_rows,
        "prepare": prepare,
        "strict": strict,
        "schema_version": SCHEMA_VERSION,
        "tool_version": __version__,
    }


def check_out(out: Path) -> None:
    """Refuse an OUT that exists and is a file or not empty: ingest never overwrites."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "a file" if not out.is_dir() else "not empty"
        raise ModnetBatchError(
            f"output {out} exists and is {what}; ingest never overwrites: choose a new "
            "directory or remove it"
        )


@dataclass
class Progress:
    """How far an ingest got: its finished shards and what the files before them gave."""

    shards: list[dict[str, Any]] = field(default_factory=list)
    consumed: int = 0  # items (in plan order) whose results are in the finished shards
    skipped: list[Skip] = field(default_factory=list)  # bad files among those items
    images: int = 0
    with_matte: int = 0
    prepare_cpu: float = 0.0
    prepared_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "shards": self.shards,
            "consumed": self.consumed,
            "skipped": [{"name": s.name, "reason": s.reason} for s in self.skipped],
            "images": self.images,
            "with_matte": self.with_matte,
            "prepare_cpu": self.prepare_cpu,
            "prepared_bytes": self.prepared_bytes,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Progress:
        return cls(
            shards=list(value["shards"]),
            consumed=int(value["consumed"]),
            skipped=[Skip(s["name"], s["reason"]) for s in value["skipped"]],
            images=int(value["images"]),
            with_matte=int(value["with_matte"]),
            prepare_cpu=float(value["prepare_cpu"]),
            prepared_bytes=int(value["prepared_bytes"]),
        )


class IngestWork:
    """The work folder of an ingest into `out`, held by this process from `open` to `close`."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.root = work_dir(out)
        self.dataset = self.root / WORK_DATASET
        lock = FolderLock(self.root / LOCK_FILE, job="ingest", target=out)
        self.folder = WorkFolder(self.root / IDENTITY_FILE, lock)

    def open(self, identity: dict[str, Any], restart: bool) -> Progress:
        """What an interrupted ingest with this identity finished (checked shard by shard), or a
        new, empty work folder: one an ingest left before it recorded anything, or with
        `restart`, is emptied first."""
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            if restart:
                self.folder.lock.acquire()
            elif self.folder.claim(identity, self._refusal):
                return self._kept()
            self._clear()
            (self.dataset / SHARD_DIR).mkdir(parents=True)
            self.save(Progress())
            self.folder.record_identity(identity)
        except BaseException:
            self.close()
            raise
        return Progress()

    def _refusal(self, differ: list[str], recorded: dict[str, Any]) -> str:
        names = [_IDENTITY_NAMES.get(key, key) for key in differ]
        was = recorded.get("source")
        of = f" (it ingested {was})" if "source" in differ else ""
        return (
            f"{self.root} holds an unfinished ingest into {self.out} with another "
            f"{', '.join(names)}{of}; run the command that started it to finish it, or add "
            "--restart to discard it and start over"
        )

    def _kept(self) -> Progress:
        progress = Progress.from_json(_read_json(self.root / STATE_FILE)["progress"])
        for entry in progress.shards:
            path = self.dataset / entry["path"]
            if _file_size(path) != entry["bytes"]:
                raise ModnetBatchError(
                    f"{path} is missing or not the size recorded when it was finished "
                    f"({entry['bytes']} bytes); add --restart to discard the unfinished ingest "
                    "and start over"
                )
        return progress

    def _clear(self) -> None:
        """Everything in the folder but its lock."""
        for entry in self.root.iterdir():
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def save(self, progress: Progress) -> None:
        """Record what is finished (after each shard)."""
        atomic_write_json(self.root / STATE_FILE, {"progress": progress.to_json()}, sort_keys=False)

    def publish(self) -> None:
        """Move the finished dataset onto OUT in one step (OUT is absent or empty)."""
        check_out(self.out)  # someone may have written there meanwhile
        if self.out.exists():
            self.out.rmdir()  # empty: rename onto a directory is not portable
        os.rename(self.dataset, self.out)

    def close(self) -> None:
        """Release the folder (what it holds stays, for the same command to continue)."""
        self.folder.release()

    def discard(self) -> None:
        """Remove the folder and what it holds."""
        self.close()
        shutil.rmtree(self.root, ignore_errors=True)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None
