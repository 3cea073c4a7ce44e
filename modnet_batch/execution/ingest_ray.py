"""`ingest --backend ray`: the decode checks (and `--prepare`) as Ray tasks over batches of files.

Each task reads its own files (data.ingest.load_batch: the source must be reachable from every
node, as a job's dataset is) and returns its checked rows: the files' bytes, sizes and prepared
inputs, or the reason a file is skipped. The driver keeps at most `2 * workers` tasks out and
yields the results in source order, so data.ingest writes the same shards as with local
threads. A task asks for one CPU, and the driver asks for none, so tasks never starve it (it
writes the shards) and nothing waits on resources that another stage holds.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Generator, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import modnet_batch
from modnet_batch.data.ingest import Item, Loaded, load_batch
from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution.resources import available_cpus

MAX_FILES_PER_TASK = 16  # ~0.5 s of decoding per task for 2 MP JPEGs, a few MB per result
TASKS_PER_WORKER = 4  # at least this many tasks per worker, so that the tail is short
TASK_RETRIES = 3  # a task whose worker process died (OOM, a lost node) is run again


def files_per_task(files: int, workers: int) -> int:
    """At most MAX_FILES_PER_TASK, and small enough that every worker gets several tasks."""
    return max(1, min(MAX_FILES_PER_TASK, math.ceil(files / (TASKS_PER_WORKER * workers))))


def check_address(address: str) -> None:
    """ingest joins the cluster as a driver, so it needs what `ray.init` takes, not the Jobs API
    URL that `submit --address` takes."""
    if address.startswith(("http://", "https://")):
        raise ModnetBatchError(
            f"--address {address} is a Jobs API URL; ingest runs its driver here and joins the "
            "cluster directly: give the cluster's GCS address HOST:PORT (as `ray start "
            "--address` takes), ray://HEAD:10001, or `auto` on a node of the cluster; or "
            "--backend local to check the files on this machine"
        )


def _load_task(src: str, items: list[Item], prepare: str | None) -> list[Loaded]:
    return load_batch(Path(src), items, prepare)


class RayLoader:
    """A data.ingest Loader running on Ray: an embedded local Ray of `workers` CPUs when no
    address is given, else the cluster at `address` (its CPUs, or `workers` tasks at a time)."""

    def __init__(
        self,
        *,
        address: str | None = None,
        workers: int | None = None,
        files_per_task: int | None = None,
        on_phase: Callable[[str], None] | None = None,
    ) -> None:
        if address:
            check_address(address)
        for key, value in (("workers", workers), ("files_per_task", files_per_task)):
            if value is not None and value < 1:
                raise ModnetBatchError(f"{key}={value}: expected a positive integer")
        self.address = address
        self.workers = workers
        self.batch = files_per_task
        self.say = on_phase or (lambda text: None)
        self.used_workers = 0  # known once it runs
        self.tasks = 0

    def __call__(
        self, src: Path, items: Sequence[Item], prepare: str | None
    ) -> Generator[Loaded, None, None]:
        import ray  # here: `ingest` without Ray never pays for importing it

        with self._joined(ray.is_initialized()):
            workers = self.workers or _cluster_cpus()
            batch = self.batch or files_per_task(len(items), workers)
            self.used_workers = workers
            task: Any = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(_load_task)
            batches = [list(items[i : i + batch]) for i in range(0, len(items), batch)]
            self.tasks = len(batches)
            self.say(
                f"checking {len(items)} files in {len(batches)} Ray tasks of up to {batch} "
                f"on {workers} worker(s)"
            )
            window = 2 * workers  # tasks out at once: all workers busy, memory bounded
            pending: deque[Any] = deque()
            try:
                for files in batches:
                    while len(pending) >= window:
                        yield from _results(pending.popleft())
                    pending.append(task.remote(str(src), files, prepare))
                while pending:
                    yield from _results(pending.popleft())
            finally:
                for ref in pending:
                    ray.cancel(ref)

    def _joined(self, already: bool) -> AbstractContextManager[object]:
        """Ray for the run: the one this process already joined, else the cluster at the address
        (the workers there run this driver's code, cf. submit's py_modules), else an embedded
        local Ray of `workers` CPUs."""
        from modnet_batch.execution.ray_join import ray_session

        if already:
            return nullcontext()
        if self.address:
            self.say(f"joining Ray at {self.address}")
            modules = {"py_modules": [str(Path(modnet_batch.__file__).parent)]}
            return ray_session(self.address, runtime_env=modules)
        cpus = self.workers or available_cpus()
        self.say(f"starting Ray ({cpus} CPUs)")
        return ray_session(None, num_cpus=cpus)


def _results(ref: Any) -> list[Loaded]:
    import ray

    result: list[Loaded] = ray.get(ref)
    return result


def _cluster_cpus() -> int:
    import ray

    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    cpus = sum(int(n["Resources"].get("CPU", 0)) for n in nodes if n.get("Alive"))
    if cpus < 1:
        raise ModnetBatchError(
            "the Ray cluster has no CPUs for ingest's tasks; start nodes with CPUs (`ray start "
            "--num-cpus N`) or ingest without --backend ray"
        )
    return cpus


BACKENDS = ("auto", "local", "ray")


def choose_backend(backend: str, address: str | None) -> str:
    """`local` or `ray` for `ingest --backend auto|local|ray`: auto is Ray when a cluster is
    named (--address, RAY_ADDRESS), else local threads (no Ray start-up on a laptop)."""
    if backend not in BACKENDS:
        raise ModnetBatchError(f"--backend {backend}: expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "ray" if address else "local"
    return backend
