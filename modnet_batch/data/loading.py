"""Reading and checking the files of an ingest: each image (and its matte) read and decoded once,
to validate and measure it; with `prepare`, that protocol's network input stored too
(data/prepared.py). Any problem becomes a `Skip` naming the file at fault.

A `Loader` runs `load_item` over the items: a local thread pool (`thread_loader`, the default),
or Ray tasks over batches of files (execution/ingest_ray.py, built on `load_batch`). Whatever
the loader, results come in the items' order, so the dataset is the same.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol as Interface

import numpy as np
import numpy.typing as npt

from modnet_batch.data.decode import DecodeError, decode_image, decode_matte
from modnet_batch.data.prepared import prepare_pair
from modnet_batch.data.sources import Item, Skip
from modnet_batch.errors import ModnetBatchError
from modnet_batch.protocol import Protocol, get_protocol


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


Loaded = Row | Skip


class Loader(Interface):
    """Reads and checks `items` of source `src` (each with `load_item`), yielding one result
    per item in the items' order; `prepare` names the protocol whose inputs to store."""

    def __call__(
        self, src: Path, items: Sequence[Item], prepare: str | None
    ) -> Generator[Loaded, None, None]: ...


def read_source(src: Path, rel: str) -> bytes:
    """The bytes of source file `rel` (relative to `src`); raises OSError."""
    return (src / rel).read_bytes()


def _with(item: Item) -> str:
    """Said of a bad matte: its image is not ingested without it (it would be scored blind)."""
    return f"; {item.image} is skipped with it"


def _read(
    src: Path, rel: str, decode: Callable[..., npt.NDArray[np.uint8]], said: str = ""
) -> tuple[bytes, npt.NDArray[np.uint8]] | Skip:
    """A source file's bytes and pixels, or a Skip naming it (`said` appended to the reason)."""
    try:
        data = read_source(src, rel)
    except OSError as exc:
        return Skip(rel, f"cannot read the file: {exc.strerror or exc}{said}")
    try:
        return data, decode(data, name=rel)
    except DecodeError as exc:
        return Skip(rel, exc.reason + said)


def load_item(src: Path, item: Item, prepare: Protocol | None = None) -> Loaded:
    """Read and decode one pair; any problem becomes a Skip naming the file at fault."""
    got = _read(src, item.image, decode_image)
    if isinstance(got, Skip):
        return got
    image, rgb = got
    height, width = rgb.shape[:2]
    matte: bytes | None = None
    gray = None
    if item.matte is not None:
        got = _read(src, item.matte, decode_matte, _with(item))
        if isinstance(got, Skip):
            return got
        matte, gray = got
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
