"""The Ray backend's dispatch loop against a scripted fake of `ray.wait`/`ray.get`: which shard is
charged a retry when a worker dies, and that one death is one death (the real-Ray fault tests
are in test_faults.py; these pin the accounting in cases a real kill hits only by chance)."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import pytest
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    ActorUnschedulableError,
    RayTaskError,
)

import modnet_batch.execution.ray_dispatch as rd
from modnet_batch.execution.backend import BackendReport
from modnet_batch.execution.ray_worker import NotOpen
from modnet_batch.execution.units import fill_order
from modnet_batch.results import UnitResult, WorkUnit


class Ref:
    def __init__(self, actor: FakeActor | None, value: Any) -> None:
        self.actor, self.value = actor, value
        self.ready = actor is None  # pings and polls answer at once
        self.error: Exception | None = None


class FakeActor:
    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[Ref] = []
        self.process = types.SimpleNamespace(remote=self._process)
        self.progress = types.SimpleNamespace(remote=lambda: Ref(None, (0, self.running)))
        self.open = types.SimpleNamespace(remote=lambda model: self._info())
        self.running: str | None = None
        self.node_gone = False  # its node died: Ray can no longer place it (pinned there)

    def _info(self) -> Ref:
        ref = Ref(None, {"pid": 2})
        if self.node_gone:
            ref.error = ActorUnschedulableError("the node ... doesn't exist any more")
        return ref

    def _process(self, task: WorkUnit) -> Ref:
        ref = Ref(self, task)
        if self.node_gone:  # a call to an actor Ray cannot place fails at once
            ref.ready, ref.error = True, ActorUnschedulableError("the node ... is gone")
        self.sent.append(ref)
        return ref


Script = Callable[[int, list[FakeActor]], None]


def _run(
    script: Script, shards: str, max_retries: int = 3, actors: int = 2
) -> tuple[list[str], BackendReport]:
    fakes = [FakeActor(f"a{i}") for i in range(actors)]
    turn = [0]

    def wait(refs: list[Ref], num_returns: int = 1, timeout: float | None = None) -> Any:
        turn[0] += 1
        script(turn[0], fakes)
        ready = [r for r in refs if r.ready][:num_returns]
        return ready, [r for r in refs if r not in ready]

    def get(ref: Ref) -> Any:
        if ref.error is not None:
            raise ref.error
        if isinstance(ref.value, WorkUnit):
            t = ref.value
            return UnitResult(t.name, [], {}, 0, 0, 0.0, {}, ref.actor.name, "n", 1, t.attempt)  # type: ignore[union-attr]
        return ref.value

    done: list[str] = []
    report = BackendReport(workers=[{"label": a.name} for a in fakes])
    mp = pytest.MonkeyPatch()
    mp.setattr(rd, "ray", types.SimpleNamespace(wait=wait, get=get))
    mp.setattr(rd, "POLL_S", 0.0)
    try:
        job = types.SimpleNamespace(shards_in_flight=2, max_retries=max_retries)
        labels = [a.name for a in fakes]
        tasks = [WorkUnit(name=n, path="", rows=1) for n in shards]
        rd.dispatch(
            job, fakes, labels, tasks, lambda r: done.append(r.unit), lambda w, n: None, report
        )  # type: ignore[arg-type]
    finally:
        mp.undo()
    return done, report


def _finish_all(actor: FakeActor) -> None:
    for ref in actor.sent:
        if not ref.ready:
            ref.ready = True


def _die(actor: FakeActor, error: Callable[[], Exception] = ActorDiedError) -> None:
    for ref in actor.sent:
        if not ref.ready:
            ref.ready, ref.error = True, error()


def _lose_node(actor: FakeActor) -> None:
    """Its node is killed: the shards it holds fail at once (the connection drops), and from
    then on Ray answers that it cannot place the actor (as Ray 2.60 does ~15 s later)."""
    _die(actor, lambda: ActorUnavailableError("Socket closed", b"a0".ljust(16, b"0")))
    actor.node_gone = True


def test_only_the_running_shard_is_charged_and_the_worker_works_again() -> None:
    def script(turn: int, actors: list[FakeActor]) -> None:
        a0, a1 = actors
        if turn == 1:
            a0.running = a0.sent[1].value.name  # the second shard it holds is running
            _die(a0)
        else:
            _finish_all(a0)
            _finish_all(a1)

    done, report = _run(script, "ABCDEFGH")
    assert sorted(done) == list("ABCDEFGH")  # every shard once
    assert report.retries == 1 and not report.failed


def test_a_late_error_from_the_dead_process_is_not_a_second_death() -> None:
    """The ping of the restarted actor succeeds before the dead process's second error is
    handled: that error belongs to the death already counted."""

    def script(turn: int, actors: list[FakeActor]) -> None:
        a0, a1 = actors
        if turn == 1:
            _die(a0)
            _finish_all(a1)  # a1's results come first, so a0's errors are handled over turns
        elif turn > 3:
            _finish_all(a0)
            _finish_all(a1)

    done, report = _run(script, "CDABEF")
    assert sorted(done) == list("ABCDEF")
    assert report.retries == 1


def test_a_shard_that_kills_every_worker_fails_instead_of_looping() -> None:
    """Whatever it was doing (running or waiting), a shard present at every death is charged
    in the end and fails; the others complete."""

    def script(turn: int, actors: list[FakeActor]) -> None:
        for actor in actors:
            for ref in actor.sent:
                if not ref.ready and ref.value.name == "P":
                    _die(actor)
                    break
            else:
                _finish_all(actor)

    done, report = _run(script, "PABC", max_retries=1)
    assert sorted(done) == list("ABC")
    assert set(report.failed) == {"P"}


def test_a_lost_node_loses_its_actor_and_its_shards_go_to_the_other_nodes() -> None:
    """Ray reports an actor pinned to a dead node as ActorUnschedulableError (not a
    RayActorError): the actor is lost, not waited for; its running shard is charged once and
    the queued one goes back as it was, both to the actors on the other nodes."""

    def script(turn: int, actors: list[FakeActor]) -> None:
        a0, a1, a2 = actors
        if turn == 1:
            a0.running = a0.sent[0].value.name
            _lose_node(a0)
        else:
            _finish_all(a1)
            _finish_all(a2)

    done, report = _run(script, "ABCDEFGHIJ", actors=3)
    assert sorted(done) == list("ABCDEFGHIJ")  # every shard exactly once
    assert report.retries == 1 and not report.failed
    lost = [w for w in report.workers if "lost" in w]
    assert [w["label"] for w in lost] == ["a0"] and "is gone" in lost[0]["lost"]
    assert report.dispatch is not None and report.dispatch["shards"] == 10


def test_when_the_last_node_is_lost_the_queue_fails_at_once() -> None:
    """No waiting READY_TIMEOUT_S for actors that cannot come back: the shards left are
    failed (a resume runs them) naming the loss."""

    def script(turn: int, actors: list[FakeActor]) -> None:
        (a0,) = actors
        if turn == 2:
            _lose_node(a0)
        elif turn == 1:
            _finish_all(a0)

    done, report = _run(script, "ABCDEF", actors=1)
    assert done == ["A", "B"]
    assert sorted(report.failed) == list("CDEF")
    assert all("lost with their nodes" in why for why in report.failed.values())


@pytest.mark.parametrize(
    ("held", "queued", "expected"),
    [
        ([0, 0], 2, [0, 1]),  # a small job: one unit each, not two for the first actor
        ([0, 0], 3, [0, 1, 0]),  # a second unit only once every actor has one
        ([0, 0], 9, [0, 1, 0, 1]),  # then no more than the limit each
        ([2, 0], 1, [1]),  # the actor without work first
        ([1, 0, 2], 3, [1, 0, 1]),
        ([None, 0], 3, [1, 1]),  # a restarting actor takes nothing
        ([0, 0], 0, []),
    ],
)
def test_every_ready_actor_gets_a_unit_before_any_gets_a_second(
    held: list[int | None], queued: int, expected: list[int]
) -> None:
    assert fill_order(held, queued, limit=2) == expected


def test_two_units_on_two_actors_go_one_to_each() -> None:
    """Both actors are ready with room for two units each: the first does not take both."""
    sent: list[list[str]] = []

    def script(turn: int, actors: list[FakeActor]) -> None:
        if turn == 1:
            sent.extend([ref.value.name for ref in a.sent] for a in actors)
        for actor in actors:
            _finish_all(actor)

    done, report = _run(script, "AB")
    assert sorted(done) == ["A", "B"] and not report.failed
    assert sent == [["A"], ["B"]]


def test_a_unit_reaching_a_restarted_process_before_its_model_goes_back_uncharged() -> None:
    """Ray restarted a0 before the driver heard of the death: its next unit finds no model
    (NotOpen). Not run, so no retry is charged; a0 is opened again and works again."""

    def script(turn: int, actors: list[FakeActor]) -> None:
        a0, a1 = actors
        if turn == 1:
            ref = a0.sent[0]
            ref.ready, ref.error = True, RayTaskError("process", "", NotOpen("no model yet"))
        else:
            _finish_all(a0)
            _finish_all(a1)

    done, report = _run(script, "ABCD")
    assert sorted(done) == list("ABCD") and not report.failed
    assert report.retries == 0
    assert [w.get("restarts") for w in report.workers] == [1, None]
