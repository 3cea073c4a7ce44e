"""The options of `ingest`: how an image folder becomes a dataset of Parquet shards."""

from __future__ import annotations

from dataclasses import dataclass

from modnet_batch.options.spec import ADVANCED, DEVICES, INPUT, OUTPUTS, option

# Where ingest's decode checks run (execution.ingest_ray.choose_backend resolves `auto`).
INGEST_BACKENDS = ("auto", "local", "ray")


@dataclass(frozen=True)
class IngestConfig:
    shard_size: int = option(64, "Images per Parquet shard.", min=1, panel=OUTPUTS)
    strict: bool = option(False, "Stop at the first bad file instead of skipping it.", panel=INPUT)
    prepare: str | None = option(
        None,
        "Also store this protocol's network inputs (seed-area, seed-linear): jobs with it decode "
        "nothing, with the same results; none = store the encoded files only.",
        metavar="PROTOCOL",
        panel=OUTPUTS,
    )
    backend: str = option(
        "auto",
        "Where the decode checks run: local threads, or Ray tasks (ray: on the cluster at "
        "--address, else an embedded local Ray); auto = ray when a cluster is named, else local.",
        choices=lambda: INGEST_BACKENDS,
        panel=DEVICES,
    )
    address: str | None = option(
        None,
        "Ray cluster to check the files on: its GCS HOST:PORT, ray://HEAD:10001, or auto on a "
        "node (SRC must be readable there); none = $RAY_ADDRESS, else no cluster.",
        envvar="RAY_ADDRESS",
        metavar="ADDR",
        panel=DEVICES,
    )
    workers: int | None = option(
        None,
        "Decode threads (local), or Ray tasks at a time (ray); none = 2 threads, and with Ray "
        "every CPU of the local machine or of the cluster.",
        min=1,
        panel=DEVICES,
    )
    task_files: int | None = option(
        None,
        "Files per Ray task; none = up to 16, at least 4 tasks per worker.",
        min=1,
        panel=ADVANCED,
    )
    restart: bool = option(
        False,
        "Discard what an interrupted ingest into OUT finished, instead of continuing it.",
        panel=ADVANCED,
    )
