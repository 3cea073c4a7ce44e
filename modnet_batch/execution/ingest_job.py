"""`ingest SRC OUT` as one call: choose where the files are checked (threads or Ray tasks), run
data.ingest, and turn any failure into one line that says how to continue."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from modnet_batch.data.ingest import IngestReport, Loader, thread_loader, work_dir
from modnet_batch.data.ingest import ingest_to as ingest_files
from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution.ingest_ray import RayLoader, choose_backend
from modnet_batch.options import IngestConfig
from modnet_batch.storage import location

LOCAL_THREADS = 2  # decode threads when --workers is not given and no Ray is used

Progress = Callable[[int, int], None]  # (files checked, files in all)


def run_ingest(
    config: IngestConfig,
    src: Path,
    dst: str,
    *,
    progress: Progress | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> IngestReport:
    """Ingest SRC into the dataset DST (a path or a URI). An interrupted ingest keeps its
    finished shards beside DST; the same call continues after them (`config.restart`: not).
    Errors (Ray, the file system) become one ModnetBatchError line that says how to go on;
    KeyboardInterrupt passes through (see `resume_hint`)."""
    phase = on_phase or (lambda text: None)
    loader, how = _loader(config, phase)
    phase(f"listing {src}")
    first = [True]

    def checked(done: int, total: int) -> None:
        if first[0] and how:
            phase(f"checking {total} files with {how}")
        first[0] = False
        if progress is not None:
            progress(done, total)

    try:
        return ingest_files(
            src,
            dst,
            shard_size=config.shard_size,
            strict=config.strict,
            workers=config.workers or LOCAL_THREADS,
            progress=checked,
            prepare=config.prepare,
            loader=loader,
            restart=config.restart,
            on_phase=phase,
        )
    except ModnetBatchError:
        raise
    except Exception as exc:  # Ray, the file system: one line, and how to go on
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ModnetBatchError(f"{type(exc).__name__}: {first_line}{resume_hint(dst)}") from None


def _loader(config: IngestConfig, phase: Callable[[str], None]) -> tuple[Loader, str]:
    """The loader and, for local threads, how they are described ('' for Ray: it says itself)."""
    if choose_backend(config.backend, config.address) == "ray":
        ray_loader = RayLoader(
            address=config.address,
            workers=config.workers,
            files_per_task=config.task_files,
            on_phase=phase,
        )
        return ray_loader, ""
    threads = config.workers or LOCAL_THREADS
    return thread_loader(threads), f"{threads} decode threads"


def resume_hint(dst: str) -> str:
    """'; the finished shards are kept in DIR: ...' when an interrupted ingest left some."""
    target = location(dst)
    if not isinstance(target, Path):  # a URI: its dataset is built in a local temp folder
        return ""
    work = work_dir(target.expanduser().resolve())
    if not work.is_dir():
        return ""
    return f"; the finished shards are kept in {work}: run the same command to continue"
