"""Memory of a process tree (a `modnet-batch submit`: driver + Ray + workers), sampled with psutil:
streaming holds when it does not grow with the dataset's size."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from modnet_batch.errors import ModnetBatchError

MIB = 2**20


def mib(n: float) -> float:
    return round(n / MIB, 1)


class TreeWatch:
    """Samples process `pid` and all its descendants: each one's RSS now and at its peak (shared
    pages counted in each), its role (`driver`: the root, `worker`: Ray's `UnitWorker`, `ray`:
    everything else Ray runs) and the root's CPU seconds."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak: dict[int, int] = {}
        self.now: dict[int, int] = {}
        self.kind: dict[int, str] = {}
        self.driver_cpu = 0.0
        self.peak_total = 0  # the largest sum over the tree at one sample

    def sample(self) -> None:
        try:
            family = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        now: dict[int, int] = {}
        for p in family:
            try:
                rss = int(p.memory_info().rss)
                if rss == 0:  # exited, not yet reaped (a zombie): no longer part of the tree
                    continue
                if self.kind.get(p.pid, "ray") == "ray":  # Ray renames a worker once it is one
                    self.kind[p.pid] = self._kind_of(p)
                if p.pid == self.root.pid:
                    t = p.cpu_times()
                    self.driver_cpu = t.user + t.system
            except psutil.Error:
                continue
            now[p.pid] = rss
            self.peak[p.pid] = max(self.peak.get(p.pid, 0), rss)
        if now:
            self.now = now
            self.peak_total = max(self.peak_total, sum(now.values()))

    def _kind_of(self, p: psutil.Process) -> str:
        if p.pid == self.root.pid:
            return "driver"
        return "worker" if "UnitWorker" in " ".join(p.cmdline()) else "ray"

    def snapshot(self) -> dict[str, Any]:
        """The latest sample: the driver's RSS and CPU, each worker's RSS, the rest of Ray's."""

        def of(kind: str) -> list[int]:
            return sorted(pid for pid, k in self.kind.items() if k == kind and pid in self.now)

        driver = self.root.pid
        return {
            "driver_rss_mib": mib(self.now.get(driver, 0)),
            "driver_peak_rss_mib": mib(self.peak.get(driver, 0)),
            "driver_cpu_s": round(self.driver_cpu, 2),
            "workers": {
                str(pid): {"rss_mib": mib(self.now[pid]), "peak_rss_mib": mib(self.peak[pid])}
                for pid in of("worker")
            },
            "ray_other_rss_mib": mib(sum(self.now[pid] for pid in of("ray"))),
        }

    def kill(self) -> None:
        """Kill the root and every process it started (its embedded Ray)."""
        try:
            family = [*self.root.children(recursive=True), self.root]
        except psutil.Error:
            family = [self.root]
        for p in family:
            try:
                p.kill()
            except psutil.Error:
                continue


def peak_submit_memory(
    submit_args: list[str], log: Path, interval: float = 0.05, timeout: float = 1800.0
) -> dict[str, Any]:
    """Run `python -m modnet_batch submit ARGS` and sample its tree's RSS every `interval` s."""
    cmd = [sys.executable, "-m", "modnet_batch", "submit", *submit_args]
    samples = 0
    started = time.perf_counter()
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        watch = TreeWatch(proc.pid)
        while True:
            watch.sample()
            samples += 1
            if proc.poll() is not None:
                break
            if time.perf_counter() - started > timeout:
                watch.kill()
                proc.wait()
                raise ModnetBatchError(f"submit ran past {timeout:.0f} s; see {log}")
            time.sleep(interval)
    if proc.returncode != 0:
        raise ModnetBatchError(f"submit exited with {proc.returncode}; see {log}")
    return {
        "peak_rss_bytes": watch.peak_total,
        "peak_rss_mib": watch.peak_total / MIB,
        "samples": samples,
        "seconds": time.perf_counter() - started,
        "command": ["modnet-batch", "submit", *submit_args],
    }
