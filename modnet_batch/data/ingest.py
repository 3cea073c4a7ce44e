"""Ingest a source folder (PPM-100 layout or flat images) into a dataset directory.

Stores each file's original bytes; decodes once only to validate and measure it, and with
`prepare` also stores that protocol's network input and scoring-size matte (data/prepared.py).

What the source holds, and each image's id and matte, comes from its listing alone
(data/sources.py). The files are checked by a `Loader` (data/loading.py: local threads, or Ray
tasks), written in source order into shards (data/shard_writer.py), so the dataset is the same
whatever the loader. The dataset is built in a work folder beside OUT (data/ingest_work.py)
and renamed onto OUT at the end; an interrupted ingest (Ctrl-C, a killed driver, a lost
cluster) continues where it stopped when run again with the same source and options.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modnet_batch import __version__
from modnet_batch.data.dataset import META_FILE, SCHEMA_VERSION
from modnet_batch.data.ingest_work import (
    IngestWork,
    Progress,
    check_out,
    ingest_identity,
    work_dir,
)
from modnet_batch.data.loading import Loaded, Loader, load_batch, thread_loader
from modnet_batch.data.prepared import prepared_description
from modnet_batch.data.shard_writer import ShardWriter
from modnet_batch.data.sources import Item, Skip, SourcePairs, pair_source
from modnet_batch.errors import ModnetBatchError
from modnet_batch.storage import AnyPath, UriPath, atomic_write_json, location

__all__ = [
    "IngestReport",
    "Item",
    "Loaded",
    "Loader",
    "ingest",
    "ingest_to",
    "load_batch",
    "thread_loader",
    "work_dir",
]


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


class _Refused(ModnetBatchError):
    """The ingest cannot succeed with these inputs (strict, nothing readable): nothing is kept."""


def _refused_file(src: Path, skip: Skip) -> _Refused:
    return _Refused(
        f"cannot ingest {src / skip.name}: {skip.reason}; fix or remove the file, or ingest "
        "without strict to skip it"
    )


@dataclass(frozen=True)
class _Options:
    shard_size: int
    row_group_rows: int
    strict: bool
    prepare: str | None
    prepared: dict[str, Any] | None  # the description of what `prepare` stores


class _Build:
    """One call's pass over the files left to check: results into shards in source order, the
    work folder's progress recorded after each finished shard."""

    def __init__(
        self,
        work: IngestWork,
        done: Progress,
        options: _Options,
        on_shard: Callable[[int], None] | None,
    ) -> None:
        self.work, self.done, self.options, self.on_shard = work, done, options, on_shard
        self.state = dataclasses.replace(done, shards=list(done.shards), skipped=list(done.skipped))
        self.consumed = done.consumed  # items whose results went to the writer
        self.skipped_now: list[Skip] = []  # bad files since the last finished shard
        self.prepare_cpu = done.prepare_cpu
        self.writer = ShardWriter(
            work.dataset, options.shard_size, options.row_group_rows, options.prepared, self._closed
        )
        self.writer.shards = list(done.shards)
        self.writer.prepared_bytes = done.prepared_bytes

    def _closed(self, entry: dict[str, Any]) -> None:
        state = self.state
        state.shards.append(entry)
        state.consumed = self.consumed
        state.skipped += self.skipped_now
        self.skipped_now.clear()
        state.images += entry["rows"]
        state.with_matte += entry["with_matte"]
        state.prepared_bytes = self.writer.prepared_bytes
        state.prepare_cpu = self.prepare_cpu  # of the rows so far, which are all in shards now
        self.work.save(state)
        if self.on_shard is not None:
            self.on_shard(len(state.shards))

    def take(self, src: Path, results: Iterable[Loaded], progress: Callable[[int], None]) -> None:
        """Each result in turn: a row into the shards, a skip listed (refused when strict)."""
        for n, result in enumerate(results, start=1):
            self.consumed += 1
            if isinstance(result, Skip):
                if self.options.strict:
                    raise _refused_file(src, result)
                self.skipped_now.append(result)
            else:
                self.prepare_cpu += result.prepare_cpu
                self.writer.add(result)
            progress(n)

    def finish(self) -> None:
        self.writer.close()
        self.state.skipped += self.skipped_now

    def meta(self, src: Path, pairs: SourcePairs, skipped: list[Skip]) -> dict[str, Any]:
        """The dataset's dataset.json."""
        meta: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "tool_version": __version__,
            "source": str(src),
            "layout": pairs.layout,
            "shard_size": self.options.shard_size,
            "row_group_rows": self.options.row_group_rows,
            "counts": {
                "images": self.state.images,
                "with_matte": self.state.with_matte,
                "skipped": len(skipped),
                "ignored": len(pairs.ignored),
                "shards": len(self.writer.shards),
            },
            "shards": self.writer.shards,
            "skipped": [{"name": s.name, "reason": s.reason} for s in skipped],
            "ignored": pairs.ignored,
        }
        if self.options.prepared is not None:
            meta["prepared"] = {
                **self.options.prepared,
                "cpu_seconds": round(self.prepare_cpu, 3),
                "bytes": self.writer.prepared_bytes,
            }
        return meta


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


def _check_inputs(src: Path, numbers: dict[str, int]) -> None:
    for key, value in numbers.items():
        if value < 1:
            raise ModnetBatchError(f"{key}={value}: expected a positive integer")
    if not src.is_dir():
        what = "does not exist" if not src.exists() else "is not a directory"
        raise ModnetBatchError(
            f"source {src} {what}; expected a folder with image/ (and optional matte/) or "
            "a folder of images"
        )


def ingest(
    src: Path,
    out: Path,
    *,
    shard_size: int = 64,
    strict: bool = False,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
    row_group_rows: int = 1,
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
    One ingest at a time builds it: another, while this one runs, is refused naming it.
    `progress(done, total)` is called after each file this call checks (`total`: the files left
    to check). `prepare` names a fixed-size protocol (seed-area, seed-linear) whose network
    inputs are stored too, so jobs with that protocol read them instead of decoding (same
    results, see data/prepared.py). `loader` checks the files (default: `workers` threads);
    `on_phase(text)` says what it does; `on_shard(n)` is called once n shards are finished.
    """
    started = time.perf_counter()
    numbers = {"shard_size": shard_size, "workers": workers, "row_group_rows": row_group_rows}
    src, out = Path(src).expanduser().resolve(), Path(out).expanduser().resolve()
    _check_inputs(src, numbers)
    check_out(out)
    prepared = None if prepare is None else prepared_description(prepare)
    options = _Options(shard_size, row_group_rows, strict, prepare, prepared)
    pairs = pair_source(src)
    if strict and pairs.skipped:
        raise _refused_file(src, pairs.skipped[0])
    work = IngestWork(out)
    done = work.open(
        ingest_identity(src, pairs, shard_size, row_group_rows, prepare, strict), restart
    )
    if done.shards:
        say = on_phase or (lambda text: None)
        say(
            f"resuming: {len(done.shards)} shard(s) of {done.images} images kept from an "
            f"interrupted ingest ({work.root}); {len(pairs.items) - done.consumed} files left"
        )
    build = _Build(work, done, options, on_shard)
    try:
        _run(build, src, pairs, loader or thread_loader(workers), progress)
    except _Refused:
        work.discard()
        raise
    finally:
        work.close()
    work.discard()
    return IngestReport(
        images=build.state.images,
        with_matte=build.state.with_matte,
        shards=len(build.writer.shards),
        skipped=[(s.name, s.reason) for s in _skipped(pairs, build)],
        seconds=time.perf_counter() - started,
        ignored=pairs.ignored,
        prepared=prepare,
        prepare_cpu_seconds=build.prepare_cpu,
        prepared_bytes=build.writer.prepared_bytes,
        resumed_shards=len(done.shards),
        decoded=build.consumed - done.consumed,
    )


def _skipped(pairs: SourcePairs, build: _Build) -> list[Skip]:
    return sorted(pairs.skipped + build.state.skipped, key=lambda s: s.name)


def _run(
    build: _Build,
    src: Path,
    pairs: SourcePairs,
    loader: Loader,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Check the files left, write their shards, then dataset.json, and publish the dataset."""
    done = build.done
    todo = pairs.items[done.consumed :]
    tick = (lambda n: progress(n, len(todo))) if progress is not None else (lambda n: None)
    with closing(loader(src, todo, build.options.prepare)) as results:
        build.take(src, results, tick)
    if build.consumed != len(pairs.items):
        raise ModnetBatchError(
            f"the loader returned {build.consumed - done.consumed} results for {len(todo)} "
            "files; run the command again to continue"
        )
    build.finish()
    if build.state.images == 0:
        last = (pairs.skipped + build.state.skipped)[-1]
        raise _Refused(
            f"no readable images in {src}: all {len(pairs.items)} skipped, e.g. "
            f"{last.name}: {last.reason}"
        )
    meta = build.meta(src, pairs, _skipped(pairs, build))
    atomic_write_json(build.work.dataset / META_FILE, meta, sort_keys=False)  # complete, last
    build.work.publish()
