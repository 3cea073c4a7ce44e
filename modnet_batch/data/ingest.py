"""Ingest a source folder (PPM-100 layout or flat images) into a dataset directory.

Stores each file's original bytes; decodes once only to validate and measure it, and with
`prepare` also stores that protocol's network input and scoring-size matte (data/prepared.py).

The decode checks run through a `Loader`: a local thread pool (`thread_loader`, the default), or
Ray tasks over batches of files (execution/ingest_ray.py, built on `load_batch`). Whatever the
loader, results are written in source order, so the dataset is the same.

The dataset is built in a work folder beside OUT (`.OUT.ingest/`) and renamed onto OUT at the
end. Each finished shard is recorded there (`state.json`), so an interrupted ingest (Ctrl-C, a
killed driver, a lost cluster) continues where it stopped when run again with the same source
and options; anything else is refused. File access goes through the few functions under "storage"
below.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import time
from collections import deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from typing import Protocol as Interface

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from modnet_batch import __version__
from modnet_batch.data.dataset import (
    MAX_NAME,
    META_FILE,
    SCHEMA_VERSION,
    SHARD_DIR,
    is_safe_name,
    shard_name,
    shard_schema,
)
from modnet_batch.data.decode import (
    IMAGE_EXTENSIONS,
    DecodeError,
    decode_image,
    decode_matte,
    sniff_format,
)
from modnet_batch.data.prepared import prepare_pair, prepared_description
from modnet_batch.digest import sha256_file
from modnet_batch.errors import ModnetBatchError
from modnet_batch.protocol import Protocol, get_protocol
from modnet_batch.storage import AnyPath, UriPath, location

# Ids become file names (alpha/<image_id>.npz) on every OS, so only portable characters.
UNSAFE_REASON = (
    "unsafe image id: an id (the file name without extension) must match [A-Za-z0-9._-]+, "
    f"not start with '.' and have at most {MAX_NAME} characters, because outputs are named "
    "<image_id>.npz; rename the file"
)
STATE_FILE = "state.json"  # in the work folder: what is finished, and of which ingest
LOCK_FILE = "lock"  # in the work folder: the driver writing it (pid, host)
WORK_DATASET = "dataset"  # in the work folder: becomes OUT


def _with(item: Item) -> str:
    """Said of a bad matte: its image is not ingested without it (it would be scored blind)."""
    return f"; {item.image} is skipped with it"


def shown_name(name: str) -> str:
    """A file name as it can be printed and stored in JSON: bytes that are not UTF-8 (kept by
    Python as surrogates) are written as \\xNN escapes."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class IngestReport:
    """What `ingest` wrote: counts, skipped inputs as (name, reason), wall time."""

    images: int
    with_matte: int
    shards: int
    skipped: list[tuple[str, str]]
    seconds: float
    ignored: list[str] = field(default_factory=list)  # files without an image extension
    prepared: str | None = None  # the protocol whose inputs were stored (ingest --prepare)
    prepare_cpu_seconds: float = 0.0  # CPU time spent making them, summed over threads
    prepared_bytes: int = 0  # what they add to the shards
    resumed_shards: int = 0  # shards kept from an interrupted ingest of the same source
    decoded: int = 0  # files decoded by this call (the others were in kept shards)


@dataclass(frozen=True)
class Item:
    """One image to ingest: its id and its files' paths relative to the source root."""

    image_id: str
    image: str
    matte: str | None


@dataclass(frozen=True)
class Row:
    """A checked image, as it goes into a shard."""

    image_id: str
    image: bytes
    matte: bytes | None
    width: int
    height: int
    image_file: str
    matte_file: str | None
    prepared_image: bytes | None = None
    prepared_matte: bytes | None = None
    prepare_cpu: float = 0.0


@dataclass(frozen=True)
class Skip:
    """A file left out, and why."""

    name: str
    reason: str


Loaded = Row | Skip


class Loader(Interface):
    """Reads and checks `items` of source `src` (each with `load_item`), yielding one result
    per item in the items' order; `prepare` names the protocol whose inputs to store."""

    def __call__(
        self, src: Path, items: Sequence[Item], prepare: str | None
    ) -> Generator[Loaded, None, None]: ...


class _Refused(ModnetBatchError):
    """The ingest cannot succeed with these inputs (strict, nothing readable): nothing is kept."""


# --- storage: every access to the source and to the output goes through these few functions
@dataclass(frozen=True)
class SourceFile:
    name: str
    size: int
    mtime_ns: int


def list_folder(folder: Path) -> list[SourceFile]:
    """The regular files directly in `folder` (sizes and times for the source's identity)."""
    files = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_file():
                st = entry.stat()
                files.append(SourceFile(entry.name, st.st_size, st.st_mtime_ns))
    return sorted(files, key=lambda f: f.name)


def is_folder(path: Path) -> bool:
    return path.is_dir()


def read_source(src: Path, rel: str) -> bytes:
    """The bytes of source file `rel` (relative to `src`); raises OSError."""
    return (src / rel).read_bytes()


def _write_json(path: Path, value: Any) -> None:
    """Write JSON so that the file is complete or absent (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _publish(dataset: Path, out: Path) -> None:
    """Move the finished dataset folder onto OUT in one step (OUT is absent or empty)."""
    _check_out(out)  # someone may have written there meanwhile
    if out.exists():
        out.rmdir()  # empty: rename onto a directory is not portable
    os.rename(dataset, out)


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "a file" if not out.is_dir() else "not empty"
        raise ModnetBatchError(
            f"output {out} exists and is {what}; ingest never overwrites: choose a new "
            "directory or remove it"
        )


def work_dir(out: Path) -> Path:
    """Where an ingest into `out` builds its dataset and records its progress."""
    return out.parent / f".{out.name}.ingest"


# --- planning
def _scan(
    folder: Path, prefix: str
) -> tuple[dict[str, str], list[str], list[Skip], set[str], list[SourceFile]]:
    """Image files of one folder: by id -> relative path; the other files' relative paths; the
    files skipped for their name; the ids (lower case) that are ambiguous; every file listed.

    An unsafe id, or one that several files share (ignoring case, since outputs named by id
    would collide on case-insensitive file systems), skips those files, named with the reason.
    """
    by_key: dict[str, list[str]] = {}
    ignored: list[str] = []
    skips: list[Skip] = []
    listed = list_folder(folder)
    for entry in listed:
        rel = prefix + entry.name
        path = Path(entry.name)
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            ignored.append(shown_name(rel))
            continue
        if not is_safe_name(path.stem):
            skips.append(Skip(shown_name(rel), UNSAFE_REASON))
            continue
        by_key.setdefault(path.stem.lower(), []).append(rel)
    ambiguous = {key for key, rels in by_key.items() if len(rels) > 1}
    for key in sorted(ambiguous):
        group = " = ".join(by_key[key])
        reason = f"duplicate image id ({group}): ids must be unique ignoring case; rename one"
        skips.extend(Skip(rel, reason) for rel in by_key[key])
    files = {Path(rels[0]).stem: rels[0] for k, rels in by_key.items() if k not in ambiguous}
    return (
        files,
        ignored,
        skips,
        ambiguous,
        [dataclasses.replace(f, name=prefix + f.name) for f in listed],
    )


@dataclass(frozen=True)
class _Plan:
    layout: str
    items: list[Item]  # in id order
    skipped: list[Skip]  # for their name, or orphan mattes
    ignored: list[str]
    listing: str  # SHA-256 of every listed file's name, size and modification time


def _plan(src: Path) -> _Plan:
    """What a source folder holds, from its listing alone."""
    if is_folder(src / "image"):
        images, ignored, skips, _, listed = _scan(src / "image", "image/")
        mattes: dict[str, str] = {}
        if is_folder(src / "matte"):
            mattes, ignored_mattes, matte_skips, ambiguous, more = _scan(src / "matte", "matte/")
            ignored += ignored_mattes
            skips += matte_skips
            listed += more
            for i in [i for i in images if i.lower() in ambiguous]:  # no guessing its truth
                skips.append(Skip(images.pop(i), "its matte is ambiguous (see matte/)"))
        layout, where = "ppm", f"{src / 'image'}"
    else:
        images, ignored, skips, _, listed = _scan(src, "")
        mattes, layout, where = {}, "flat", f"{src} (and it has no image/ subfolder)"
    if not images and skips:
        raise ModnetBatchError(
            f"no image in {where} can be ingested: {skips[0].name}: {skips[0].reason}"
            f"{f' (and {len(skips) - 1} more)' if len(skips) > 1 else ''}"
        )
    if not images:
        raise ModnetBatchError(
            f"no images in {where}; expected files with extensions "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))} (any case), in SRC/image/ with optional "
            "SRC/matte/ of the same base names, or directly in SRC"
        )
    items = [Item(i, images[i], mattes.get(i)) for i in sorted(images)]
    orphans = [
        Skip(mattes[i], f"no image with id '{i}' in image/")
        for i in sorted(mattes)
        if i not in images
    ]
    digest = hashlib.sha256()
    for f in listed:
        digest.update(f"{os.fsencode(f.name)!r}\0{f.size}\0{f.mtime_ns}\n".encode())
    return _Plan(layout, items, skips + orphans, ignored, digest.hexdigest())


# --- checking files
def load_item(src: Path, item: Item, prepare: Protocol | None = None) -> Loaded:
    """Read and decode one pair; any problem becomes a Skip naming the file at fault."""
    try:
        image = read_source(src, item.image)
    except OSError as exc:
        return Skip(item.image, f"cannot read the file: {exc.strerror or exc}")
    try:
        rgb = decode_image(image, name=item.image)
    except DecodeError as exc:
        return Skip(item.image, exc.reason)
    height, width = rgb.shape[:2]
    matte: bytes | None = None
    gray = None
    if item.matte is not None:
        try:
            matte = read_source(src, item.matte)
        except OSError as exc:
            return Skip(item.matte, f"cannot read the file: {exc.strerror or exc}{_with(item)}")
        try:
            gray = decode_matte(matte, name=item.matte)
        except DecodeError as exc:
            return Skip(item.matte, exc.reason + _with(item))
        mh, mw = gray.shape
        if (mh, mw) != (height, width):
            return Skip(
                item.matte,
                f"matte is {mw}x{mh} (WxH) but its image {item.image} is {width}x{height}; "
                f"a matte must have its image's size{_with(item)}",
            )
    row = Row(item.image_id, image, matte, width, height, item.image, item.matte)
    if prepare is None:
        return row
    t0 = time.thread_time()
    small, small_matte = prepare_pair(prepare, rgb, gray, name=item.image)
    return dataclasses.replace(
        row,
        prepared_image=small.tobytes(),
        prepared_matte=None if small_matte is None else small_matte.tobytes(),
        prepare_cpu=time.thread_time() - t0,
    )


def load_batch(src: Path, items: Sequence[Item], prepare: str | None = None) -> list[Loaded]:
    """`load_item` over a batch, one after the other: the body of one Ray task."""
    protocol = None if prepare is None else get_protocol(prepare)
    return [load_item(src, item, protocol) for item in items]


def thread_loader(workers: int) -> Loader:
    """The local loader: `workers` threads (OpenCV decodes without the GIL), at most
    2*workers files in flight."""
    if workers < 1:
        raise ModnetBatchError(f"workers={workers}: expected a positive integer")

    def load(
        src: Path, items: Sequence[Item], prepare: str | None
    ) -> Generator[Loaded, None, None]:
        return _loaded(src, items, workers, None if prepare is None else get_protocol(prepare))

    return load


def _loaded(
    src: Path, items: Sequence[Item], workers: int, prepare: Protocol | None = None
) -> Generator[Loaded, None, None]:
    """Load items on `workers` threads, yielded in input order, at most 2*workers in flight."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest") as pool:
        pending: deque[Future[Loaded]] = deque()
        todo = iter(items)
        try:
            for item in todo:
                pending.append(pool.submit(load_item, src, item, prepare))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                result = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(load_item, src, nxt, prepare))
                yield result
        finally:
            for fut in pending:
                fut.cancel()


# --- writing shards
class _ShardWriter:
    """Writes rows into shards of `shard_size` rows, flushing a row group every `group` rows.

    `on_close(entry)` is called once each shard file is complete (its entry as in dataset.json).
    """

    def __init__(
        self,
        root: Path,
        shard_size: int,
        group: int,
        prepared: dict[str, Any] | None = None,
        on_close: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.root, self.shard_size, self.group = root, shard_size, group
        self.schema = shard_schema(prepared)
        self.prepared_bytes = 0
        self.shards: list[dict[str, Any]] = []
        self.on_close = on_close
        self._buffer: list[Row] = []
        self._writer: pq.ParquetWriter | None = None
        self._rows = 0
        self._mattes = 0
        self._first = ""
        self._last = ""

    def add(self, row: Row) -> None:
        if self._writer is None:
            rel = f"{SHARD_DIR}/{shard_name(len(self.shards))}.parquet"
            self._writer = pq.ParquetWriter(
                self.root / rel,
                self.schema,
                # Encoded images do not compress; zstd only pays on the small columns. Prepared
                # images stay raw too: they are read back at job time, where every ms counts.
                compression={c: "zstd" for c in self.schema.names}
                | {"image": "none", "matte": "none", "prepared_image": "none"},
                use_dictionary=["image_format", "matte_format"],
                write_statistics=["image_id", "width", "height"],
            )
            self._first = row.image_id
        self._buffer.append(row)
        self._rows += 1
        self._mattes += row.matte is not None
        self._last = row.image_id
        if len(self._buffer) == self.group:
            self._flush()
        if self._rows == self.shard_size:
            self.close()

    def _flush(self) -> None:
        if not self._buffer or self._writer is None:
            return
        rows = self._buffer
        columns: dict[str, list[Any]] = {
            "image_id": [r.image_id for r in rows],
            "image": [r.image for r in rows],
            "matte": [r.matte for r in rows],
            "width": [r.width for r in rows],
            "height": [r.height for r in rows],
            "image_format": [sniff_format(r.image) for r in rows],
            "matte_format": [None if r.matte is None else sniff_format(r.matte) for r in rows],
            "image_file": [r.image_file for r in rows],
            "matte_file": [r.matte_file for r in rows],
        }
        if "prepared_image" in self.schema.names:
            columns["prepared_image"] = [r.prepared_image for r in rows]
            columns["prepared_matte"] = [r.prepared_matte for r in rows]
            self.prepared_bytes += sum(
                len(r.prepared_image or b"") + len(r.prepared_matte or b"") for r in rows
            )
        table = pa.Table.from_pydict(columns, schema=self.schema)
        self._writer.write_table(table, row_group_size=self.group)
        self._buffer = []

    def close(self) -> None:
        """Finish the open shard (if any) and record it."""
        if self._writer is None:
            return
        self._flush()
        self._writer.close()
        self._writer = None
        name = shard_name(len(self.shards))
        path = self.root / SHARD_DIR / f"{name}.parquet"
        entry = {
            "name": name,
            "path": f"{SHARD_DIR}/{name}.parquet",
            "rows": self._rows,
            "with_matte": self._mattes,
            "bytes": path.stat().st_size,
            "sha256": sha256_file(path),
            "first_image_id": self._first,
            "last_image_id": self._last,
        }
        self.shards.append(entry)
        self._rows = self._mattes = 0
        if self.on_close is not None:
            self.on_close(entry)


# --- resume
def _identity(
    src: Path, plan: _Plan, shard_size: int, row_group_rows: int, prepare: str | None, strict: bool
) -> dict[str, Any]:
    """What must be the same for an interrupted ingest to be continued."""
    return {
        "source": str(src),
        "listing_sha256": plan.listing,
        "files": len(plan.items),
        "shard_size": shard_size,
        "row_group_rows": row_group_rows,
        "prepare": prepare,
        "strict": strict,
        "schema_version": SCHEMA_VERSION,
        "tool_version": __version__,
    }


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


@dataclass
class _Progress:
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
    def from_json(cls, value: dict[str, Any]) -> _Progress:
        return cls(
            shards=list(value["shards"]),
            consumed=int(value["consumed"]),
            skipped=[Skip(s["name"], s["reason"]) for s in value["skipped"]],
            images=int(value["images"]),
            with_matte=int(value["with_matte"]),
            prepare_cpu=float(value["prepare_cpu"]),
            prepared_bytes=int(value["prepared_bytes"]),
        )


def _process_key(pid: int) -> str | None:
    try:
        return f"{socket.gethostname()}:{pid}:{psutil.Process(pid).create_time():.2f}"
    except psutil.Error:
        return None


def _lock(work: Path, out: Path) -> None:
    """Mark the work folder as this process's; refuse when a live process holds it."""
    path = work / LOCK_FILE
    try:
        held = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        held = ""
    if held:
        pid = held.split(":")[1] if held.count(":") >= 2 else ""
        if pid.isdigit() and _process_key(int(pid)) == held:
            raise ModnetBatchError(
                f"another ingest (pid {pid}) is writing {out} now; wait for it to finish or "
                "stop it, then run this command again"
            )
        path.unlink()  # its process is gone: a killed ingest, to be continued
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise ModnetBatchError(
            f"another ingest is starting on {out} now; run this command again once it ends"
        ) from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(_process_key(os.getpid()) or "")


def _open_work(out: Path, identity: dict[str, Any], restart: bool) -> tuple[Path, _Progress]:
    """The work folder of this ingest and what it already finished: a new one, or the one an
    interrupted ingest of the same source and options left (checked shard by shard)."""
    work = work_dir(out)
    state = work / STATE_FILE
    if is_folder(work) and not (work / STATE_FILE).exists() and not restart:
        # created, but stopped before it recorded anything: nothing to keep
        _lock(work, out)
        _remove(work)
    elif is_folder(work) and not restart:
        _lock(work, out)
        saved = _read_json(state)
        old = saved.get("identity", {})
        differ = [name for key, name in _IDENTITY_NAMES.items() if old.get(key) != identity[key]]
        if differ:
            (work / LOCK_FILE).unlink(missing_ok=True)
            was = old.get("source")
            of = f" (it ingested {was})" if was != identity["source"] else ""
            raise ModnetBatchError(
                f"{work} holds an unfinished ingest into {out} with another "
                f"{', '.join(differ)}{of}; run the command that started it to finish it, or "
                "add --restart to discard it and start over"
            )
        progress = _Progress.from_json(saved["progress"])
        for entry in progress.shards:
            path = work / WORK_DATASET / entry["path"]
            if _file_size(path) != entry["bytes"]:
                (work / LOCK_FILE).unlink(missing_ok=True)
                raise ModnetBatchError(
                    f"{path} is missing or not the size recorded when it was finished "
                    f"({entry['bytes']} bytes); add --restart to discard the unfinished ingest "
                    "and start over"
                )
        return work, progress
    elif is_folder(work):  # --restart
        _lock(work, out)
        _remove(work)
    (work / WORK_DATASET / SHARD_DIR).mkdir(parents=True)
    _lock(work, out)
    _write_json(state, {"identity": identity, "progress": _Progress().to_json()})
    return work, _Progress()


# --- the command
def _upload(local: Path, out: UriPath) -> None:
    """A finished local dataset folder as `out` in object storage: the shards first, its
    dataset.json last (a folder without it is no dataset)."""
    files = sorted(p for p in local.rglob("*") if p.is_file() and p.name != META_FILE)
    for path in files:
        (out / path.relative_to(local).as_posix()).upload(path)
    (out / META_FILE).upload(local / META_FILE)


def ingest_to(src: Path, out: str | AnyPath, **options: Any) -> IngestReport:
    """`ingest`, with `out` a local path or a URI (modnet_batch.storage): for a URI the dataset
    is built in a local temp folder (resumable there) and uploaded, dataset.json last."""
    target = location(out)
    if isinstance(target, Path):
        return ingest(src, target, **options)
    target.check_store()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ModnetBatchError(
            f"output {target} exists and is not empty; ingest never overwrites: choose a new "
            "location or remove it"
        )
    import tempfile

    staging = (
        Path(tempfile.gettempdir())
        / "modnet-batch-ingest"
        / (hashlib.sha256(target.uri.encode()).hexdigest()[:16])
    )
    staging.parent.mkdir(parents=True, exist_ok=True)
    report = ingest(src, staging / target.name, **options)
    _upload(staging / target.name, target)
    shutil.rmtree(staging, ignore_errors=True)
    return report


def ingest(
    src: Path,
    out: Path,
    *,
    shard_size: int = 64,
    strict: bool = False,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
    row_group_rows: int = 8,
    prepare: str | None = None,
    loader: Loader | None = None,
    restart: bool = False,
    on_phase: Callable[[str], None] | None = None,
    on_shard: Callable[[int], None] | None = None,
) -> IngestReport:
    """Turn source folder `src` into dataset directory `out` (see architecture.md).

    Bad inputs (undecodable image or matte, matte of another size, matte without image) are
    skipped and listed, or with `strict` raise ModnetBatchError. `out` appears atomically: it is
    built in a work folder beside itself (`work_dir(out)`) and renamed, so an interrupted ingest
    leaves no partial dataset. Its finished shards stay there: the same call again (same source,
    same options) continues after them; other options are refused (`restart` discards them).
    `progress(done, total)` is called after each file this call checks (`total`: the files left
    to check). `prepare` names a fixed-size protocol (seed-area, seed-linear) whose network
    inputs are stored too, so jobs with that protocol read them instead of decoding (same
    results, see data/prepared.py). `loader` checks the files (default: `workers` threads);
    `on_phase(text)` says what it does; `on_shard(n)` is called once n shards are finished.
    """
    started = time.perf_counter()
    for key, value in (
        ("shard_size", shard_size),
        ("workers", workers),
        ("row_group_rows", row_group_rows),
    ):
        if value < 1:
            raise ModnetBatchError(f"{key}={value}: expected a positive integer")
    src, out = Path(src).expanduser().resolve(), Path(out).expanduser().resolve()
    if not is_folder(src):
        what = "does not exist" if not src.exists() else "is not a directory"
        raise ModnetBatchError(
            f"source {src} {what}; expected a folder with image/ (and optional matte/) or "
            "a folder of images"
        )
    _check_out(out)
    prepared = None if prepare is None else prepared_description(prepare)
    plan = _plan(src)
    if strict and plan.skipped:
        skip = plan.skipped[0]
        raise ModnetBatchError(
            f"cannot ingest {src / skip.name}: {skip.reason}; fix or remove the "
            "file, or ingest without strict to skip it"
        )
    loader = loader or thread_loader(workers)
    say = on_phase or (lambda text: None)

    out.parent.mkdir(parents=True, exist_ok=True)
    identity = _identity(src, plan, shard_size, row_group_rows, prepare, strict)
    work, done = _open_work(out, identity, restart)
    if done.shards:
        say(
            f"resuming: {len(done.shards)} shard(s) of {done.images} images kept from an "
            f"interrupted ingest ({work}); {len(plan.items) - done.consumed} files left"
        )
    dataset = work / WORK_DATASET
    try:
        state = dataclasses.replace(done, shards=list(done.shards), skipped=list(done.skipped))
        consumed = done.consumed  # items whose results went to the writer
        skipped_now: list[Skip] = []  # bad files since the last finished shard

        def shard_closed(entry: dict[str, Any]) -> None:
            state.shards.append(entry)
            state.consumed = consumed
            state.skipped += skipped_now
            skipped_now.clear()
            state.images += entry["rows"]
            state.with_matte += entry["with_matte"]
            state.prepared_bytes = writer.prepared_bytes
            state.prepare_cpu = prepare_cpu  # of the rows so far, which are all in shards now
            _write_json(work / STATE_FILE, {"identity": identity, "progress": state.to_json()})
            if on_shard is not None:
                on_shard(len(state.shards))

        writer = _ShardWriter(dataset, shard_size, row_group_rows, prepared, shard_closed)
        writer.shards = list(done.shards)
        writer.prepared_bytes = done.prepared_bytes
        prepare_cpu = done.prepare_cpu
        todo = plan.items[done.consumed :]
        with closing(loader(src, todo, prepare)) as results:
            for n, result in enumerate(results, start=1):
                consumed += 1
                if isinstance(result, Skip):
                    if strict:
                        raise _Refused(
                            f"cannot ingest {src / result.name}: {result.reason}; fix or remove "
                            "the file, or ingest without strict to skip it"
                        )
                    skipped_now.append(result)
                else:
                    prepare_cpu += result.prepare_cpu
                    writer.add(result)
                if progress is not None:
                    progress(n, len(todo))
        if consumed != len(plan.items):
            raise ModnetBatchError(
                f"the loader returned {consumed - done.consumed} results for {len(todo)} files; "
                "run the command again to continue"
            )
        writer.close()
        state.skipped += skipped_now
        images = state.images
        if images == 0:
            last = (plan.skipped + state.skipped)[-1]
            raise _Refused(
                f"no readable images in {src}: all {len(plan.items)} skipped, e.g. "
                f"{last.name}: {last.reason}"
            )
        skipped = sorted(plan.skipped + state.skipped, key=lambda s: s.name)
        meta = {
            "schema_version": SCHEMA_VERSION,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "tool_version": __version__,
            "source": str(src),
            "layout": plan.layout,
            "shard_size": shard_size,
            "row_group_rows": row_group_rows,
            "counts": {
                "images": images,
                "with_matte": state.with_matte,
                "skipped": len(skipped),
                "ignored": len(plan.ignored),
                "shards": len(writer.shards),
            },
            "shards": writer.shards,
            "skipped": [{"name": s.name, "reason": s.reason} for s in skipped],
            "ignored": plan.ignored,
        }
        if prepared is not None:
            meta["prepared"] = {
                **prepared,
                "cpu_seconds": round(prepare_cpu, 3),
                "bytes": writer.prepared_bytes,
            }
        _write_json(dataset / META_FILE, meta)  # complete dataset.json last
        _publish(dataset, out)
    except _Refused:
        _remove(work)
        raise
    finally:
        (work / LOCK_FILE).unlink(missing_ok=True)
    _remove(work)
    return IngestReport(
        images=images,
        with_matte=state.with_matte,
        shards=len(writer.shards),
        skipped=[(s.name, s.reason) for s in skipped],
        seconds=time.perf_counter() - started,
        ignored=plan.ignored,
        prepared=prepare,
        prepare_cpu_seconds=prepare_cpu,
        prepared_bytes=writer.prepared_bytes,
        resumed_shards=len(done.shards),
        decoded=consumed - done.consumed,
    )
