"""Data stage: decode encoded files, the dataset directory (Parquet shards), ingest, demo data."""

from modnet_batch.data.dataset import (
    SCHEMA_VERSION,
    Dataset,
    Record,
    ShardInfo,
    iter_records,
)
from modnet_batch.data.decode import DecodeError, decode_image, decode_matte, sniff_format
from modnet_batch.data.ingest import IngestReport, ingest
from modnet_batch.data.synthetic import SyntheticSample, make_synthetic, synthetic_sample

__all__ = [
    "SCHEMA_VERSION",
    "Dataset",
    "DecodeError",
    "IngestReport",
    "Record",
    "ShardInfo",
    "SyntheticSample",
    "decode_image",
    "decode_matte",
    "ingest",
    "iter_records",
    "make_synthetic",
    "sniff_format",
    "synthetic_sample",
]
