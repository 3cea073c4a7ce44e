"""Run work units on Ray: one actor per device (GPU, custom accelerator unit, or CPU worker).

The driver hands out unit descriptors (a shard file and its row groups), never pixels; each actor
reads its unit itself (ray_worker). Which actors start where: ray_plan; handing out units,
deaths and restarts: ray_dispatch; joining Ray and keeping its log lines off the terminal:
ray_join. A dead actor's units go back to the queue (bounded retries) and Ray restarts the actor;
an actor whose node is gone is lost for the job (it is pinned there), and its work goes to the
actors on the other nodes.
"""

from __future__ import annotations

import time
import uuid
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from modnet_batch.errors import JobInterrupted, ModnetBatchError
from modnet_batch.execution import signals
from modnet_batch.execution.backend import (
    BackendReport,
    OnImages,
    OnPhase,
    OnResult,
    Units,
    no_phase,
)
from modnet_batch.execution.ray_dispatch import ACTOR_RESTARTS, POLL_S, READY_TIMEOUT_S, dispatch
from modnet_batch.execution.ray_join import RAY_LOG, ray_session
from modnet_batch.execution.ray_plan import ActorPlan, plan_actors
from modnet_batch.execution.ray_worker import Setup, UnitWorker
from modnet_batch.execution.worker_spec import WorkerSpec
from modnet_batch.model.shipped import ShippedModel
from modnet_batch.options import JobConfig
from modnet_batch.results import RunDir
from modnet_batch.storage import AnyPath, argument, atomic_write_bytes, location


class RayBackend:
    """Embedded local Ray when no address is given, else the cluster the driver runs in."""

    def run(
        self,
        job: JobConfig,
        base: WorkerSpec,
        units: Units,
        on_result: OnResult,
        on_images: OnImages,
        on_phase: OnPhase = no_phase,
    ) -> BackendReport:
        t0 = time.perf_counter()
        owns_ray = not ray.is_initialized()
        if owns_ray:
            on_phase(f"joining Ray at {job.address}" if job.address else "starting Ray")
        joined = (
            ray_session(job.address, log_file=_log_file(base), include_dashboard=job.dashboard)
            if owns_ray
            else nullcontext(None)
        )
        with joined as session:
            try:
                report = _run(job, base, units, on_result, on_images, on_phase, t0)
            except (ModnetBatchError, RayActorError) as exc:
                if session is not None and not isinstance(exc, JobInterrupted):
                    exc.add_note(session.where())  # printed under the error's line
                raise
            if report.failed and session is not None:
                report.logs = session.where()
            return report


def _log_file(base: WorkerSpec) -> Path | None:
    """The run directory's Ray log when the run directory is local (else a temp file)."""
    root = location(base.run_dir)
    return root / RAY_LOG if isinstance(root, Path) else None


def _run(
    job: JobConfig,
    base: WorkerSpec,
    units: Units,
    on_result: OnResult,
    on_images: OnImages,
    on_phase: OnPhase,
    t0: float,
) -> BackendReport:
    plans = plan_actors(job, base)
    nodes = len({p.node_id for p in plans})
    on_phase(f"starting {len(plans)} workers on {nodes} node(s)")
    # the model once into the object store, each node fetching it once; this reference, held
    # for the whole job, keeps it there for actors that Ray restarts (they are sent it again)
    shipped = ray.put(ShippedModel.read(base.engine.model))
    probe: AnyPath = RunDir(base.run_dir).probe(uuid.uuid4().hex)
    atomic_write_bytes(probe, b"")
    try:
        actors = _start_actors(job, plans, Setup(argument(probe), job.results_via))  # a URI
        report = BackendReport()
        report.workers = _wait_ready(actors, plans, shipped, on_phase)
        on_phase("running")
        report.startup_seconds = time.perf_counter() - t0
        tasks = units(len(actors))  # sized for the workers that came up
        labels = [p.spec.label for p in plans]
        dispatch(job, actors, labels, tasks, on_result, on_images, report, model=shipped)
        for actor in actors:
            ray.kill(actor)
        return report
    finally:
        probe.unlink(missing_ok=True)


def _start_actors(job: JobConfig, plans: list[ActorPlan], setup: Setup) -> list[Any]:
    remote_cls: Any = ray.remote(UnitWorker)
    return [
        remote_cls.options(
            max_restarts=ACTOR_RESTARTS,
            max_task_retries=0,
            # every unit it may hold gets a thread, plus one so progress polls never wait
            max_concurrency=job.shards_in_flight + 1,
            **p.options,
        ).remote(p.spec, setup)
        for p in plans
    ]


def _wait_ready(
    actors: list[Any], plans: list[ActorPlan], model: Any, on_phase: OnPhase = no_phase
) -> list[dict[str, Any]]:
    """Wait for every actor to open the model (`model`: its object-store reference); name the
    ones that never came up."""
    refs = [a.open.remote(model) for a in actors]
    deadline = time.monotonic() + READY_TIMEOUT_S
    pending = refs
    ready = -1
    while pending and time.monotonic() < deadline:
        signals.check()  # a stop while models load is not held up for minutes
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=POLL_S)
        if len(refs) - len(pending) != ready:
            ready = len(refs) - len(pending)
            on_phase(f"loading the model: {ready}/{len(refs)} workers ready")
    if pending:
        late = ", ".join(plans[refs.index(r)].spec.label for r in pending)
        raise ModnetBatchError(
            f"{len(pending)} worker(s) did not start within {READY_TIMEOUT_S:.0f} s ({late}); "
            "the cluster may lack the resources they need (check `ray status`)"
        )
    infos = []
    for plan, ref in zip(plans, refs, strict=True):
        try:
            infos.append(ray.get(ref))
        except (RayActorError, RayTaskError) as exc:
            raise ModnetBatchError(
                f"worker {plan.spec.label} could not start: {_last_error_line(exc)}"
            ) from None
    return infos


def _last_error_line(exc: BaseException) -> str:
    """The exception a worker's constructor raised, as its one line (Ray wraps it in a
    traceback), without the exception's module path."""
    lines = [ln.strip() for ln in str(getattr(exc, "error_msg", "") or exc).splitlines()]
    found = [ln for ln in lines if ln and not ln.startswith(("File ", "^", "(", "Traceback"))]
    last = found[-1] if found else type(exc).__name__
    kind, sep, text = last.partition(": ")
    return text if sep and kind.rsplit(".", 1)[-1] == "ModnetBatchError" else last
