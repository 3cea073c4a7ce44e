"""Work units: what one worker runs at a time, planned from the shards' Parquet footers.

A unit is a run of consecutive row groups of one shard file, never part of a row group (ingest
writes a row group per image by default, so a job of as many images as workers gives every
worker one). Units are cut in dataset order, each by the rule, for the images not yet in a
unit and the job's workers:

    unit size = min(MAX_UNIT_IMAGES, ceil(images left / (UNITS_PER_WORKER * workers)))

and each shard's row groups are taken in order into units of at most that many images (a row
group larger than that is a unit of its own). So every worker gets about UNITS_PER_WORKER units
or more, and the units shrink as the work left does, down to single images: the last ones to
finish are small, whatever the number of images, and no worker idles long while another ends a
big one. A stop loses at most one unit per worker. Units are handed out largest first.

A unit covering a whole file is named as the shard (`shard-00000`, as every marker was before
units); a part is `shard-00000.rg0-3` (row groups 0 to 3). Each unit has its own completion
marker, so a resume redoes only the row groups no marker covers, whatever the units of the
earlier attempt were (another worker count, or whole-shard markers of runs made before units).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from modnet_batch.data.dataset import Dataset, ShardInfo
from modnet_batch.results import WorkUnit
from modnet_batch.storage import argument

UNITS_PER_WORKER = 4
MAX_UNIT_IMAGES = 64  # the default shard size: a unit is never bigger than a default shard
_PART = re.compile(r"(?P<shard>.+)\.rg(?P<first>\d+)-(?P<last>\d+)")


def unit_images(images: int, workers: int) -> int:
    """The most images a unit holds for `images` left to do on `workers` workers (the rule)."""
    per_unit = -(-max(images, 1) // (UNITS_PER_WORKER * max(workers, 1)))
    return max(1, min(MAX_UNIT_IMAGES, per_unit))


def unit_name(shard: str, groups: tuple[int, ...], file_groups: int) -> str:
    """`shard` for all of its `file_groups` row groups, else `<shard>.rg<first>-<last>`."""
    if groups == tuple(range(file_groups)):
        return shard
    return f"{shard}.rg{groups[0]}-{groups[-1]}"


def parse_unit(name: str) -> tuple[str, range | None]:
    """(shard name, the row groups a unit's name covers; None: the whole file)."""
    match = _PART.fullmatch(name)
    if match is None:
        return name, None
    return match["shard"], range(int(match["first"]), int(match["last"]) + 1)


def covered(names: Iterable[str], shards: Mapping[str, list[int] | None]) -> dict[str, set[int]]:
    """The row groups of each shard that the units `names` (completion markers) cover; a
    whole-shard name covers them all. `shards` maps each shard to its row groups' rows."""
    out: dict[str, set[int]] = {name: set() for name in shards}
    for name in names:
        shard, groups = parse_unit(name)
        if shard not in out:
            continue  # not a unit of this dataset
        rows = shards[shard]
        whole = range(len(rows)) if rows is not None else range(0)
        out[shard].update(whole if groups is None else groups)
        if groups is None and rows is None:
            out[shard].add(-1)  # the whole file, its footer unread: done all the same
    return out


def is_done(shard: str, rows: list[int] | None, done: Mapping[str, set[int]]) -> bool:
    """Whether every row group of `shard` (rows: its row groups' rows) is covered."""
    if rows is None:
        return -1 in done.get(shard, set())
    return set(range(len(rows))) <= done.get(shard, set())


def pending(
    dataset: Dataset, groups: Mapping[str, list[int] | None], done: Iterable[str]
) -> list[WorkUnit]:
    """The work left: one task per maximal run of row groups that no marker covers, in dataset
    order (`split` cuts them into units once the number of workers is known)."""
    cover = covered(done, groups)
    tasks: list[WorkUnit] = []
    for shard in dataset.shards:
        rows = groups[shard.name]
        if is_done(shard.name, rows, cover):
            continue
        if rows is None:  # unreadable footer: the whole file, for its worker to report
            tasks.append(_task(dataset, shard, shard.name, shard.rows))
            continue
        run: list[int] = []
        for g in [*range(len(rows)), len(rows)]:
            if g < len(rows) and g not in cover[shard.name]:
                run.append(g)
                continue
            if run:
                part = tuple(run)
                tasks.append(
                    _task(
                        dataset,
                        shard,
                        unit_name(shard.name, part, len(rows)),
                        sum(rows[i] for i in part),
                        part,
                        tuple(rows[i] for i in part),
                    )
                )
                run = []
    return tasks


def retry_task(
    dataset: Dataset, name: str, rows: list[int] | None, ids: tuple[str, ...]
) -> WorkUnit | None:
    """The task that redoes `ids` of the finished unit `name` (its marker keeps its name)."""
    shard_name, part = parse_unit(name)
    shard = next((s for s in dataset.shards if s.name == shard_name), None)
    if shard is None:
        return None
    groups = None
    if part is not None:
        groups = tuple(part)
    elif rows is not None:
        groups = tuple(range(len(rows)))
    return replace(_task(dataset, shard, name, len(ids), groups), only=ids)


def _task(
    dataset: Dataset,
    shard: ShardInfo,
    name: str,
    rows: int,
    groups: tuple[int, ...] | None = None,
    group_rows: tuple[int, ...] = (),
) -> WorkUnit:
    return WorkUnit(
        name=name,
        path=argument(dataset.shard_path(shard)),  # a URI as given: the worker opens it
        rows=rows,
        sha256=shard.sha256 or None,
        row_groups=groups,
        group_rows=group_rows,
        reader=dataset.reader,
    )


def split(tasks: list[WorkUnit], workers: int) -> list[WorkUnit]:
    """The work units of `tasks` for `workers` workers, by the rule above, largest first.

    Retries of some images (`only`) and files whose footer could not be read stay as they are.
    """
    left = sum(t.rows for t in tasks if t.only is None and t.row_groups is not None)
    units: list[WorkUnit] = []
    for task in tasks:
        if task.only is not None or task.row_groups is None:
            units.append(task)
            continue
        parts: list[list[int]] = []
        images = 0
        size = 0
        for k, n in enumerate(task.group_rows):
            if not parts or images + n > size:
                parts.append([])
                images = 0
                size = unit_images(left, workers)
            parts[-1].append(k)
            images += n
            left -= n
        if len(parts) <= 1:
            units.append(task)
            continue
        shard = parse_unit(task.name)[0]
        for part in parts:
            groups = tuple(task.row_groups[k] for k in part)
            rows = tuple(task.group_rows[k] for k in part)
            units.append(
                replace(
                    task,
                    name=f"{shard}.rg{groups[0]}-{groups[-1]}",
                    rows=sum(rows),
                    row_groups=groups,
                    group_rows=rows,
                )
            )
    return sorted(units, key=lambda u: -u.rows)  # stable: dataset order among equals


def fill_order(held: Sequence[int | None], queued: int, limit: int) -> list[int]:
    """The actors (indices) that the next `queued` units go to, in order. `held[i]`: the units
    actor i holds (None: it takes no work now). Every such actor gets a unit before any gets a
    second, and so on, up to `limit` each."""
    loads = list(held)
    order: list[int] = []
    for depth in range(limit):
        for i, load in enumerate(loads):
            if len(order) == queued:
                return order
            if load is not None and load <= depth:
                loads[i] = load + 1
                order.append(i)
    return order
