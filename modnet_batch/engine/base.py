"""The engine interface: open a model for a device and precision, run a batch, say where."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from modnet_batch.engine.device_work import DeviceWork


@dataclass(frozen=True)
class EngineSpec:
    """How to open one inference session; small and picklable (it travels to Ray actors)."""

    model: str
    provider: str = "cpu"  # the engine's device kind: cpu, cuda, tensorrt, rocm, ...
    device_index: int = 0
    threads: int = 1  # intra-op CPU threads
    spin: bool = True  # busy-wait between ops; off when other stages share the cores
    precision: str = "fp32"  # the model's precision (fp32/fp16/int8), as its build says
    # Read by the torch engine only (engine/torch/session.py), which also takes precision bf16:
    channels_last: bool = False  # NHWC weights and inputs
    compile: str = "none"  # none | compile (torch.compile) | cudagraphs (CUDA only)


class Session(Protocol):
    """One model loaded on one device."""

    spec: EngineSpec

    @property
    def runs_on(self) -> str:
        """Where the session really runs, e.g. `CPUExecutionProvider` (checked at open)."""
        ...

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """[B,3,H,W] float32 in [-1, 1] -> [B,1,H,W] float32 in [0, 1]."""
        ...

    @property
    def device_work(self) -> DeviceWork | None:
        """What the session can do on its device besides `run` (engine.device_work), or None:
        then the CPU threads decode, prepare, score and resize back."""
        ...


class Engine(Protocol):
    name: str

    def open(self, spec: EngineSpec) -> Session:
        """Open `spec.model`; raise ModnetBatchError if it would run anywhere else."""
        ...
