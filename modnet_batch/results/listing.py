"""The run directories under a folder and the state of each, for `modnet-batch runs [DIR]`.

A run is complete when its summary says so and no image failed; failed when work units failed every
retry or images failed (the summary lists them); partial when it has no summary yet (running,
or stopped: the same command resumes it) or when units were finished after its summary was
written (a resume that stopped).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from modnet_batch.errors import ModnetBatchError
from modnet_batch.results.rundir import MATTE_RUN, RunDir
from modnet_batch.storage import AnyPath, UriPath

MAX_DEPTH = 3  # folders below DIR searched for runs


@dataclass
class RunState:
    path: AnyPath  # what the user passes to `report` (a run dir, or a `matte` OUT folder)
    state: str  # complete | failed | partial
    detail: str = ""
    dataset: str = ""
    protocol: str = ""
    model: str = ""
    finished: str = ""
    images: int | None = None
    scored: int | None = None
    failed: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    images_per_s: float | None = None  # overall img/s (results.throughput)


def _is_run(folder: AnyPath) -> bool:
    return (folder / "job.yaml").is_file() and (folder / "state").is_dir()


def _find_uri_runs(top: UriPath, max_depth: int) -> list[AnyPath]:
    """find_runs in object storage: one recursive listing, a run is a folder holding job.yaml
    and something under state/ (object stores have no empty folders)."""
    files = {p.relative_to(top).as_posix() for p, _ in top.walk_files()}
    folders: set[str] = set()
    for rel in files:
        parts = rel.split("/")
        if parts[-1] != "job.yaml":
            continue
        folder = "/".join(parts[:-1])
        inside = f"{folder}/state/" if folder else "state/"
        if not any(f.startswith(inside) for f in files):
            continue
        names = folder.split("/") if folder else []
        if names[-2:] == list(MATTE_RUN.parts):
            names = names[:-2]  # a matte OUT folder: its outputs sit beside the run
        if len(names) > max_depth + 1 or any(n.startswith(".") for n in names):
            continue
        folders.add("/".join(names))
    # a run's own folders hold no runs
    outer = {f for f in folders if not any(f != o and f.startswith(o + "/") for o in folders if o)}
    return [top / f if f else top for f in sorted(outer)]


def find_runs(top: AnyPath, max_depth: int = MAX_DEPTH) -> list[AnyPath]:
    """Run directories and `matte` OUT folders at or below `top`, in path order."""
    if isinstance(top, UriPath):
        return _find_uri_runs(top, max_depth)
    found: list[AnyPath] = []
    top = Path(top)
    for root, dirs, _files in os.walk(top):
        here = Path(root)
        depth = len(here.relative_to(top).parts)
        if _is_run(here):
            found.append(here)
            dirs.clear()  # a run's own folders hold no runs
            continue
        if _is_run(here / MATTE_RUN):
            found.append(here)  # a matte OUT folder: its outputs sit beside the run
            dirs.clear()
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < max_depth else []
    return sorted(found, key=str)


def run_state(path: AnyPath) -> RunState:
    """The state and headline figures of one run (unreadable files say so in `detail`)."""
    matte = path / str(MATTE_RUN)
    root = matte if _is_run(matte) else path
    run = RunDir(root)
    try:
        job = yaml.safe_load(run.job_yaml.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        return RunState(path, "partial", detail=f"job.yaml unreadable: {exc}")
    state = RunState(
        path,
        "partial",
        dataset=str(job.get("dataset", "")),
        protocol=str(job.get("protocol", "")),
        model=str(job.get("model") or "reference"),
    )
    done = run.done_units()
    if not run.summary.is_file():
        state.detail = f"{len(done)} work unit(s) finished, no summary yet: rerun to resume"
        return state
    try:
        summary = run.read_summary()
    except (ModnetBatchError, OSError, ValueError) as exc:
        state.detail = f"summary.json unreadable: {exc}"
        return state
    state.finished = summary.finished
    state.images = summary.images.total
    state.scored = summary.images.scored
    state.failed = summary.images.failed
    state.metrics = {k: v for k, v in summary.metrics.items() if v is not None}
    state.images_per_s = summary.throughput.overall_images_per_s
    newer = run.last_result_time()
    if newer is not None and newer > run.summary.stat().st_mtime + 1e-3:
        state.detail = "work units finished after the summary: a resume stopped; rerun to finish"
        return state
    if not summary.complete:
        state.state = "failed"
        state.detail = (
            f"{len(summary.units.failed)} work unit(s) failed every retry: rerun to resume"
        )
    elif summary.images.failed:
        state.state = "failed"
        state.detail = f"{summary.images.failed} image(s) failed (error rows in metrics.parquet)"
    else:
        state.state = "complete"
    return state


def list_runs(top: AnyPath) -> list[RunState]:
    return [run_state(p) for p in find_runs(top)]
