"""Run work units on Ray: one actor per device (GPU, custom accelerator unit, or CPU worker).

The driver hands out unit descriptors (a shard file and its row groups), never pixels; each actor
reads its unit itself. Dispatch
is dynamic with a bounded number of shards in flight per actor, so faster devices take more
shards. A dead actor's shards go back to the queue (bounded retries) and Ray restarts the actor;
an actor whose node is gone is lost for the job (it is pinned there), and its work goes to the
actors on the other nodes.
"""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import ray
from ray.exceptions import ActorUnschedulableError, RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from modnet_batch.errors import ModnetBatchError, StorageError
from modnet_batch.execution import signals
from modnet_batch.execution.backend import (
    BackendReport,
    OnImages,
    OnPhase,
    OnResult,
    Units,
    no_phase,
)
from modnet_batch.execution.processor import UnitProcessor
from modnet_batch.execution.resources import cpu_split, device_cpu_share
from modnet_batch.execution.shard_check import ShardUnreadable
from modnet_batch.execution.worker_spec import WorkerSpec
from modnet_batch.model.shipped import ShippedModel, materialize
from modnet_batch.options import JobConfig
from modnet_batch.results import RunDir, UnitResult, WorkUnit
from modnet_batch.storage import AnyPath, argument, atomic_write_bytes, location

log = logging.getLogger(__name__)
# An actor that died: RayActorError (ActorDiedError, ActorUnavailableError), or, once Ray knows
# that the node it is pinned to is gone, ActorUnschedulableError (not a RayActorError)
ACTOR_GONE = (RayActorError, ActorUnschedulableError)
ACTOR_RESTARTS = 4  # Ray restarts a crashed actor process this many times
POLL_S = 0.5
READY_TIMEOUT_S = 300.0  # loading a model on a busy node can be slow; never wait forever


@dataclass(frozen=True)
class Setup:
    """What every worker of a job checks on its own node before it opens the model."""

    probe: str  # a file in the run directory that only a node seeing that directory sees
    results_via: str  # auto | storage | driver (JobConfig.results_via)


class ShardWorker:
    """A Ray actor holding one inference session on one device; processes whole shards.

    The model comes with the job (`shipped`, through the object store: no shared model cache
    needed). Its per-image files are written into the run directory when this node sees it, else
    (or with `--results-via driver`) sent back with each unit's result for the driver to write.
    """

    def __init__(self, spec: WorkerSpec, setup: Setup, shipped: ShippedModel) -> None:
        ctx = ray.get_runtime_context()
        # hostnames repeat when several nodes share a machine; the node id does not
        self.node = f"{ray.util.get_node_ip_address()}:{ctx.get_node_id()[:6]}"  # type: ignore[no-untyped-call]
        sees = location(setup.probe).is_file()
        if setup.results_via == "storage" and not sees:
            raise ModnetBatchError(
                f"worker {spec.label} on node {self.node} cannot see the run directory "
                f"{spec.run_dir} (no shared file system there); use --results-via driver or "
                "auto, or an --out that every node mounts"
            )
        self.results_via = "storage" if sees and setup.results_via != "driver" else "driver"
        model = str(materialize(shipped, spec.engine.model))
        self.spec = replace(
            spec,
            engine=replace(spec.engine, model=model),
            return_files=self.results_via == "driver",
        )
        self.processor = UnitProcessor(self.spec)

    def info(self) -> dict[str, Any]:
        ctx = ray.get_runtime_context()
        return {
            "label": self.spec.label,
            "node": self.node,
            "node_id": ctx.get_node_id(),
            "pid": os.getpid(),
            "accelerators": {k: list(v) for k, v in ctx.get_accelerator_ids().items() if v},
            "device_index": self.spec.engine.device_index,
            "threads": self.spec.engine.threads,
            "cpus": self.spec.cpus,
            "decode_threads": self.spec.decode_threads,
            "batch_size": self.processor.batch_size,
            "batch_tuning": self.processor.batch_tuning,
            "provider": self.processor.session.runs_on,
            "engine": self.spec.engine_name,
            "precision": self.spec.engine.precision,
            "session_seconds": self.processor.session_seconds,
            "results_via": self.results_via,
            "decoder": self.processor.decoder_name,
            "model": self.spec.engine.model,  # the file it opened: the job's, or a shipped copy
        }

    def process(self, task: WorkUnit) -> UnitResult:
        result = self.processor.process(task)
        result.node = self.node
        return result

    def progress(self) -> tuple[int, str | None]:
        """Images finished by this process, and the shard it is running (None between shards)."""
        return self.processor.images_done, self.processor.running


@dataclass(frozen=True)
class ActorPlan:
    """One actor to start: its spec and the Ray options that pin it."""

    spec: WorkerSpec
    options: dict[str, Any]


def _alive_nodes() -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return [n for n in nodes if n.get("Alive")]


def plan_actors(job: JobConfig, base: WorkerSpec) -> list[ActorPlan]:
    """One actor per device per instance; CPU workers fill each node without oversubscribing."""
    nodes = _alive_nodes()
    plans: list[ActorPlan] = []
    inst = job.instances
    if job.device == "cpu":
        threads = job.threads
        if threads is None and job.workers is not None:
            # --workers alone: spread the cluster's cores over that many workers
            total = sum(int(n["Resources"].get("CPU", 0)) for n in nodes)
            threads = max(1, total // job.workers)
        for node in nodes:
            cpus = int(node["Resources"].get("CPU", 0))
            if cpus == 0:
                continue
            split = cpu_split(None, threads, cpus)
            short = node["NodeManagerAddress"] + ":" + node["NodeID"][:6]
            for w in range(split.workers):
                engine = replace(base.engine, threads=split.threads)
                spec = replace(
                    base,
                    engine=engine,
                    label=f"cpu{w}@{short}",
                    decode_threads=job.decode_threads or 1,
                    cpus=float(split.threads),
                )
                opts: dict[str, Any] = {
                    "num_cpus": split.threads,
                    "scheduling_strategy": NodeAffinitySchedulingStrategy(
                        node["NodeID"], soft=False
                    ),
                }
                plans.append(ActorPlan(spec, opts))
        if job.workers is not None:
            if job.workers > len(plans):
                raise ModnetBatchError(
                    f"asked for {job.workers} CPU workers but the cluster has room for "
                    f"{len(plans)} at these threads per worker; lower --workers or --threads"
                )
            plans = plans[: job.workers]
        return plans
    resource = "GPU" if job.device == "gpu" else job.device
    remaining = job.workers  # --workers: the first N devices, in node order
    for node in nodes:
        count = int(node["Resources"].get(resource, 0))
        if remaining is not None:
            count = min(count, remaining)
            remaining -= count
        if count == 0:
            continue
        short = node["NodeManagerAddress"] + ":" + node["NodeID"][:6]
        # the devices used on this node share its CPUs: each actor decodes and scores for its
        # device with that many threads (--decode-threads: that many, and as many CPUs asked)
        share: float = device_cpu_share(node["Resources"].get("CPU", 0), count) / inst
        decode_threads = job.decode_threads or max(1, int(share))
        actor_cpus = float(job.decode_threads) if job.decode_threads else share
        for index in range(count):
            for i in range(inst):
                label = (
                    f"{resource.lower()}{index}.{i}@{short}"
                    if inst > 1
                    else f"{resource.lower()}{index}@{short}"
                )
                # a GPU is chosen by Ray (CUDA_VISIBLE_DEVICES), so inside the actor it is device 0;
                # a custom accelerator unit gets its index from us, distinct per node
                engine = replace(
                    base.engine,
                    device_index=0 if resource == "GPU" else index,
                    threads=job.threads or 1,
                )
                spec = replace(
                    base,
                    engine=engine,
                    label=label,
                    decode_threads=decode_threads,
                    cpus=actor_cpus,
                )
                opts = {
                    "num_cpus": actor_cpus,
                    "scheduling_strategy": NodeAffinitySchedulingStrategy(
                        node["NodeID"], soft=False
                    ),
                }
                if resource == "GPU":
                    opts["num_gpus"] = 1 / inst
                else:
                    opts["resources"] = {resource: 1 / inst}
                plans.append(ActorPlan(spec, opts))
    _check_fits(plans, nodes)
    if not plans:
        have = sorted({k for n in nodes for k in n["Resources"] if not k.startswith("node:")})
        raise ModnetBatchError(
            f"the Ray cluster has no {resource!r} resource (it has: {', '.join(have)}); "
            "use --device cpu, or start nodes that advertise it"
        )
    return plans


def _check_fits(plans: list[ActorPlan], nodes: list[dict[str, Any]]) -> None:
    """Refuse a plan whose actors cannot all be placed: waiting for them would hang forever."""
    need: dict[tuple[str, str], float] = {}
    for plan in plans:
        node = plan.options["scheduling_strategy"].node_id
        wanted = {"CPU": plan.options.get("num_cpus", 0), "GPU": plan.options.get("num_gpus", 0)}
        wanted.update(plan.options.get("resources", {}))
        for key, amount in wanted.items():
            need[(node, key)] = need.get((node, key), 0.0) + amount
    for node in nodes:
        for (node_id, key), amount in need.items():
            have = float(node["Resources"].get(key, 0.0))
            if node_id == node["NodeID"] and amount > have + 1e-9:
                raise ModnetBatchError(
                    f"node {node['NodeManagerAddress']} has {have:g} {key} but the job's actors "
                    f"there need {amount:g}; lower --instances, --threads, --decode-threads or "
                    "--workers"
                )


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
            init_ray(job)
            signals.rearm()  # ray.init took SIGTERM over: a stop must still unwind through here
        probe: AnyPath | None = None
        try:
            report = BackendReport()
            plans = plan_actors(job, base)
            nodes = len({p.options["scheduling_strategy"].node_id for p in plans})
            on_phase(f"starting {len(plans)} workers on {nodes} node(s)")
            # the model once into the object store; each node fetches it once
            shipped = ray.put(ShippedModel.read(base.engine.model))
            probe = RunDir(base.run_dir).probe(uuid.uuid4().hex)
            atomic_write_bytes(probe, b"")
            setup = Setup(argument(probe), job.results_via)  # a URI as given
            remote_cls: Any = ray.remote(ShardWorker)
            actors = [
                remote_cls.options(
                    max_restarts=ACTOR_RESTARTS,
                    max_task_retries=0,
                    # every queued shard gets a thread, plus one so progress polls never wait
                    max_concurrency=job.shards_in_flight + 1,
                    **p.options,
                ).remote(p.spec, setup, shipped)
                for p in plans
            ]
            infos = _wait_ready(actors, plans, on_phase)
            on_phase("running")
            report.workers = infos
            report.startup_seconds = time.perf_counter() - t0
            tasks = units(len(actors))  # sized for the workers that came up
            _dispatch(job, actors, plans, tasks, on_result, on_images, report)
            for actor in actors:
                ray.kill(actor)
            return report
        finally:
            if probe is not None:
                probe.unlink(missing_ok=True)
            if owns_ray:
                ray.shutdown()


def _wait_ready(
    actors: list[Any], plans: list[ActorPlan], on_phase: OnPhase = no_phase
) -> list[dict[str, Any]]:
    """Wait for every actor to load its model; name the ones that never came up."""
    refs = [a.info.remote() for a in actors]
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
        except RayActorError as exc:
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


def init_ray(job: JobConfig) -> None:
    """Start an embedded single-node Ray on loopback, or join the cluster we run inside."""
    if job.address:
        ray.init(address=job.address, logging_level=logging.WARNING)
        return
    start_local_ray(include_dashboard=job.dashboard)


def start_local_ray(**kwargs: Any) -> None:
    """An embedded Ray private to this process, every Ray process bound to loopback.

    Ray's single-machine mode (its default on macOS/Windows) keeps the node on 127.0.0.1 instead of
    the machine's network address; extra keyword arguments go to `ray.init` (num_cpus, num_gpus,
    resources for fake accelerators in tests).
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray._private.ray_constants.ENABLE_RAY_CLUSTER = False
    # Ray says on every start that it uses the token it found (~/.ray/auth_token): news to no one
    # for a private, loopback-only Ray; its other warnings (auth disabled, ...) still show
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
        _drop_token_notice
    )
    kwargs.setdefault("include_dashboard", False)
    ray.init(address="local", logging_level=logging.WARNING, log_to_driver=True, **kwargs)


@dataclass
class _Slot:
    """The driver's view of one actor: what it holds, and whether it can take work."""

    actor: Any
    label: str
    node: str = ""  # its node as the plan pinned it ("127.0.0.1:abcdef")
    # up | restarting (Ray is restarting its process) | dead (gave up on it) | lost (its node is
    # gone: pinned there with soft=False, Ray cannot place it anywhere else)
    state: str = "up"
    # (its death count at dispatch, shard name), in dispatch order
    inflight: list[tuple[int, str]] = field(default_factory=list)
    running: str | None = None  # the shard holding its loop, as last polled
    deaths: int = 0
    seen: int = 0  # images its progress counter reported (a restarted process starts at 0)
    ping: Any = None  # an info() call while restarting: it returns once the actor is back
    progress: tuple[Any, int] | None = None  # an outstanding progress() call, and its process
    down_since: float = 0.0


def _drop_token_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Token authentication is enabled")


def _dispatch(
    job: JobConfig,
    actors: list[Any],
    plans: list[ActorPlan],
    tasks: list[WorkUnit],
    on_result: OnResult,
    on_images: OnImages,
    report: BackendReport,
) -> None:
    """Hand shards to actors as they free up; on an actor's death, charge a retry only to the
    shard it was running (the others it held go back to the queue as they were), give it no work
    while Ray restarts it, and work again once it answers. An actor whose node is gone is lost
    (Ray answers ActorUnschedulableError: it is pinned there): never waited for again."""
    queue: deque[WorkUnit] = deque(tasks)
    # ref -> (actor, task, the actor's death count when it was sent: which process got it)
    inflight: dict[Any, tuple[int, WorkUnit, int]] = {}
    slots = [
        _Slot(a, p.spec.label, p.spec.label.partition("@")[2])
        for a, p in zip(actors, plans, strict=True)
    ]
    charged: dict[tuple[int, int], str] = {}  # (actor, process) -> the shard charged for its death
    stats = DispatchStats(len(slots))
    try:
        _loop(job, slots, queue, inflight, charged, on_result, on_images, report, stats)
    finally:
        report.dispatch = stats.to_dict()


def _loop(
    job: JobConfig,
    slots: list[_Slot],
    queue: deque[WorkUnit],
    inflight: dict[Any, tuple[int, WorkUnit, int]],
    charged: dict[tuple[int, int], str],
    on_result: OnResult,
    on_images: OnImages,
    report: BackendReport,
    stats: DispatchStats,
) -> None:
    while queue or inflight:
        signals.check()  # a SIGTERM or Ctrl-C stops the job here, between results
        t = time.perf_counter()
        for i in sorted(range(len(slots)), key=lambda k: len(slots[k].inflight)):
            slot = slots[i]
            while slot.state == "up" and queue and len(slot.inflight) < job.shards_in_flight:
                task = queue.popleft()
                inflight[slot.actor.process.remote(task)] = (i, task, slot.deaths)
                slot.inflight.append((slot.deaths, task.name))
                stats.dispatched(slot)
        t = stats.add("dispatch", t)
        if not inflight and not any(s.state == "restarting" for s in slots):
            lost = sum(s.state == "lost" for s in slots)
            why = f"no worker left alive ({lost} lost with their nodes)" if lost else None
            for task in queue:
                report.failed[task.name] = why or "no worker left alive"
            return
        if inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=POLL_S)
        else:  # every actor is restarting: wait for one to come back
            ready = []
            time.sleep(POLL_S)
        t = arrived = stats.add("wait_results", t)
        stats.polled(_poll_progress(slots, on_images, stats.poll_due()))
        _check_restarts(slots, report)
        t = stats.add("progress", t)
        for ref in ready:
            i, task, gen = inflight.pop(ref)
            slot = slots[i]
            # what the same process held, in dispatch order, this task among them
            held = [name for g, name in slot.inflight if g == gen]
            slot.inflight.remove((gen, task.name))
            try:
                result: UnitResult = ray.get(ref)
            except (*ACTOR_GONE, RayTaskError) as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, StorageError):  # the run dir cannot take more: stop
                    raise StorageError(str(cause)) from None
                if isinstance(cause, ShardUnreadable):
                    report.failed[task.name] = str(cause)  # deterministic: no retry
                    continue
                if isinstance(exc, ACTOR_GONE):
                    if gen == slot.deaths:  # the first sign of this process's death
                        # the shard it was running: as last polled, else the oldest it held
                        charged[(i, gen)] = slot.running if slot.running in held else held[0]
                        _went_down(slot)
                        if isinstance(exc, ActorUnschedulableError):
                            _lost(slot, slots, report, exc)
                    if charged.get((i, gen)) != task.name and task.requeues < ACTOR_RESTARTS:
                        # it waited on the dead process, not running: back as it was (bounded,
                        # so that a shard killing every process it reaches still fails)
                        queue.appendleft(replace(task, requeues=task.requeues + 1))
                        continue
                    charged.pop((i, gen), None)
                reason = f"{type(exc).__name__} on {slot.label}: {str(exc).splitlines()[0][:200]}"
                if task.attempt < job.max_retries:
                    report.retries += 1
                    log.warning("shard %s: %s; retrying", task.name, reason)
                    queue.append(replace(task, attempt=task.attempt + 1))
                else:
                    report.failed[task.name] = reason
                continue
            on_result(result)
            stats.finished(slot, arrived)
        stats.add("record", t)
    _poll_progress(slots, on_images, False, POLL_S)  # the answers still on their way
    _poll_progress(slots, on_images, True, POLL_S)  # and the final counts


class DispatchStats:
    """The driver's own cost of the shard loop, for summary.json `dispatch`: its process CPU
    (every thread: Ray's client, the progress display, writing markers) per shard, where its
    wall time went (dispatching, waiting for results, polling progress, recording results), and
    the latency from a shard's result reaching the driver to the next dispatch to the actor that
    sent it (what a fast device waits on the driver, queued shards aside). Constant memory: sums,
    and a bounded sample of the gaps."""

    SAMPLE = 4096
    STAGES = ("dispatch", "wait_results", "progress", "record")

    def __init__(self, actors: int) -> None:
        self.actors = actors
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()
        self.stages = dict.fromkeys(self.STAGES, 0.0)
        self.results = 0
        self.dispatches = 0
        self.polls = 0
        self.last_poll = 0.0
        self.gaps: list[float] = []  # seconds, a uniform sample of at most SAMPLE
        self._rng = random.Random(0)
        self.gap_count = 0
        self.gap_sum = 0.0
        self.gap_max = 0.0
        self._freed: dict[int, float] = {}  # id(slot) -> when its last result was recorded

    def add(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.stages[stage] += now - since
        return now

    def poll_due(self) -> bool:
        """Progress polls (a call to every actor) at most every POLL_S, not once per result:
        their cost would otherwise grow with actors x shards."""
        return time.perf_counter() - self.last_poll >= POLL_S

    def polled(self, did: bool) -> None:
        if did:
            self.polls += 1
            self.last_poll = time.perf_counter()

    def finished(self, slot: _Slot, arrived: float) -> None:
        """A shard's result, which reached the driver at `arrived` (perf_counter), is recorded:
        the gap runs from then to the next dispatch to that actor."""
        self.results += 1
        self._freed[id(slot)] = arrived

    def dispatched(self, slot: _Slot) -> None:
        self.dispatches += 1
        freed = self._freed.pop(id(slot), None)
        if freed is None:
            return
        gap = time.perf_counter() - freed
        self.gap_count += 1
        self.gap_sum += gap
        self.gap_max = max(self.gap_max, gap)
        if len(self.gaps) < self.SAMPLE:
            self.gaps.append(gap)
        else:  # reservoir sampling: every gap equally likely to be kept
            k = self._rng.randrange(self.gap_count)
            if k < self.SAMPLE:
                self.gaps[k] = gap

    def to_dict(self) -> dict[str, Any]:
        cpu = time.process_time() - self.cpu0
        wall = time.perf_counter() - self.wall0
        n = max(self.results, 1)
        ordered = sorted(self.gaps)

        def pct(q: float) -> float | None:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3 if ordered else None

        busy = wall - self.stages["wait_results"]
        return {
            "actors": self.actors,
            "shards": self.results,
            "dispatches": self.dispatches,
            "progress_polls": self.polls,
            "wall_s": wall,
            "driver_cpu_s": cpu,
            "driver_cpu_per_shard_ms": cpu / n * 1e3,
            "driver_busy_per_shard_ms": busy / n * 1e3,
            "stages_s": {**self.stages, "other": max(0.0, wall - sum(self.stages.values()))},
            "result_to_dispatch_ms": {
                "count": self.gap_count,
                "mean": self.gap_sum / self.gap_count * 1e3 if self.gap_count else None,
                "p50": pct(0.5),
                "p90": pct(0.9),
                "p99": pct(0.99),
                "max": self.gap_max * 1e3 if self.gap_count else None,
            },
        }


def _went_down(slot: _Slot) -> None:
    """The actor died: Ray restarts it (up to ACTOR_RESTARTS times), then it is gone."""
    slot.deaths += 1
    slot.seen = 0
    slot.ping = None
    slot.progress = None
    slot.running = None
    slot.down_since = time.monotonic()
    slot.state = "restarting" if slot.deaths <= ACTOR_RESTARTS else "dead"
    log.warning("worker %s died; waiting for Ray to restart it (death %d)", slot.label, slot.deaths)


def _lost(slot: _Slot, slots: list[_Slot], report: BackendReport, exc: BaseException) -> None:
    """The actor's node is gone (Ray says it cannot place the actor: it is pinned to that node).
    It never comes back in this job: it gets no more work, summary.json's workers[] entry says
    `lost`, and its shards (already back in the queue) go to the actors on the other nodes."""
    slot.state = "lost"
    slot.ping = None
    reason = f"node {slot.node} is gone ({type(exc).__name__})"
    for entry in report.workers:
        if entry.get("label") == slot.label:
            entry["lost"] = reason
    left = sum(s.state in ("up", "restarting") for s in slots)
    log.warning(
        "worker %s is lost with its node %s; its work goes to the %d other worker(s)",
        slot.label,
        slot.node,
        left,
    )


def _check_restarts(slots: list[_Slot], report: BackendReport) -> None:
    """Ping each restarting actor; one that answers takes work again (its new process noted),
    one that stays away past READY_TIMEOUT_S is given up."""
    for slot in slots:
        if slot.state != "restarting":
            continue
        if slot.ping is None:
            slot.ping = slot.actor.info.remote()
        ready, _ = ray.wait([slot.ping], timeout=0)
        if ready:
            try:
                info = ray.get(slot.ping)
            except ActorUnschedulableError as exc:  # its node is gone: no restart can come
                _lost(slot, slots, report, exc)
                continue
            except RayActorError:
                info = None  # not back yet (or gone): ask again, until the timeout
            slot.ping = None
            if info is not None:
                slot.state = "up"
                for entry in report.workers:  # summary.json: how often it came back, and as what
                    if entry.get("label") == slot.label:
                        entry["restarts"] = entry.get("restarts", 0) + 1
                        entry["pid"] = info.get("pid")
                log.warning("worker %s is back (pid %s)", slot.label, info.get("pid"))
                continue
        if time.monotonic() - slot.down_since > READY_TIMEOUT_S:
            slot.state = "dead"
            log.warning("worker %s did not come back; its work goes to the others", slot.label)


def _poll_progress(
    slots: list[_Slot], on_images: OnImages, ask: bool = True, wait_s: float = 0.0
) -> bool:
    """Ask every live actor without a question outstanding how many images it finished and
    which shard it runs (when `ask`), and take the answers that came (waiting up to `wait_s`):
    the shard loop never stalls on a busy actor's answer. Returns whether it asked."""
    asked = False
    if ask:
        for slot in slots:
            if slot.state == "up" and slot.progress is None:
                slot.progress = (slot.actor.progress.remote(), slot.deaths)
                asked = True
    pending = {slot.progress[0]: slot for slot in slots if slot.progress is not None}
    if not pending:
        return asked
    ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=wait_s)
    for ref in ready:
        slot = pending[ref]
        assert slot.progress is not None
        gen, slot.progress = slot.progress[1], None
        try:
            done, running = ray.get(ref)
        except ACTOR_GONE:  # its next shard's result says how (_dispatch handles it there)
            continue
        if gen != slot.deaths:  # the answer of a process that died since: stale
            continue
        slot.running = running
        if done > slot.seen:
            on_images(slot.label, done - slot.seen)
            slot.seen = done
    return asked
