"""The device while a block runs: NVML utilisation and memory samples, torch's CUDA memory peak."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import numpy as np


class GpuMonitor:
    """NVML utilisation samples of GPU `index` while a block runs; nothing without NVML."""

    def __init__(self, index: int = 0, interval: float = 0.05) -> None:
        self.interval = interval
        self.samples: list[int] = []
        self.memory_used: list[int] = []
        self._handle: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml: Any = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception:  # no NVML (CPU machine, no driver): no samples
            self._handle = None

    @property
    def available(self) -> bool:
        return self._handle is not None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with suppress(Exception):
                self.samples.append(int(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))
                self.memory_used.append(int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used))

    @contextmanager
    def watch(self) -> Iterator[dict[str, Any]]:
        """Yields a dict filled, when the block ends, with the utilisation seen during it."""
        figures: dict[str, Any] = {}
        self.samples, self.memory_used = [], []
        if self.available:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        try:
            yield figures
        finally:
            if self._thread is not None:
                self._stop.set()
                self._thread.join()
                self._thread = None
            if self.samples:
                figures["gpu_util_median_pct"] = float(np.median(self.samples))
                figures["gpu_util_mean_pct"] = float(np.mean(self.samples))
                figures["gpu_util_samples"] = len(self.samples)
            if self.memory_used:
                figures["gpu_memory_used_max_mib"] = round(max(self.memory_used) / 2**20, 1)


def torch_memory_reset(device: str) -> None:
    if device == "cuda" and "torch" in sys.modules:
        torch: Any = sys.modules["torch"]
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def torch_memory_peak(device: str) -> float | None:
    if device == "cuda" and "torch" in sys.modules:
        torch: Any = sys.modules["torch"]
        return round(float(torch.cuda.max_memory_allocated()) / 2**20, 1)
    return None
