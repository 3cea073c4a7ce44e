"""A job's throughput: the two rates every view of a run shows (the live progress line, the
terminal tables, `summary.json`, the HTML report), per device and in total, and how a resume
adds an attempt to the attempts before it."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from modnet_batch.results.records import UnitResult

STEADY = "steady img/s"
OVERALL = "overall img/s"


def _rate(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 and images else 0.0


def _span(results: list[UnitResult]) -> float:
    """Seconds from the first unit's start to the last one's finish (the workers' clocks); the
    sum of the units' loop seconds when a result does not say when it ran."""
    starts = [r.started for r in results]
    ends = [r.finished for r in results]
    if not results or any(t is None for t in starts + ends):
        return sum(r.seconds for r in results)
    return max(e for e in ends if e is not None) - min(s for s in starts if s is not None)


@dataclass(frozen=True)
class Share:
    """One device's (or one node's) part of a job: the images its workers finished, and its
    steady seconds (from its first work unit's start to its last one's finish)."""

    images: int
    steady_s: float

    @property
    def steady_images_per_s(self) -> float:
        """Its **steady img/s**: images / steady seconds."""
        return _rate(self.images, self.steady_s)

    def added(self, other: Share) -> Share:
        return Share(self.images + other.images, self.steady_s + other.steady_s)


def _shares(results: list[UnitResult], key: str) -> dict[str, Share]:
    groups: dict[str, list[UnitResult]] = defaultdict(list)
    for r in results:
        groups[str(getattr(r, key))].append(r)
    return {k: Share(sum(r.images for r in g), _span(g)) for k, g in sorted(groups.items())}


def _add_shares(a: dict[str, Share], b: dict[str, Share]) -> dict[str, Share]:
    out = dict(a)
    for k, share in b.items():
        out[k] = out[k].added(share) if k in out else share
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class Throughput:
    """How fast a job went, in two rates, each per device and in total:

    - **steady img/s**: images / steady seconds, the seconds during which workers were running
      work units: from the moment the first work unit started on a worker to the moment the last
      one finished (the workers' clocks). Start-up (starting Ray, loading the model on each
      worker) and the driver's planning and finalising are left out. A device's steady img/s
      counts its own images over its own first start to last finish.
    - **overall img/s**: images / wall seconds of the whole job as its user waits for it, from
      the moment the job starts (planning, starting Ray and loading the model included) until
      the backend has handed back its last result (writing the summary left out). A device's
      overall img/s is its images over the same wall seconds, so the devices' figures add up
      to the total.

    While a job runs, the progress line estimates the steady img/s as the images since the
    first result over the seconds since then; its last line shows this record's figures.

    A resumed job adds each attempt's images, steady seconds and wall seconds to the earlier
    attempts' and recomputes both rates; an attempt with nothing left to do changes nothing.
    `stages_s` holds the unit loops' seconds per stage, summed over units.
    """

    images: int = 0
    wall_s: float = 0.0
    steady_s: float = 0.0
    per_device: dict[str, Share] = field(default_factory=dict)
    per_node: dict[str, Share] = field(default_factory=dict)
    stages_s: dict[str, float] = field(default_factory=dict)
    attempts: int = 1

    @property
    def steady_images_per_s(self) -> float:
        """The job's **steady img/s**: images / steady seconds."""
        return _rate(self.images, self.steady_s)

    @property
    def overall_images_per_s(self) -> float:
        """The job's **overall img/s**: images / wall seconds, start-up included."""
        return _rate(self.images, self.wall_s)

    def overall_of(self, share: Share) -> float:
        """A device's (or node's) **overall img/s**: its images / the job's wall seconds."""
        return _rate(share.images, self.wall_s)

    @classmethod
    def measure(cls, results: Iterable[UnitResult], wall_s: float) -> Throughput:
        """One attempt's throughput from the units it finished and its wall seconds."""
        done = list(results)
        stages: dict[str, float] = defaultdict(float)
        for r in done:
            for k, v in r.stages.items():
                stages[k] += v
        return cls(
            images=sum(r.images for r in done),
            wall_s=wall_s,
            steady_s=_span(done),
            per_device=_shares(done, "worker"),
            per_node=_shares(done, "node"),
            stages_s=dict(stages),
        )

    def after(self, previous: Throughput | None) -> Throughput:
        """This attempt added to the attempts before it (a resume); None: the first attempt."""
        if previous is None:
            return replace(self, attempts=1)
        if not self.images or not previous.images:  # one of them did nothing: the other stands
            kept = previous if previous.images else self
            return replace(kept, attempts=previous.attempts + 1)
        stages = dict(previous.stages_s)
        for k, v in self.stages_s.items():
            stages[k] = stages.get(k, 0.0) + v
        return Throughput(
            images=previous.images + self.images,
            wall_s=previous.wall_s + self.wall_s,
            steady_s=previous.steady_s + self.steady_s,
            per_device=_add_shares(previous.per_device, self.per_device),
            per_node=_add_shares(previous.per_node, self.per_node),
            stages_s=stages,
            attempts=previous.attempts + 1,
        )

    # --- summary.json ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """`summary.json`'s `throughput`: the record, each rate under its name."""

        def shares(table: dict[str, Share]) -> dict[str, Any]:
            return {
                k: {
                    "images": s.images,
                    "steady_s": s.steady_s,
                    "steady_images_per_s": s.steady_images_per_s,
                    "overall_images_per_s": self.overall_of(s),
                }
                for k, s in table.items()
            }

        return {
            "images": self.images,
            "wall_s": self.wall_s,
            "steady_s": self.steady_s,
            "steady_images_per_s": self.steady_images_per_s,
            "overall_images_per_s": self.overall_images_per_s,
            "per_device": shares(self.per_device),
            "per_node": shares(self.per_node),
            "stages_s": dict(self.stages_s),
            "attempts": self.attempts,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Throughput:
        """The record from `summary.json`. Summaries written before the steady seconds were
        recorded kept each device's busy seconds (`seconds`): they stand for its steady seconds,
        and the longest of them for the job's (the devices ran side by side)."""

        def shares(table: dict[str, Any]) -> dict[str, Share]:
            return {
                str(k): Share(int(v["images"]), float(v.get("steady_s", v.get("seconds", 0.0))))
                for k, v in table.items()
            }

        per_device = shares(data.get("per_device", {}))
        steady = data.get("steady_s")
        if steady is None:
            steady = max((s.steady_s for s in per_device.values()), default=0.0)
        return cls(
            images=int(data.get("images", 0)),
            wall_s=float(data.get("wall_s", 0.0)),
            steady_s=float(steady),
            per_device=per_device,
            per_node=shares(data.get("per_node", {})),
            stages_s={str(k): float(v) for k, v in data.get("stages_s", {}).items()},
            attempts=int(data.get("attempts", 1)),
        )
