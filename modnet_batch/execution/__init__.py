"""Execution: the per-shard pipeline, the job driver and its backends (inline, Ray)."""
