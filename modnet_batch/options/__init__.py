"""Every command's options, each declared once (options.spec): jobs, ingest, build, report,
cluster, bench."""

from modnet_batch.options.bench import BenchConfig
from modnet_batch.options.build import BuildOptions
from modnet_batch.options.ingest import IngestConfig
from modnet_batch.options.job import BACKENDS, JobConfig, dump_job, job_yaml, load_job
from modnet_batch.options.report import ClusterConfig, ReportConfig

__all__ = [
    "BACKENDS",
    "BenchConfig",
    "BuildOptions",
    "ClusterConfig",
    "IngestConfig",
    "JobConfig",
    "ReportConfig",
    "dump_job",
    "job_yaml",
    "load_job",
]
