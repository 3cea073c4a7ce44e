"""How many CPU workers and threads fill a machine without oversubscribing it."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class CpuSplit:
    workers: int
    threads: int


def available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def cpu_split(workers: int | None, threads: int | None, cpus: int | None = None) -> CpuSplit:
    """Fill `cpus` cores: given neither, one single-threaded worker per core; given one, derive
    the other; given both, use them.

    One session per core beats one session on every core: MODNet's small convolutions scale
    sub-linearly with intra-op threads (ppm100-dev, 2 cores, model-only medians: 7.5 img/s as
    2x1 vs 5.9 as 1x2), at the cost of one model copy per core.
    """
    cpus = cpus or available_cpus()
    if workers is None and threads is None:
        return CpuSplit(workers=cpus, threads=1)
    if threads is not None:
        return CpuSplit(workers=workers or max(1, cpus // threads), threads=threads)
    workers = workers or 1
    return CpuSplit(workers=workers, threads=max(1, cpus // workers))


# Up to this many cores, `matte` on the CPU runs in its own process (the inline backend): Ray's
# layout, one single-threaded session per core, in threads, without Ray's start-up (4-5 s on a
# 2-core machine, a quarter of matting 41 ppm100-dev photos: benchmarks/matting.py). Above it,
# workers in processes keep one process's interpreter lock from limiting how many cores the
# Python steps between the native ones can use.
INLINE_MAX_CPUS = 2


def local_backend(device: str | None = None, cpus: int | None = None) -> str:
    """The backend a local CPU job runs on when none is asked for: inline on a machine of at
    most INLINE_MAX_CPUS cores, else Ray (one worker per core)."""
    small = (cpus or available_cpus()) <= INLINE_MAX_CPUS
    return "inline" if small and device in (None, "cpu") else "ray"


# Each device keeps at least this many CPUs before one of a node's CPUs is held back for the
# driver, the raylet and Ray's agents: below it, one CPU more per device feeds more than one CPU
# less for the bookkeeping costs.
RESERVE_FROM_SHARE = 4


def device_cpu_share(cpus: float, devices: int) -> int:
    """The CPUs each of a node's `devices` accelerators gets to decode and score for it.

    The node's CPUs split evenly (a GPU is fed by its node's cores: one core decodes and scores
    7-15 ppm100-size photos/s, a GPU infers thousands); one CPU is kept back for the driver and
    Ray when every device still gets RESERVE_FROM_SHARE or more (16 CPUs / 1 GPU: 15; / 2: 7;
    / 4: 3; / 8: 2). Never below 1: a node with fewer CPUs than devices cannot feed them, and
    the plan that asks for it is refused where it is checked against the node.
    """
    if devices <= 0:
        raise ValueError("devices must be >= 1")
    whole = int(cpus)
    share = whole // devices
    if share >= RESERVE_FROM_SHARE:
        share = (whole - 1) // devices
    return max(1, share)
