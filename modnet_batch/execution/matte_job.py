"""`matte SRC OUT` as a job: SRC (an image folder, a list file, a dataset or Parquet in place)
becomes the job's dataset, OUT its output folder, OUT/.modnet-batch its run directory."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modnet_batch.data.decode import IMAGE_EXTENSIONS
from modnet_batch.data.files import stage
from modnet_batch.data.parquet import is_parquet_source
from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution.resources import local_backend
from modnet_batch.options import JobConfig, load_job
from modnet_batch.options.spec import command_defaults

STATE = ".modnet-batch"  # under OUT: the listing (a dataset) and the run directory


@dataclass(frozen=True)
class MattePlan:
    job: JobConfig
    resumed: bool  # OUT holds the listing of an earlier run of the same SRC
    listing: Path | None  # the dataset listing SRC's files; None when SRC is read as it is
    skipped: int  # files the listing skipped (unreadable, colliding outputs), on a resume too
    skipped_files: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    ignored: list[str] = field(default_factory=list)  # this listing: no image extension


def plan_matte(src: Path, out: Path, options: dict[str, Any]) -> MattePlan:
    """The matte job of SRC into OUT; `options` are the job options given on the command line
    (flag text, None = not given). A folder or list file is listed into OUT/.modnet-batch once;
    the same command later resumes from that listing. With no --backend, --address or --workers,
    a CPU job on a machine of at most 2 cores runs in this process (no Ray start-up)."""
    _check_out(out)
    state = out / STATE
    staged = state / "dataset"
    resumed = False
    ignored: list[str] = []
    if (src / "dataset.json").is_file() or _parquet_only(src):
        dataset = src
    elif (staged / "dataset.json").is_file():
        listed = json.loads((staged / "dataset.json").read_text()).get("listed")
        if listed != str(src.resolve()):
            raise ModnetBatchError(
                f"OUT {out} holds the mattes of {listed}, not of {src}; pass another OUT"
            )
        dataset, resumed = staged, True
    else:
        state.mkdir(parents=True, exist_ok=True)
        ignored = list(stage(src, staged).ignored)
        dataset = staged
    skipped, skipped_files = 0, []
    if dataset == staged:  # files the listing skipped count as failed, on a resume too
        meta = json.loads((staged / "dataset.json").read_text())
        skipped = int(meta["counts"].get("skipped", 0))
        skipped_files = [(s["name"], s["reason"]) for s in meta.get("skipped", [])]
    values = {k: v for k, v in options.items() if v is not None}
    if not (values.get("backend") or values.get("address") or values.get("workers")):
        values["backend"] = local_backend(values.get("device"))  # no Ray start-up if small
    values.update(dataset=str(dataset), out=str(state / "run"), output_dir=str(out))
    values = {**command_defaults(JobConfig, "matte"), **values}
    job = load_job(None, values, cli=True)
    listing = staged if dataset == staged else None
    return MattePlan(job, resumed, listing, skipped, skipped_files, ignored)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ModnetBatchError(f"OUT {out} is a file; pass a folder for the mattes")
    if out.exists() and any(out.iterdir()) and not (out / STATE).is_dir():
        raise ModnetBatchError(
            f"OUT {out} is not empty and not a `modnet-batch matte` output; pass a new or "
            "empty folder (nothing in it is overwritten)"
        )


def _parquet_only(src: Path) -> bool:
    """Whether SRC is read as Parquet in place: a .parquet file, or a folder holding Parquet
    files and no images."""
    if not is_parquet_source(src):
        return False
    return src.is_file() or not any(
        p.suffix.lower() in IMAGE_EXTENSIONS for p in src.rglob("*") if p.is_file()
    )
