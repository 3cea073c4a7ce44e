"""Writing an ingest's shards: rows into Parquet files of `shard_size` rows, a row group every
`group` rows, each file recorded (rows, bytes, SHA-256, first and last id) once complete."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from modnet_batch.data.dataset import SHARD_DIR, shard_name, shard_schema
from modnet_batch.data.decode import sniff_format
from modnet_batch.data.loading import Row
from modnet_batch.digest import sha256_file


class ShardWriter:
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
