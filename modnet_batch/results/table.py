"""`metrics.parquet`: one row per image (metrics.COLUMNS), written atomically."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from modnet_batch.metrics import COLUMNS, CONFUSION, PER_IMAGE, ImageRow
from modnet_batch.storage import AnyPath, atomic_write_bytes, parquet_source

_TYPES: dict[str, pa.DataType] = {
    "image_id": pa.string(),
    "width": pa.int32(),
    "height": pa.int32(),
    **dict.fromkeys(PER_IMAGE, pa.float64()),
    **dict.fromkeys(CONFUSION, pa.int64()),
    "error": pa.string(),
    "transient": pa.bool_(),
}
METRICS_SCHEMA = pa.schema([(name, _TYPES[name]) for name in COLUMNS])


def write_rows(path: AnyPath, rows: list[ImageRow]) -> None:
    records = [r.to_record() for r in rows]
    columns = {name: [r[name] for r in records] for name in METRICS_SCHEMA.names}
    table = pa.table(columns, schema=METRICS_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def read_rows(path: AnyPath) -> list[ImageRow]:
    return [ImageRow.from_record(r) for r in pq.read_table(parquet_source(path)).to_pylist()]
