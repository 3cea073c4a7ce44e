"""Helpers shared by the tests: a model slow enough to interrupt, the processes of a job started
by a test (only those are ever signalled), the CLI run against a local cluster, and a spy that
records the calls to a function."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pytest

    from cluster.local import LocalCluster

ROOT = Path(__file__).resolve().parents[1]


def make_slow_model(path: Path, convs: int = 6, channels: int = 16, seed: int = 0) -> Path:
    """MODNet's signature, with `convs` 3x3 convolutions of `channels` channels: about 20 ms of
    one core per convolution at 480x288, so that a job lasts long enough to be interrupted."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = []
    nodes = []
    prev, width = "input", 3
    for k in range(convs):
        w = rng.normal(0, 0.3 / np.sqrt(width), (channels, width, 3, 3)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{k}")]
        nodes += [
            helper.make_node("Conv", [prev, f"w{k}"], [f"c{k}"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c{k}"], [f"r{k}"]),
        ]
        prev, width = f"r{k}", channels
    head = rng.normal(0, 0.3, (1, width, 1, 1)).astype(np.float32)
    inits.append(numpy_helper.from_array(head, "head"))
    nodes += [
        helper.make_node("Conv", [prev, "head"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow_modnet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 3, "h", "w"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["b", 1, "h", "w"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def kill_job(proc: subprocess.Popen[str]) -> None:
    """SIGKILL a job's driver, then stop whatever of its process tree outlives it: the embedded
    Ray's raylet and GCS follow their driver, its agents do not (Ray's behaviour). Only
    processes the test started are touched."""
    import signal

    import psutil

    own = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    _gone, alive = psutil.wait_procs(own, timeout=10)
    for p in alive:
        p.kill()


def run_cli(
    *args: Any, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`modnet-batch ARGS` as a user runs it: its own process, this checkout, `env` (default:
    this process's) with wide output (rich wraps at 80 columns without a terminal)."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["COLUMNS"] = "250"
    return subprocess.run(
        [sys.executable, "-m", "modnet_batch", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cluster_cli(
    lc: LocalCluster, *args: Any, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`modnet-batch ARGS` with the cluster's client environment."""
    return run_cli(*args, env=lc.client_env(), timeout=timeout)


def calls_to(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[Any]:
    """`owner.name` still called, each call's first argument recorded in the list returned."""
    calls: list[Any] = []
    real = getattr(owner, name)

    def recording(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, recording)
    return calls
