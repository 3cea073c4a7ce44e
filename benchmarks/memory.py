"""Peak memory of a real `modnet-batch submit` (driver + Ray + workers), sampled with psutil over
the whole process tree: streaming holds when it does not grow with the dataset's size."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from modnet_batch.errors import ModnetBatchError


def tree_rss(root: psutil.Process) -> int:
    """Resident bytes of `root` and all its descendants (shared pages counted in each)."""
    total = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += int(p.memory_info().rss)
        except psutil.Error:
            continue
    return total


def _kill_tree(root: psutil.Process) -> None:
    """Kill the submit we started and every process it started (its embedded Ray)."""
    try:
        family = [*root.children(recursive=True), root]
    except psutil.Error:
        family = [root]
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
    peak = 0
    samples = 0
    started = time.perf_counter()
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        root = psutil.Process(proc.pid)
        while True:
            peak = max(peak, tree_rss(root))
            samples += 1
            if proc.poll() is not None:
                break
            if time.perf_counter() - started > timeout:
                _kill_tree(root)
                proc.wait()
                raise ModnetBatchError(f"submit ran past {timeout:.0f} s; see {log}")
            time.sleep(interval)
    if proc.returncode != 0:
        raise ModnetBatchError(f"submit exited with {proc.returncode}; see {log}")
    return {
        "peak_rss_bytes": peak,
        "peak_rss_mib": peak / 2**20,
        "samples": samples,
        "seconds": time.perf_counter() - started,
        "command": ["modnet-batch", "submit", *submit_args],
    }
