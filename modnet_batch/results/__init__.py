"""The run directory's contract: its layout, the alpha files, the metric table, work unit
records, the run identity, the typed summary and its throughput. Execution writes through it;
reporting and bench read runs only through it."""

from modnet_batch.results.alpha import read_alpha, write_alpha
from modnet_batch.results.identity import RunIdentity
from modnet_batch.results.records import ReturnedFile, UnitResult, WorkUnit
from modnet_batch.results.rundir import RunDir
from modnet_batch.results.summary import SUMMARY_SCHEMA, ImageCounts, JobFacts, Summary, UnitCounts
from modnet_batch.results.table import METRICS_SCHEMA, read_rows, write_rows
from modnet_batch.results.throughput import Share, Throughput

__all__ = [
    "METRICS_SCHEMA",
    "SUMMARY_SCHEMA",
    "ImageCounts",
    "JobFacts",
    "ReturnedFile",
    "RunDir",
    "RunIdentity",
    "Share",
    "Summary",
    "Throughput",
    "UnitCounts",
    "UnitResult",
    "WorkUnit",
    "read_alpha",
    "read_rows",
    "write_alpha",
    "write_rows",
]
