"""Job and benchmark options, each declared once (options.spec)."""

from modnet_batch.options.job import BACKENDS, JobConfig, dump_job, job_yaml, load_job

__all__ = ["BACKENDS", "JobConfig", "dump_job", "job_yaml", "load_job"]
