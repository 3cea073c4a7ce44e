"""Ingest a source folder (PPM-100 layout or flat images) into a dataset directory.

Stores each file's original bytes; decodes once only to validate and measure it, and with
`prepare` also stores that protocol's network input and scoring-size matte (data/prepared.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
from modnet_batch.storage import AnyPath, UriPath, resolved

# Ids become file names (alpha/<image_id>.npz) on every OS, so only portable characters.
UNSAFE_REASON = (
    "unsafe image id: an id (the file name without extension) must match [A-Za-z0-9._-]+, "
    f"not start with '.' and have at most {MAX_NAME} characters, because outputs are named "
    "<image_id>.npz; rename the file"
)


def _with(item: _Item) -> str:
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


@dataclass(frozen=True)
class _Item:
    image_id: str
    image: str  # path relative to the source root
    matte: str | None


@dataclass(frozen=True)
class _Row:
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
class _Skip:
    name: str
    reason: str


def _scan(folder: Path, prefix: str) -> tuple[dict[str, str], list[str], list[_Skip], set[str]]:
    """Image files of one folder: by id -> relative path; the other files' relative paths; the
    files skipped for their name; and the ids (lower case) that are ambiguous.

    An unsafe id, or one that several files share (ignoring case, since outputs named by id
    would collide on case-insensitive file systems), skips those files, named with the reason.
    """
    by_key: dict[str, list[str]] = {}
    ignored: list[str] = []
    skips: list[_Skip] = []
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if not path.is_file():
            continue
        rel = prefix + path.name
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            ignored.append(shown_name(rel))
            continue
        if not is_safe_name(path.stem):
            skips.append(_Skip(shown_name(rel), UNSAFE_REASON))
            continue
        by_key.setdefault(path.stem.lower(), []).append(rel)
    ambiguous = {key for key, rels in by_key.items() if len(rels) > 1}
    for key in sorted(ambiguous):
        group = " = ".join(by_key[key])
        reason = f"duplicate image id ({group}): ids must be unique ignoring case; rename one"
        skips.extend(_Skip(rel, reason) for rel in by_key[key])
    files = {Path(rels[0]).stem: rels[0] for k, rels in by_key.items() if k not in ambiguous}
    return files, ignored, skips, ambiguous


def _plan(src: Path) -> tuple[str, list[_Item], list[_Skip], list[str]]:
    """(layout, items in id order, files skipped for their name or as orphan mattes, ignored
    files) of a source folder."""
    if (src / "image").is_dir():
        images, ignored, skips, _ = _scan(src / "image", "image/")
        mattes: dict[str, str] = {}
        if (src / "matte").is_dir():
            mattes, ignored_mattes, matte_skips, ambiguous = _scan(src / "matte", "matte/")
            ignored += ignored_mattes
            skips += matte_skips
            for i in [i for i in images if i.lower() in ambiguous]:  # no guessing its truth
                skips.append(_Skip(images.pop(i), "its matte is ambiguous (see matte/)"))
        layout, where = "ppm", f"{src / 'image'}"
    else:
        images, ignored, skips, _ = _scan(src, "")
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
    items = [_Item(i, images[i], mattes.get(i)) for i in sorted(images)]
    orphans = [
        _Skip(mattes[i], f"no image with id '{i}' in image/")
        for i in sorted(mattes)
        if i not in images
    ]
    return layout, items, skips + orphans, ignored


def _load(src: Path, item: _Item, prepare: Protocol | None = None) -> _Row | _Skip:
    """Read and decode one pair; any problem becomes a _Skip naming the file at fault."""
    try:
        image = (src / item.image).read_bytes()
    except OSError as exc:
        return _Skip(item.image, f"cannot read the file: {exc.strerror or exc}")
    try:
        rgb = decode_image(image, name=item.image)
    except DecodeError as exc:
        return _Skip(item.image, exc.reason)
    height, width = rgb.shape[:2]
    matte: bytes | None = None
    gray = None
    if item.matte is not None:
        try:
            matte = (src / item.matte).read_bytes()
        except OSError as exc:
            return _Skip(item.matte, f"cannot read the file: {exc.strerror or exc}{_with(item)}")
        try:
            gray = decode_matte(matte, name=item.matte)
        except DecodeError as exc:
            return _Skip(item.matte, exc.reason + _with(item))
        mh, mw = gray.shape
        if (mh, mw) != (height, width):
            return _Skip(
                item.matte,
                f"matte is {mw}x{mh} (WxH) but its image {item.image} is {width}x{height}; "
                f"a matte must have its image's size{_with(item)}",
            )
    row = _Row(item.image_id, image, matte, width, height, item.image, item.matte)
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


class _ShardWriter:
    """Writes rows into shards of `shard_size` rows, flushing a row group every `group` rows."""

    def __init__(
        self, root: Path, shard_size: int, group: int, prepared: dict[str, Any] | None = None
    ) -> None:
        self.root, self.shard_size, self.group = root, shard_size, group
        self.schema = shard_schema(prepared)
        self.prepared_bytes = 0
        self.shards: list[dict[str, Any]] = []
        self._buffer: list[_Row] = []
        self._writer: pq.ParquetWriter | None = None
        self._rows = 0
        self._mattes = 0
        self._first = ""
        self._last = ""

    def add(self, row: _Row) -> None:
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
        self.shards.append(
            {
                "name": name,
                "path": f"{SHARD_DIR}/{name}.parquet",
                "rows": self._rows,
                "with_matte": self._mattes,
                "bytes": path.stat().st_size,
                "sha256": sha256_file(path),
                "first_image_id": self._first,
                "last_image_id": self._last,
            }
        )
        self._rows = self._mattes = 0


def _loaded(
    src: Path, items: list[_Item], workers: int, prepare: Protocol | None = None
) -> Generator[_Row | _Skip, None, None]:
    """Load items on `workers` threads, yielded in input order, at most 2*workers in flight."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest") as pool:
        pending: deque[Future[_Row | _Skip]] = deque()
        todo = iter(items)
        try:
            for item in todo:
                pending.append(pool.submit(_load, src, item, prepare))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                result = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(_load, src, nxt, prepare))
                yield result
        finally:
            for fut in pending:
                fut.cancel()


def _check_out(out: AnyPath) -> None:
    if isinstance(out, UriPath):
        out.check_store()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "a file" if not out.is_dir() else "not empty"
        raise ModnetBatchError(
            f"output {out} exists and is {what}; ingest never overwrites: choose a new "
            "directory or remove it"
        )


def _publish(tmp: Path, out: AnyPath) -> None:
    """The finished dataset folder `tmp` as `out`: renamed into place, or uploaded to object
    storage with its dataset.json last (readers take a folder without it for no dataset), then
    removed here."""
    if isinstance(out, Path):
        if out.exists():
            out.rmdir()  # empty: rename onto a directory is not portable
        os.rename(tmp, out)
        return
    assert isinstance(out, UriPath)
    files = sorted(p for p in tmp.rglob("*") if p.is_file() and p.name != META_FILE)
    for path in files:
        (out / path.relative_to(tmp).as_posix()).upload(path)
    (out / META_FILE).upload(tmp / META_FILE)
    shutil.rmtree(tmp, ignore_errors=True)


def ingest(
    src: Path,
    out: str | AnyPath,
    *,
    shard_size: int = 64,
    strict: bool = False,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
    row_group_rows: int = 8,
    prepare: str | None = None,
) -> IngestReport:
    """Turn source folder `src` into dataset directory `out` (see architecture.md).

    Bad inputs (undecodable image or matte, matte of another size, matte without image) are
    skipped and listed, or with `strict` raise ModnetBatchError. `out` appears atomically: it is
    built beside itself and renamed, so an interrupted ingest leaves no partial dataset. `out`
    may be a URI (modnet_batch.storage): the dataset is built in a local temp folder and
    uploaded, shards first, dataset.json last (a folder without it is no dataset).
    `progress(done, total)` is called after each image. `prepare` names a fixed-size protocol
    (seed-area, seed-linear) whose network inputs are stored too, so jobs with that protocol
    read them instead of decoding (same results, see data/prepared.py).
    """
    started = time.perf_counter()
    for key, value in (
        ("shard_size", shard_size),
        ("workers", workers),
        ("row_group_rows", row_group_rows),
    ):
        if value < 1:
            raise ModnetBatchError(f"{key}={value}: expected a positive integer")
    src, out = Path(src).expanduser().resolve(), resolved(out)
    if not src.is_dir():
        what = "does not exist" if not src.exists() else "is not a directory"
        raise ModnetBatchError(
            f"source {src} {what}; expected a folder with image/ (and optional matte/) or "
            "a folder of images"
        )
    _check_out(out)
    prepared = None if prepare is None else prepared_description(prepare)
    protocol = None if prepare is None else get_protocol(prepare)
    layout, items, skipped, ignored = _plan(src)
    if strict and skipped:
        raise ModnetBatchError(
            f"cannot ingest {src / skipped[0].name}: {skipped[0].reason}; fix or remove the "
            "file, or ingest without strict to skip it"
        )

    near = out.parent if isinstance(out, Path) else Path(tempfile.gettempdir())
    near.mkdir(parents=True, exist_ok=True)
    tmp = near / f".{out.name}.ingest-{uuid.uuid4().hex[:12]}"
    (tmp / SHARD_DIR).mkdir(parents=True)
    try:
        writer = _ShardWriter(tmp, shard_size, row_group_rows, prepared)
        images = with_matte = 0
        prepare_cpu = 0.0
        with closing(_loaded(src, items, workers, protocol)) as results:
            for done, result in enumerate(results, start=1):
                if isinstance(result, _Skip):
                    if strict:
                        raise ModnetBatchError(
                            f"cannot ingest {src / result.name}: {result.reason}; fix or remove "
                            "the file, or ingest without strict to skip it"
                        )
                    skipped.append(result)
                else:
                    writer.add(result)
                    prepare_cpu += result.prepare_cpu
                    images += 1
                    with_matte += result.matte is not None
                if progress is not None:
                    progress(done, len(items))
        writer.close()
        if images == 0:
            raise ModnetBatchError(
                f"no readable images in {src}: all {len(items)} skipped, e.g. "
                f"{skipped[-1].name}: {skipped[-1].reason}"
            )
        skipped.sort(key=lambda s: s.name)
        meta = {
            "schema_version": SCHEMA_VERSION,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "tool_version": __version__,
            "source": str(src),
            "layout": layout,
            "shard_size": shard_size,
            "row_group_rows": row_group_rows,
            "counts": {
                "images": images,
                "with_matte": with_matte,
                "skipped": len(skipped),
                "ignored": len(ignored),
                "shards": len(writer.shards),
            },
            "shards": writer.shards,
            "skipped": [{"name": s.name, "reason": s.reason} for s in skipped],
            "ignored": ignored,
        }
        if prepared is not None:
            meta["prepared"] = {
                **prepared,
                "cpu_seconds": round(prepare_cpu, 3),
                "bytes": writer.prepared_bytes,
            }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _check_out(out)  # someone may have written there meanwhile
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return IngestReport(
        images=images,
        with_matte=with_matte,
        shards=len(writer.shards),
        skipped=[(s.name, s.reason) for s in skipped],
        seconds=time.perf_counter() - started,
        ignored=ignored,
        prepared=prepare,
        prepare_cpu_seconds=prepare_cpu,
        prepared_bytes=writer.prepared_bytes,
    )
