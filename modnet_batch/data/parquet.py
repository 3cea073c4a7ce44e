"""Parquet datasets in place: a `.parquet` file, or a folder of them, that modnet-batch did not
write (no dataset.json), read where it is; nothing is copied.

The images are a column of encoded bytes: binary, or a struct with a `bytes` field as the
Hugging Face `datasets` export writes it (`struct<bytes: binary, path: string>`); mattes the
same, optional. Which columns: `--image-column` (default `image`), `--matte-column` (default
`matte` in the files that have one: the others' images are unscored), `--id-column` (default
none). A column that is given must be in every file.

Ids, decided once for the whole dataset when it is opened:
- from the id column, escaped when unsafe as a file name (unsafe characters replaced and a hash
  of the original appended, deterministic); a null id, or one that several rows share ignoring
  case, makes those rows error rows (named `<file stem>-<row>`), never another image's outputs;
- else from the image struct's `path` field (its file stem, escaped alike), when those stems are
  unique ignoring case (a row without a path, a null image say, is `<file stem>-<row>`);
- else from the row: `<file stem>-<row>` (the file's path in the folder, `/` as `__`, and the
  row's index in its file, zero-padded); so too the rows of files whose images have no paths.

Width and height are read from each image's header with Pillow when its row is read (no decode;
EXIF orientation applied, as data/files.py does); the decode checks that they agree. A null or
unreadable image becomes an error row while the job goes on. Work units are runs of row groups,
as for ingested shards (execution/units.py). The dataset's identity for resume is a digest of
the files' names, sizes and Parquet footers and of the columns chosen: cheap, and it changes
when a file does. The files are not hashed whole (an ingested shard is checked by its SHA-256).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from modnet_batch.data.dataset import (
    META_FILE,
    SCHEMA_VERSION,
    Dataset,
    Record,
    ShardInfo,
    _binary_views,
    shard_name,
)
from modnet_batch.data.decode import DecodeError
from modnet_batch.data.files import header_size
from modnet_batch.data.ids import PARQUET_SUFFIX, path_stem, row_id, safe_id
from modnet_batch.errors import ModnetBatchError
from modnet_batch.storage import AnyPath, UriPath, location, parquet_source, relative

DEFAULT_IMAGE_COLUMN = "image"
DEFAULT_MATTE_COLUMN = "matte"
_MAGIC = b"PAR1"


@dataclass(frozen=True)
class ParquetColumns:
    """The job's column options (--image-column, --matte-column, --id-column); None: default."""

    image: str | None = None
    matte: str | None = None
    id: str | None = None

    def given(self) -> list[str]:
        """The options that were given, as flags."""
        flags = (("--image-column", self.image), ("--matte-column", self.matte))
        return [f for f, v in (*flags, ("--id-column", self.id)) if v is not None]


def _is_binary(tp: pa.DataType) -> bool:
    return bool(pa.types.is_binary(tp) or pa.types.is_large_binary(tp) or _is_view(tp))


def _is_view(tp: pa.DataType) -> bool:
    check = getattr(pa.types, "is_binary_view", None)
    return bool(check is not None and check(tp))


def _has_path(tp: pa.DataType) -> bool:
    """Whether an image column is a struct with a `path` field (Hugging Face datasets)."""
    return bool(pa.types.is_struct(tp) and tp.get_field_index("path") >= 0)


def _bytes_field(tp: pa.DataType) -> int | None:
    """The index of a struct's binary `bytes` field, None when `tp` is not such a struct."""
    if not pa.types.is_struct(tp):
        return None
    index = tp.get_field_index("bytes")
    if index < 0 or not _is_binary(tp.field(index).type):
        return None
    return int(index)


def _encoded(column: pa.Array) -> tuple[list[memoryview | None], list[Any] | None]:
    """The encoded files of a column (zero-copy views; None for a null) and, for a struct with
    a `path` field, each row's path."""
    paths = None
    if pa.types.is_struct(column.type):
        children = column.flatten()  # the struct's nulls and offset applied to its fields
        data = children[column.type.get_field_index("bytes")]
        at = column.type.get_field_index("path")
        if at >= 0:
            paths = children[at].to_pylist()
    else:
        data = column
    if _is_view(data.type):
        data = data.cast(pa.binary())
    return _binary_views(data), paths


@dataclass(frozen=True)
class ParquetReader:
    """Reads the rows of one Parquet dataset in place (a data.dataset.ShardReader); small and
    picklable, it travels with each work unit."""

    root: str
    image: str
    matte: str | None
    id_column: str | None
    rule: str  # "column" | "path" | "row": where ids come from (module docstring)
    duplicates: frozenset[str] = frozenset()  # lower-cased ids several rows share

    def _rel(self, path: AnyPath) -> str:
        """The file's path in the dataset's folder (as its ids name it); never resolved, so a
        file that is a link keeps the name it has here."""
        try:
            if isinstance(path, UriPath):
                return path.relative_to(UriPath(self.root)).as_posix()
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return path.name

    def _ids(
        self, rel: str, rows: int, start: int, values: list[Any] | None
    ) -> list[tuple[str, str | None]]:
        """(id, why the row is an error row or None) of `len(values)` rows from row `start`."""
        n = len(values) if values is not None else 0
        out: list[tuple[str, str | None]] = []
        for i in range(n):
            row = start + i
            fallback = row_id(rel, row, rows)
            raw = values[i] if values is not None else None
            if self.rule == "row":
                image_id = fallback
            elif self.rule == "path":
                stem = path_stem(raw)
                image_id = fallback if stem is None else safe_id(stem)
            elif raw is None:
                out.append(
                    (
                        fallback,
                        f"row {row} of {rel} has no id (null in column '{self.id_column}'); "
                        "fill it in, or leave --id-column out to derive ids",
                    )
                )
                continue
            else:
                image_id = safe_id(str(raw))
            if image_id.lower() in self.duplicates:
                what = f"column '{self.id_column}'" if self.rule == "column" else "derived"
                out.append(
                    (
                        fallback,
                        f"image id '{image_id}' ({what}) is shared by several rows, so row {row} "
                        f"of {rel} is not matted (outputs are named by id); make the ids unique"
                        + (
                            ", or leave --id-column out to derive ids"
                            if self.rule == "column"
                            else ""
                        ),
                    )
                )
                continue
            out.append((image_id, None))
        return out

    def _id_source(self, schema: pa.Schema) -> str | None:
        """The column a file's ids are read from (None: derived from the rows alone)."""
        if self.rule == "column":
            return self.id_column
        if self.rule == "path" and _has_path(schema.field(self.image).type):
            return f"{self.image}.path"
        return None

    def _matte(self, schema: pa.Schema) -> str | None:
        """The file's matte column: a file without the default one has no ground truth."""
        return self.matte if self.matte in schema.names else None

    def ids(self, path: AnyPath, shard: pq.ParquetFile, row_groups: list[int] | None) -> list[str]:
        """The ids of those row groups, reading only the id column or the image paths."""
        rel, meta = self._rel(path), shard.metadata
        groups = list(range(meta.num_row_groups)) if row_groups is None else row_groups
        starts = _starts(meta)
        source = self._id_source(shard.schema_arrow)
        out: list[str] = []
        for g in groups:
            n = meta.row_group(g).num_rows
            values: list[Any] = [None] * n
            if source is not None:
                table = shard.read_row_groups([g], columns=[source])
                column = table.column(0).combine_chunks()
                values = (
                    column.flatten()[0].to_pylist()
                    if pa.types.is_struct(column.type)
                    else column.to_pylist()
                )
            out.extend(i for i, _ in self._ids(rel, meta.num_rows, starts[g], values))
        return out

    def records(
        self, path: AnyPath, shard: pq.ParquetFile, row_groups: list[int] | None, batch_rows: int
    ) -> Iterator[Record]:
        """The records of those row groups, `batch_rows` rows at a time."""
        rel, meta = self._rel(path), shard.metadata
        groups = list(range(meta.num_row_groups)) if row_groups is None else row_groups
        starts = _starts(meta)
        columns = [self.image]
        matte = self._matte(shard.schema_arrow)
        if matte is not None:
            columns.append(matte)
        if self.rule == "column" and self.id_column not in columns:
            columns.append(str(self.id_column))
        for g in groups:
            start = starts[g]
            for batch in shard.iter_batches(batch_size=batch_rows, row_groups=[g], columns=columns):
                images, paths = _encoded(batch.column(self.image))
                mattes = (
                    _encoded(batch.column(matte))[0]
                    if matte is not None
                    else [None] * batch.num_rows
                )
                values: list[Any] | None = [None] * batch.num_rows
                if self.rule == "column":
                    values = batch.column(str(self.id_column)).to_pylist()
                elif self.rule == "path":
                    values = paths if paths is not None else [None] * batch.num_rows
                for i, (image_id, problem) in enumerate(
                    self._ids(rel, meta.num_rows, start, values)
                ):
                    yield self._record(rel, start + i, image_id, problem, images[i], mattes[i])
                start += batch.num_rows

    def _record(
        self,
        rel: str,
        row: int,
        image_id: str,
        problem: str | None,
        image: memoryview | None,
        matte: memoryview | None,
    ) -> Record:
        if problem is None and image is None:
            problem = (
                f"row {row} of {rel} has no image (null in column '{self.image}'); "
                "fill it in or drop the row"
            )
        if problem is not None:
            return Record(image_id, b"", None, 0, 0, read_error=ModnetBatchError(problem))
        assert image is not None
        try:
            width, height = header_size(io.BytesIO(image))
        except Exception as exc:  # Pillow raises many types for a bad header
            error = DecodeError(
                f"row {row} of {rel}", f"not a readable image ({type(exc).__name__}: {exc})"
            )
            return Record(image_id, b"", None, 0, 0, read_error=error)
        return Record(image_id, image, matte, width, height, sized_by_header=True)


def _starts(meta: pq.FileMetaData) -> list[int]:
    """The index in its file of each row group's first row."""
    starts, total = [], 0
    for g in range(meta.num_row_groups):
        starts.append(total)
        total += meta.row_group(g).num_rows
    return starts


def _footer(path: AnyPath) -> tuple[int, str]:
    """(size, SHA-256 of the Parquet footer): what the identity of a file read in place is."""
    with path.open("rb") as f:
        size = f.seek(0, 2)
        if size < 12:
            raise ModnetBatchError(f"{path} is not a Parquet file ({size} bytes)")
        f.seek(size - 8)
        tail = f.read(8)
        length = int.from_bytes(tail[:4], "little")
        if tail[4:] != _MAGIC or length > size - 12:
            raise ModnetBatchError(f"{path} is not a Parquet file (no footer); pass Parquet files")
        f.seek(size - 8 - length)
        footer = f.read(length)
    return size, hashlib.sha256(footer + tail).hexdigest()


def _parquet_files(path: AnyPath) -> tuple[AnyPath, list[AnyPath]]:
    """(root, the Parquet files) of a file or of a folder (searched recursively, hidden
    entries left out), in path order."""
    if path.is_file():
        return path.parent, [path]
    if isinstance(path, UriPath):  # one listing, not a request per file
        names: list[AnyPath] = [
            p
            for p, _ in path.walk_files()
            if p.suffix == PARQUET_SUFFIX
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        ]
        return path, sorted(names, key=lambda p: relative(p, path))
    found = [
        p
        for p in path.rglob(f"*{PARQUET_SUFFIX}")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    ]
    return path, sorted(found, key=lambda p: p.relative_to(path).as_posix())


def is_parquet_source(path: AnyPath) -> bool:
    """Whether `path` is a Parquet file, or a folder without dataset.json holding some."""
    if path.is_file():
        return path.suffix.lower() == PARQUET_SUFFIX
    if not path.is_dir() or (path / META_FILE).is_file():
        return False
    return bool(_parquet_files(path)[1])


def _names(schema: pa.Schema) -> str:
    return ", ".join(schema.names)


def _check_column(rel: str, schema: pa.Schema, name: str, what: str, flag: str, fix: str) -> None:
    if name not in schema.names:
        raise ModnetBatchError(
            f"{rel} has no {what} column '{name}' (its columns: {_names(schema)}); pass {flag} "
            f"{fix}"
        )
    if what == "id":
        return
    tp = schema.field(name).type
    if not _is_binary(tp) and _bytes_field(tp) is None:
        raise ModnetBatchError(
            f"column '{name}' of {rel} is {tp}, not encoded {what}s: expected binary, or a struct "
            f"with a binary 'bytes' field (a Hugging Face datasets image); pass {flag} {fix}"
        )


def _with_matte(meta: pq.FileMetaData, leaf: str) -> int:
    """Rows whose matte is not null, from the column statistics (all rows when unrecorded)."""
    paths = [meta.schema.column(i).path for i in range(meta.num_columns)]
    if leaf not in paths:
        return int(meta.num_rows)
    index = paths.index(leaf)
    count = 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        stats = group.column(index).statistics
        nulls = stats.null_count if stats is not None and stats.has_null_count else 0
        count += group.num_rows - nulls
    return count


def open_parquet(path: AnyPath, columns: ParquetColumns | None = None) -> Dataset:
    """The Parquet file `path`, or the Parquet files under the folder `path`, as a Dataset read
    in place. Raises ModnetBatchError (one line, naming the columns that exist) when a column
    is missing or holds no encoded images."""
    columns = columns or ParquetColumns()
    path = path.expanduser().resolve()
    root, files = _parquet_files(path)
    if not files:
        raise ModnetBatchError(f"{path} holds no {PARQUET_SUFFIX} files; pass Parquet files")
    image = columns.image or DEFAULT_IMAGE_COLUMN
    matte = columns.matte
    shards: list[ShardInfo] = []
    listing: list[list[Any]] = []
    with_matte = 0
    id_values: list[tuple[str, int, int, Any]] = []  # (file, row, rows, raw id source)
    for index, file in enumerate(files):
        rel = relative(file, root)
        try:
            size, footer = _footer(file)
            parquet = pq.ParquetFile(parquet_source(file))
        except (OSError, pa.ArrowException) as exc:
            raise ModnetBatchError(f"{file} is not a readable Parquet file ({exc})") from exc
        with parquet:
            schema, meta = parquet.schema_arrow, parquet.metadata
            _check_column(
                rel, schema, image, "image", "--image-column", "naming the encoded images"
            )
            if columns.matte is None and DEFAULT_MATTE_COLUMN in schema.names:
                matte = DEFAULT_MATTE_COLUMN  # by default, where a file has one
            file_matte = columns.matte or (matte if matte in schema.names else None)
            if file_matte is not None:
                _check_column(
                    rel,
                    schema,
                    file_matte,
                    "matte",
                    "--matte-column",
                    "naming the mattes, or leave it out",
                )
                tp = schema.field(file_matte).type
                leaf = file_matte if _bytes_field(tp) is None else f"{file_matte}.bytes"
                with_matte += _with_matte(meta, leaf)
            if columns.id is not None:
                _check_column(
                    rel, schema, columns.id, "id", "--id-column", "or leave it out to derive ids"
                )
                values = parquet.read(columns=[columns.id]).column(0).to_pylist()
            elif _has_path(schema.field(image).type):
                table = parquet.read(columns=[f"{image}.path"]).column(0).combine_chunks()
                values = table.flatten()[0].to_pylist() if len(table) else []
            else:  # no paths in this file: its rows are named by row
                values = [None] * meta.num_rows
            id_values.extend((rel, row, meta.num_rows, v) for row, v in enumerate(values))
        shards.append(ShardInfo(name=shard_name(index), path=rel, rows=meta.num_rows, sha256=""))
        listing.append([rel, size, footer])
    rule, note = _id_rule(columns.id, id_values)
    root_arg = root.uri if isinstance(root, UriPath) else str(root)
    reader = ParquetReader(root_arg, image, matte, columns.id, rule)
    ids = [_final_id(reader, rel, row, rows, raw) for rel, row, rows, raw in id_values]
    counts = Counter(i.lower() for i in ids if i is not None)
    duplicates = frozenset(k for k, n in counts.items() if n > 1)
    reader = ParquetReader(root_arg, image, matte, columns.id, rule, duplicates)
    chosen = {"image": image, "matte": matte, "id": columns.id, "ids": rule}
    identity = hashlib.sha256(
        json.dumps({"parquet": listing, "columns": chosen}, separators=(",", ":")).encode()
    ).hexdigest()
    meta_out: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": "parquet",
        "source": str(path),
        "columns": chosen,
        "ids_note": note,
        "counts": {
            "images": sum(s.rows for s in shards),
            "with_matte": with_matte,
            "shards": len(shards),
            "duplicate_ids": len(duplicates),
        },
        "shards": [{"name": s.name, "path": s.path, "rows": s.rows} for s in shards],
    }
    return Dataset(root, meta_out, shards, reader=reader, identity=identity)


def _id_rule(
    id_column: str | None, values: list[tuple[str, int, int, Any]]
) -> tuple[str, str | None]:
    """Where ids come from (module docstring), and why not from the paths when they could not."""
    if id_column is not None:
        return "column", None
    stems = [s for s in (path_stem(v) for _, _, _, v in values) if s is not None]
    if not stems:
        return "row", None  # no paths to name images by
    counts = Counter(safe_id(s).lower() for s in stems)
    if any(n > 1 for n in counts.values()):
        shared = next(k for k, n in counts.items() if n > 1)
        return "row", f"image paths are not unique ({shared!r} ...): ids are <file stem>-<row>"
    return "path", None


def _final_id(reader: ParquetReader, rel: str, row: int, rows: int, raw: Any) -> str | None:
    """A row's id before the duplicate check (None: a null in the id column)."""
    if reader.rule == "row":
        return row_id(rel, row, rows)
    if reader.rule == "path":
        stem = path_stem(raw)
        return row_id(rel, row, rows) if stem is None else safe_id(stem)
    return None if raw is None else safe_id(str(raw))


def open_dataset(path: str | AnyPath, columns: ParquetColumns | None = None) -> Dataset:
    """What `--dataset` names: a dataset directory (from `ingest`), or Parquet read in place (a
    `.parquet` file, or a folder of them without dataset.json); a local path or a URI."""
    columns = columns or ParquetColumns()
    root = location(path)
    if is_parquet_source(root):
        return open_parquet(root, columns)
    if columns.given() and (root / META_FILE).is_file():
        raise ModnetBatchError(
            f"{', '.join(columns.given())} apply to Parquet files that modnet-batch did not "
            f"write; {root} is an ingested dataset (its columns are fixed): leave them out"
        )
    return Dataset.open(root)
