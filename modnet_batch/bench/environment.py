"""What a benchmark ran on: versions, execution providers, threads, CPU, GPU, machine load."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import threading
import time
from importlib import metadata
from typing import Any

from modnet_batch.execution.resources import available_cpus

_PACKAGES = (
    "modnet-batch",
    "onnxruntime",
    "onnxruntime-gpu",
    "numpy",
    "opencv-python-headless",
    "pyarrow",
    "ray",
)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_names() -> list[str]:
    """One line per NVIDIA GPU (name, memory, driver), from nvidia-smi; [] without it."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def environment() -> dict[str, Any]:
    """A JSON-able description of this machine and the software the benchmark used."""
    import cv2
    import onnxruntime as ort
    import psutil

    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": {p: v for p in _PACKAGES if (v := _version(p)) is not None},
        "onnxruntime_providers": list(ort.get_available_providers()),
        "opencv_threads_default": int(cv2.getNumThreads()),
        "cpu": {
            "model": _cpu_model(),
            "logical_cores": os.cpu_count(),
            "usable_cores": available_cpus(),
            "physical_cores": psutil.cpu_count(logical=False),
        },
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": gpu_names(),
        "load_average": load_average(),
    }


class LoadMonitor:
    """How busy the machine was during a measurement, and how much of it was someone else.

    Samples the CPU time of this process and its descendants (Ray's processes included) every
    `interval` s, keeping each process's last value so that those which exit still count;
    `foreign_cores` = all busy cores minus ours: other users of a shared machine. `own_by_role`
    splits ours into this process (driver), Ray's shard workers and Ray's own daemons.
    """

    def __init__(self, interval: float = 0.25) -> None:
        import psutil

        self._psutil = psutil
        self.interval = interval
        self._own: dict[int, float] = {}
        self._role: dict[int, str] = {}
        self._base: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="load-monitor")
        self._t0 = 0.0
        self._busy0 = 0.0
        self.result: dict[str, Any] = {}

    def _busy(self) -> float:
        t = self._psutil.cpu_times()
        return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))

    def _sample(self, first: bool = False) -> None:
        me = self._psutil.Process()
        try:
            procs = [me, *me.children(recursive=True)]
        except self._psutil.Error:
            procs = [me]
        for p in procs:
            try:
                c = p.cpu_times()
            except self._psutil.Error:
                continue
            used = float(c.user + c.system)
            # processes born during the measurement count from zero
            self._base.setdefault(p.pid, used if first else 0.0)
            self._own[p.pid] = used
            if self._role.get(p.pid) != "ray_workers":  # an idle Ray worker may become one
                self._role[p.pid] = self._role_of(p, me)

    def _role_of(self, p: Any, me: Any) -> str:
        if p.pid == me.pid:
            return "driver"
        try:
            title = " ".join(p.cmdline()[:1]) or p.name()
        except self._psutil.Error:
            return "ray_system"
        return "ray_workers" if "UnitWorker" in title else "ray_system"

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> LoadMonitor:
        self._t0 = time.perf_counter()
        self._busy0 = self._busy()
        self._sample(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        wall = max(time.perf_counter() - self._t0, 1e-9)
        roles: dict[str, float] = {"driver": 0.0, "ray_workers": 0.0, "ray_system": 0.0}
        for pid, v in self._own.items():
            roles[self._role.get(pid, "ray_system")] += (v - self._base.get(pid, 0.0)) / wall
        own = sum(roles.values())
        busy = (self._busy() - self._busy0) / wall
        self.result = {
            "wall_s": wall,
            "busy_cores": busy,
            "own_cores": own,
            "foreign_cores": max(0.0, busy - own),
            "own_by_role_cores": roles,
        }
