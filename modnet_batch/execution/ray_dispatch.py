"""The dispatch loop: work units to actors as they free up, actor deaths and restarts, and the
actors' progress.

Every ready actor gets a unit before any gets a second (`fill_order`), so a small job keeps every
worker busy; then up to `job.shards_in_flight` each, so a fast device never waits on the driver.
On an actor's death only the unit it was running is charged a retry (the others it held go back
to the queue as they were); it gets no work while Ray restarts it, and works again once it
answers. An actor whose node is gone is lost (Ray answers ActorUnschedulableError: it is pinned
there) and never waited for again.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import ray
from ray.exceptions import ActorUnschedulableError, RayActorError, RayTaskError

from modnet_batch.errors import StorageError
from modnet_batch.execution import signals
from modnet_batch.execution.backend import BackendReport, OnImages, OnResult
from modnet_batch.execution.ray_dispatch_stats import DispatchStats
from modnet_batch.execution.ray_worker import NotOpen
from modnet_batch.execution.shard_check import ShardUnreadable
from modnet_batch.execution.units import fill_order
from modnet_batch.options import JobConfig
from modnet_batch.results import UnitResult, WorkUnit

log = logging.getLogger(__name__)
# An actor that died: RayActorError (ActorDiedError, ActorUnavailableError), or, once Ray knows
# that the node it is pinned to is gone, ActorUnschedulableError (not a RayActorError)
ACTOR_GONE = (RayActorError, ActorUnschedulableError)
ACTOR_RESTARTS = 4  # Ray restarts a crashed actor process this many times
POLL_S = 0.5
READY_TIMEOUT_S = 300.0  # loading a model on a busy node can be slow; never wait forever


@dataclass
class _Slot:
    """The driver's view of one actor: what it holds, and whether it can take work."""

    actor: Any
    label: str
    node: str = ""  # its node as the plan pinned it ("127.0.0.1:abcdef")
    # up | restarting (Ray is restarting its process) | dead (gave up on it) | lost (its node is
    # gone: pinned there with soft=False, Ray cannot place it anywhere else)
    state: str = "up"
    # (its death count at dispatch, unit name), in dispatch order
    inflight: list[tuple[int, str]] = field(default_factory=list)
    running: str | None = None  # the unit holding its loop, as last polled
    deaths: int = 0
    seen: int = 0  # images its progress counter reported (a restarted process starts at 0)
    ping: Any = None  # an open() call while restarting: it returns once the actor is back
    progress: tuple[Any, int] | None = None  # an outstanding progress() call, and its process
    down_since: float = 0.0


def dispatch(
    job: JobConfig,
    actors: list[Any],
    labels: list[str],
    tasks: list[WorkUnit],
    on_result: OnResult,
    on_images: OnImages,
    report: BackendReport,
    model: Any = None,
) -> None:
    """Run `tasks` on `actors` (labelled `labels`, "cpu0@<node>"), the results to `on_result`,
    the unit names that failed every retry into `report.failed`, the loop's own cost into
    `report.dispatch`. `model` (the job's model in the object store) opens a restarted actor."""
    slots = [
        _Slot(a, label, label.partition("@")[2]) for a, label in zip(actors, labels, strict=True)
    ]
    loop = _Dispatcher(job, slots, tasks, on_result, on_images, report, model)
    try:
        loop.run()
    finally:
        report.dispatch = loop.stats.to_dict()


class _Dispatcher:
    def __init__(
        self,
        job: JobConfig,
        slots: list[_Slot],
        tasks: list[WorkUnit],
        on_result: OnResult,
        on_images: OnImages,
        report: BackendReport,
        model: Any,
    ) -> None:
        self.job, self.slots, self.report, self.model = job, slots, report, model
        self.on_result, self.on_images = on_result, on_images
        self.queue: deque[WorkUnit] = deque(tasks)
        # ref -> (actor, task, the actor's death count when it was sent: which process got it)
        self.inflight: dict[Any, tuple[int, WorkUnit, int]] = {}
        # (actor, process) -> the unit charged for that process's death
        self.charged: dict[tuple[int, int], str] = {}
        self.stats = DispatchStats(len(slots))

    def run(self) -> None:
        stats = self.stats
        while self.queue or self.inflight:
            signals.check()  # a SIGTERM or Ctrl-C stops the job here, between results
            t = time.perf_counter()
            self._fill()
            t = stats.add("dispatch", t)
            if self._stranded():
                return
            ready = self._wait()
            t = arrived = stats.add("wait_results", t)
            stats.polled(_poll_progress(self.slots, self.on_images, stats.poll_due(POLL_S)))
            _check_restarts(self.slots, self.report, self.model)
            t = stats.add("progress", t)
            for ref in ready:
                self._take(ref, arrived)
            stats.add("record", t)
        _poll_progress(self.slots, self.on_images, False, POLL_S)  # the answers on their way
        _poll_progress(self.slots, self.on_images, True, POLL_S)  # and the final counts

    def _fill(self) -> None:
        held = [len(s.inflight) if s.state == "up" else None for s in self.slots]
        for i in fill_order(held, len(self.queue), self.job.shards_in_flight):
            slot, task = self.slots[i], self.queue.popleft()
            self.inflight[slot.actor.process.remote(task)] = (i, task, slot.deaths)
            slot.inflight.append((slot.deaths, task.name))
            self.stats.dispatched(slot)

    def _stranded(self) -> bool:
        """Nothing runs and no actor can come back: the queue fails (True), the loop ends."""
        if self.inflight or any(s.state == "restarting" for s in self.slots):
            return False
        lost = sum(s.state == "lost" for s in self.slots)
        why = f"no worker left alive ({lost} lost with their nodes)" if lost else None
        for task in self.queue:
            self.report.failed[task.name] = why or "no worker left alive"
        return True

    def _wait(self) -> list[Any]:
        if self.inflight:
            ready, _ = ray.wait(list(self.inflight), num_returns=1, timeout=POLL_S)
            return list(ready)
        time.sleep(POLL_S)  # every actor is restarting: wait for one to come back
        return []

    def _take(self, ref: Any, arrived: float) -> None:
        i, task, gen = self.inflight.pop(ref)
        slot = self.slots[i]
        # what the same process held, in dispatch order, this task among them
        held = [name for g, name in slot.inflight if g == gen]
        slot.inflight.remove((gen, task.name))
        try:
            result: UnitResult = ray.get(ref)
        except (*ACTOR_GONE, RayTaskError) as exc:
            self._failed(i, task, gen, held, exc)
            return
        self.on_result(result)
        self.stats.finished(slot, arrived)

    def _failed(
        self, i: int, task: WorkUnit, gen: int, held: list[str], exc: BaseException
    ) -> None:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, StorageError):  # the run dir cannot take more: stop
            raise StorageError(str(cause)) from None
        if isinstance(cause, ShardUnreadable):
            self.report.failed[task.name] = str(cause)  # deterministic: no retry
            return
        if isinstance(cause, NotOpen) and task.requeues < ACTOR_RESTARTS:
            # a process that Ray restarted before this driver heard of the death: not run, so
            # back uncharged, and the actor is opened again before it takes more
            if gen == self.slots[i].deaths:
                _went_down(self.slots[i])
            self.queue.appendleft(replace(task, requeues=task.requeues + 1))
            return
        if isinstance(exc, ACTOR_GONE) and self._back_as_it_was(i, task, gen, held, exc):
            return
        slot = self.slots[i]
        reason = f"{type(exc).__name__} on {slot.label}: {str(exc).splitlines()[0][:200]}"
        if task.attempt < self.job.max_retries:
            self.report.retries += 1
            log.warning("shard %s: %s; retrying", task.name, reason)
            self.queue.append(replace(task, attempt=task.attempt + 1))
        else:
            self.report.failed[task.name] = reason

    def _back_as_it_was(
        self, i: int, task: WorkUnit, gen: int, held: list[str], exc: BaseException
    ) -> bool:
        """The actor's process died holding `task`: note the death once, and requeue the task
        uncharged (True) unless it was the one running."""
        slot = self.slots[i]
        if gen == slot.deaths:  # the first sign of this process's death
            # the unit it was running: as last polled, else the oldest it held
            self.charged[(i, gen)] = slot.running if slot.running in held else held[0]
            _went_down(slot)
            if isinstance(exc, ActorUnschedulableError):
                _lost(slot, self.slots, self.report, exc)
        if self.charged.get((i, gen)) != task.name and task.requeues < ACTOR_RESTARTS:
            # it waited on the dead process, not running: back as it was (bounded, so that a
            # unit killing every process it reaches still fails)
            self.queue.appendleft(replace(task, requeues=task.requeues + 1))
            return True
        self.charged.pop((i, gen), None)
        return False


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


def _check_restarts(slots: list[_Slot], report: BackendReport, model: Any) -> None:
    """Open the model again in each restarting actor; one that answers takes work again (its new
    process noted), one that stays away past READY_TIMEOUT_S is given up."""
    for slot in slots:
        if slot.state != "restarting":
            continue
        if slot.ping is None:
            slot.ping = slot.actor.open.remote(model)
        ready, _ = ray.wait([slot.ping], timeout=0)
        if ready:
            try:
                info = ray.get(slot.ping)
            except ActorUnschedulableError as exc:  # its node is gone: no restart can come
                _lost(slot, slots, report, exc)
                continue
            except (RayActorError, RayTaskError):
                info = (
                    None  # not back yet (or gone, or failed to open): ask again, until the timeout
                )
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
