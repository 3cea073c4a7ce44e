"""The dataset directory: Parquet shards of original encoded files plus `dataset.json`.

Readers open it with `Dataset.open` and stream one shard at a time with `iter_records`, or only
some of its row groups (a job's work unit, execution/units.py). A dataset ingested with
`--prepare PROTOCOL` also holds that protocol's network inputs (see PREPARED_FIELDS). Parquet
files that modnet-batch did not write are read in place through a ShardReader (data/parquet.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from modnet_batch.data.ids import is_safe_name
from modnet_batch.digest import sha256_file
from modnet_batch.errors import ModnetBatchError
from modnet_batch.storage import (
    AnyPath,
    UriPath,
    is_inside,
    location,
    parquet_source,
)

SCHEMA_VERSION = 1
# Parquet metadata of a file-list shard (data.files, which writes it): its files' folder.
FILES_ROOT_KEY = "modnet_batch.files_root"
META_FILE = "dataset.json"
SHARD_DIR = "shards"

# The shard table. `image`/`matte` hold the source files' bytes unchanged; width/height are the
# size after EXIF orientation, i.e. the shape decode_image returns.
SHARD_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("matte", pa.binary(), nullable=True),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("image_format", pa.string(), nullable=False),
        pa.field("matte_format", pa.string(), nullable=True),
        pa.field("image_file", pa.string(), nullable=False),  # path in the source, for provenance
        pa.field("matte_file", pa.string(), nullable=True),
    ],
    metadata={"modnet_batch.schema_version": str(SCHEMA_VERSION)},
)
_READ_COLUMNS = ["image_id", "image", "matte", "width", "height"]

# `ingest --prepare PROTOCOL` adds these columns: the image as the protocol's network input
# (uint8 RGB, HxWx3 raw bytes, before normalisation) and the matte at the scoring size (uint8 HxW
# raw bytes), so a job decodes nothing. PREPARED_KEY in the Parquet metadata says for which
# protocol and at which shapes (JSON); the original bytes stay for provenance and other protocols.
PREPARED_FIELDS = (
    pa.field("prepared_image", pa.binary(), nullable=True),
    pa.field("prepared_matte", pa.binary(), nullable=True),
)
PREPARED_KEY = "modnet_batch.prepared"
_PREPARED_COLUMNS = ["image_id", "width", "height", "prepared_image", "prepared_matte"]


def shard_schema(prepared: dict[str, Any] | None = None) -> pa.Schema:
    """SHARD_SCHEMA, plus the prepared columns and their description when `prepared` is given."""
    if prepared is None:
        return SHARD_SCHEMA
    schema = SHARD_SCHEMA
    for f in PREPARED_FIELDS:
        schema = schema.append(f)
    return schema.with_metadata(
        {**(SHARD_SCHEMA.metadata or {}), PREPARED_KEY.encode(): json.dumps(prepared).encode()}
    )


@dataclass(frozen=True)
class Prepared:
    """A record's stored network input (HxWx3 uint8 RGB) and scoring-size matte (HxW uint8).

    Read-only zero-copy views into the Arrow batch; `protocol` is the protocol they were made for.
    """

    protocol: str
    image: npt.NDArray[np.uint8]
    matte: npt.NDArray[np.uint8] | None


@dataclass(frozen=True)
class ShardInfo:
    """One shard file of a dataset; small and picklable, what the driver hands to actors."""

    name: str  # "shard-00000"
    path: str  # relative to the dataset root, "shards/shard-00000.parquet"
    rows: int
    sha256: str


@dataclass(frozen=True)
class Record:
    """One image (and its matte, if any) as stored: encoded bytes, not pixels.

    `image`/`matte` are zero-copy read-only views into the Arrow batch when read by
    `iter_records` (memoryview; not picklable, `bytes(record.image)` copies). When `prepared` is
    set, the original bytes were not read: `image` is empty and `matte` None.
    """

    image_id: str
    image: bytes | memoryview
    matte: bytes | memoryview | None
    width: int
    height: int
    prepared: Prepared | None = None
    # a file-list dataset (`matte`): the outputs' relative name, and why the file could not be
    # read (the image then becomes an error row; the shard goes on)
    output_name: str | None = None
    read_error: Exception | None = None
    # width/height were read from the file's header, not from a decode at ingest: the decode
    # checks that they agree before anything is resized to them
    sized_by_header: bool = False


class ShardReader(Protocol):
    """How to read shard files that modnet-batch did not write (data/parquet.py): small and
    picklable, it travels with each work unit to the worker that reads it."""

    def records(
        self, path: AnyPath, shard: pq.ParquetFile, row_groups: list[int] | None, batch_rows: int
    ) -> Iterator[Record]:
        """The records of `row_groups` (None: every row group) of the open file `shard`."""
        ...

    def ids(self, path: AnyPath, shard: pq.ParquetFile, row_groups: list[int] | None) -> list[str]:
        """The image ids of those row groups, in row order (what their records carry)."""
        ...


def shard_name(index: int) -> str:
    """The name of shard number `index`: shard-00000, shard-00001, ..."""
    return f"shard-{index:05d}"


def _not_a_dataset(root: AnyPath, why: str) -> ModnetBatchError:
    hint = (
        f"run `modnet-batch ingest SRC {root}` to create one, or pass Parquet files (a .parquet "
        "file or a folder of them) to read in place"
    )
    if (root / "image").is_dir():
        hint = f"it looks like a source folder; run `modnet-batch ingest {root} OUT` first"
    return ModnetBatchError(f"{root} is not a dataset directory ({why}); {hint}")


class Dataset:
    """An opened dataset: `meta` is dataset.json, `shards` its shard list in order.

    `reader` is None for a dataset directory; Parquet files read in place (data/parquet.py)
    carry their reader and their own `identity` (a digest of names, sizes and footers).
    """

    def __init__(
        self,
        root: AnyPath,
        meta: dict[str, Any],
        shards: list[ShardInfo],
        reader: ShardReader | None = None,
        identity: str | None = None,
    ) -> None:
        self.root = root
        self.meta = meta
        self.shards = shards
        self.reader = reader
        self.identity = identity

    @classmethod
    def open(cls, path: str | AnyPath) -> Dataset:
        """Read and check `dataset.json`; raises ModnetBatchError if `path` is not a dataset.

        `path` is a local folder or a URI (modnet_batch.storage): every file is read through it."""
        root = location(path).resolve()
        if not root.exists():
            raise _not_a_dataset(root, "it does not exist")
        if not root.is_dir():
            raise _not_a_dataset(root, "it is a file")
        meta_path = root / META_FILE
        if not meta_path.is_file():
            raise _not_a_dataset(root, f"no {META_FILE}")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModnetBatchError(
                f"{meta_path} is unreadable ({exc}); "
                "re-create the dataset with `modnet-batch ingest`"
            ) from exc
        version = meta.get("schema_version") if isinstance(meta, dict) else None
        if version != SCHEMA_VERSION:
            raise ModnetBatchError(
                f"{meta_path} has schema_version {version!r}, this modnet-batch reads "
                f"{SCHEMA_VERSION}; re-create the dataset with `modnet-batch ingest`"
            )
        try:
            shards = [
                ShardInfo(
                    name=str(s["name"]),
                    path=str(s["path"]),
                    rows=int(s["rows"]),
                    sha256=str(s["sha256"]),
                )
                for s in meta["shards"]
            ]
            int(meta["counts"]["images"])
            int(meta["counts"]["with_matte"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModnetBatchError(
                f"{meta_path} lacks or has a malformed field ({exc!r}); "
                "re-create the dataset with `modnet-batch ingest`"
            ) from exc
        for s in shards:
            inside = ".." not in Path(s.path).parts and is_inside((root / s.path).resolve(), root)
            if not is_safe_name(s.name) or not inside or Path(s.path).is_absolute():
                raise ModnetBatchError(
                    f"{meta_path} lists shard {s.name!r} at {s.path!r}, outside the dataset "
                    "directory or not a safe name; re-create the dataset with `modnet-batch ingest`"
                )
        missing = _missing(root, [s.path for s in shards])
        if missing:
            raise ModnetBatchError(
                f"dataset {root} is incomplete: missing {', '.join(missing[:5])}"
                f"{' ...' if len(missing) > 5 else ''}; re-create it with `modnet-batch ingest`"
            )
        return cls(root, meta, shards)

    @property
    def num_images(self) -> int:
        """Images stored (skipped inputs not counted)."""
        return int(self.meta["counts"]["images"])

    @property
    def num_with_matte(self) -> int:
        """Stored images that have a ground-truth matte."""
        return int(self.meta["counts"]["with_matte"])

    def shard_path(self, shard: ShardInfo) -> AnyPath:
        """Absolute path of a shard file."""
        return self.root / shard.path

    def fingerprint(self) -> str:
        """Hex SHA-256 of the ordered (name, sha256) shard list: equal iff the content is equal.

        Independent of where the dataset lives and of dataset.json's timestamps, so a run can
        refuse to resume against different data. Parquet read in place has its own (`identity`).
        """
        if self.identity is not None:
            return self.identity
        listing = json.dumps([[s.name, s.sha256] for s in self.shards], separators=(",", ":"))
        return hashlib.sha256(listing.encode()).hexdigest()

    def verify(self) -> None:
        """Re-hash every shard file; raises ModnetBatchError naming the first that changed."""
        for shard in self.shards:
            actual = sha256_file(self.shard_path(shard))
            if actual != shard.sha256:
                raise ModnetBatchError(
                    f"{self.shard_path(shard)} has sha256 {actual}, dataset.json records "
                    f"{shard.sha256}; the file changed after ingest, re-create the dataset"
                )

    def row_group_rows(self, shard: ShardInfo) -> list[int] | None:
        """The rows of each row group of a shard, from its Parquet footer alone; None when the
        footer cannot be read (the worker that reads the shard names the damage)."""
        try:
            meta = pq.ParquetFile(parquet_source(self.shard_path(shard))).metadata
        except (OSError, pa.ArrowException):
            return None
        return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]

    def image_ids(
        self, shard: ShardInfo | None = None, row_groups: list[int] | None = None
    ) -> list[str]:
        """The image ids of one shard (of its `row_groups` only, when given), or of every shard
        in order; reads only the column they come from."""
        shards = self.shards if shard is None else [shard]
        ids: list[str] = []
        for s in shards:
            path = self.shard_path(s)
            with pq.ParquetFile(parquet_source(path)) as file:
                if self.reader is not None:
                    ids.extend(self.reader.ids(path, file, row_groups))
                    continue
                groups = list(range(file.num_row_groups)) if row_groups is None else row_groups
                table = file.read_row_groups(groups, columns=["image_id"])
            ids.extend(str(i) for i in table.column("image_id").to_pylist())
        return ids

    def records(self) -> Iterator[Record]:
        """Every record of every shard, in shard order, streaming."""
        for shard in self.shards:
            yield from iter_records(self.shard_path(shard), reader=self.reader)


def _missing(root: AnyPath, rels: list[str]) -> list[str]:
    """The files of `rels` (relative to `root`) that are not there (object storage: one
    listing instead of a request per file)."""
    if isinstance(root, UriPath):
        present = {p.relative_to(root).as_posix() for p, _ in root.walk_files()}
        return [r for r in rels if Path(r).as_posix() not in present]
    return [r for r in rels if not (root / r).is_file()]


def _prepared_meta(schema: pa.Schema, path: AnyPath) -> dict[str, Any] | None:
    raw = (schema.metadata or {}).get(PREPARED_KEY.encode())
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
        meta["image_shape"] = tuple(int(v) for v in meta["image_shape"])
        meta["matte_shape"] = tuple(int(v) for v in meta["matte_shape"])
        str(meta["protocol"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModnetBatchError(
            f"{path} has malformed {PREPARED_KEY} metadata ({exc!r}); re-create the dataset"
        ) from exc
    return dict(meta)


def iter_records(
    path: str | AnyPath,
    *,
    batch_rows: int = 8,
    prepared_for: str | None = None,
    row_groups: list[int] | None = None,
    reader: ShardReader | None = None,
) -> Iterator[Record]:
    """Stream one shard file, `batch_rows` rows at a time, so memory stays ~one row group.

    `row_groups` reads only those row groups (a work unit); None reads them all. With
    `prepared_for` naming the protocol the shard was prepared for (`ingest --prepare`),
    only the prepared columns are read and each record carries them in `prepared`; for any
    other protocol, or an unprepared shard, the original encoded bytes are read. `reader`
    reads a Parquet file that modnet-batch did not write (data/parquet.py).
    Raises ModnetBatchError if the file is not a readable shard.
    """
    if batch_rows < 1:
        raise ModnetBatchError(f"batch_rows={batch_rows}: expected a positive row count")
    path = location(path)
    try:
        shard = pq.ParquetFile(parquet_source(path))
    except (OSError, pa.ArrowException) as exc:
        raise ModnetBatchError(
            f"{path} is not a readable Parquet shard ({exc}); re-create the dataset"
        ) from exc
    if reader is not None:
        with shard:
            yield from reader.records(path, shard, row_groups, batch_rows)
        return
    files_root = (shard.schema_arrow.metadata or {}).get(FILES_ROOT_KEY.encode())
    if files_root is not None:
        yield from _file_records(shard, Path(files_root.decode()), batch_rows, row_groups)
        return
    prepared = _prepared_meta(shard.schema_arrow, path)
    if prepared is not None and prepared_for != prepared["protocol"]:
        prepared = None  # prepared for another protocol: decode the originals
    columns = _READ_COLUMNS if prepared is None else _PREPARED_COLUMNS
    missing = [c for c in columns if c not in shard.schema_arrow.names]
    if missing:
        raise ModnetBatchError(
            f"{path} lacks column(s) {', '.join(missing)}; it is not a modnet-batch shard, "
            "re-create the dataset with `modnet-batch ingest`"
        )
    with shard:
        for batch in shard.iter_batches(
            batch_size=batch_rows, columns=columns, row_groups=row_groups
        ):
            ids = batch.column("image_id").to_pylist()
            widths = batch.column("width").to_pylist()
            heights = batch.column("height").to_pylist()
            if prepared is not None:
                yield from _prepared_records(path, batch, prepared, ids, widths, heights)
                continue
            images = _binary_views(batch.column("image"))
            mattes = _binary_views(batch.column("matte"))
            for i in range(batch.num_rows):
                image = images[i]
                if image is None:
                    raise ModnetBatchError(
                        f"{path}: row {ids[i]!r} has no image bytes; re-create the dataset"
                    )
                yield Record(ids[i], image, mattes[i], widths[i], heights[i])


def _file_records(
    shard: pq.ParquetFile, root: Path, batch_rows: int, row_groups: list[int] | None
) -> Iterator[Record]:
    """Records of a file-list shard (data.files): each image's bytes read from its file."""
    columns = ["image_id", "image_path", "output_name", "width", "height"]
    with shard:
        for batch in shard.iter_batches(
            batch_size=batch_rows, columns=columns, row_groups=row_groups
        ):
            for row in batch.to_pylist():
                data, error = b"", None
                try:
                    data = (root / row["image_path"]).read_bytes()
                except OSError as exc:
                    error = exc
                yield Record(
                    row["image_id"],
                    data,
                    None,
                    row["width"],
                    row["height"],
                    output_name=row["output_name"],
                    read_error=error,
                    sized_by_header=True,
                )


def _prepared_records(
    path: AnyPath,
    batch: pa.RecordBatch,
    meta: dict[str, Any],
    ids: list[str],
    widths: list[int],
    heights: list[int],
) -> Iterator[Record]:
    images = _binary_views(batch.column("prepared_image"))
    mattes = _binary_views(batch.column("prepared_matte"))
    for i in range(batch.num_rows):
        image, matte = images[i], mattes[i]
        if image is None:
            raise ModnetBatchError(
                f"{path}: row {ids[i]!r} has no prepared image; re-create the dataset"
            )
        prep = Prepared(
            protocol=meta["protocol"],
            image=_raw_view(image, meta["image_shape"], path, ids[i]),
            matte=None if matte is None else _raw_view(matte, meta["matte_shape"], path, ids[i]),
        )
        yield Record(ids[i], b"", None, widths[i], heights[i], prepared=prep)


def _raw_view(
    data: memoryview, shape: tuple[int, ...], path: AnyPath, image_id: str
) -> npt.NDArray[np.uint8]:
    """Raw uint8 bytes as an array of `shape`, zero-copy (read-only)."""
    if len(data) != int(np.prod(shape)):
        raise ModnetBatchError(
            f"{path}: prepared data of {image_id!r} has {len(data)} bytes, expected shape "
            f"{shape}; re-create the dataset"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def _binary_views(column: pa.Array) -> list[memoryview | None]:
    """Read-only views of a binary column's values into its Arrow data buffer (no copy).

    Scalar access (`column[i].as_buffer()`) copies each value, hence the offsets by hand.
    """
    if not (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
        raise ModnetBatchError(f"column of type {column.type}: expected binary")
    _, offsets_buf, data_buf = column.buffers()
    kind = np.int64 if pa.types.is_large_binary(column.type) else np.int32
    offsets = np.frombuffer(offsets_buf, dtype=kind)[
        column.offset : column.offset + len(column) + 1
    ]
    data = memoryview(data_buf if data_buf is not None else b"").toreadonly()
    bounds = offsets.tolist()
    if column.null_count == 0:
        return [data[bounds[i] : bounds[i + 1]] for i in range(len(column))]
    # the validity bitmap by hand: pyarrow's is_valid().to_numpy() costs ~0.4 s on first use
    bits = np.unpackbits(np.frombuffer(column.buffers()[0], dtype=np.uint8), bitorder="little")
    valid = bits[column.offset : column.offset + len(column)]
    return [data[bounds[i] : bounds[i + 1]] if valid[i] else None for i in range(len(column))]
