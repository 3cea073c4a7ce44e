"""The Ray actor of a job: one inference session on one device, running whole work units."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

import ray

from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution.processor import UnitProcessor
from modnet_batch.execution.worker_spec import WorkerSpec
from modnet_batch.model.shipped import ShippedModel, materialize
from modnet_batch.results import UnitResult, WorkUnit
from modnet_batch.storage import location


@dataclass(frozen=True)
class Setup:
    """What every worker of a job checks on its own node before it opens the model."""

    probe: str  # a file in the run directory that only a node seeing that directory sees
    results_via: str  # auto | storage | driver (JobConfig.results_via)


class NotOpen(ModnetBatchError):
    """A unit reached a worker process that has no model yet: one that Ray restarted, not yet
    given the model again (the driver does that when it notices the restart)."""


class UnitWorker:
    """A Ray actor holding one inference session on one device; processes whole work units.

    The model comes with the job (`open`, through the object store: no shared model cache
    needed). Its per-image files are written into the run directory when this node sees it, else
    (or with `--results-via driver`) sent back with each unit's result for the driver to write.
    """

    def __init__(self, spec: WorkerSpec, setup: Setup) -> None:
        ctx = ray.get_runtime_context()
        # hostnames repeat when several nodes share a machine; the node id does not
        self.node = f"{ray.util.get_node_ip_address()}:{ctx.get_node_id()[:6]}"  # type: ignore[no-untyped-call]
        sees = location(setup.probe).is_file()
        if setup.results_via == "storage" and not sees:
            raise ModnetBatchError(
                f"worker {spec.label} on node {self.node} cannot see the run directory "
                f"{spec.run_dir} (no shared file system there); use --results-via driver or "
                "auto, or an --out that every node mounts"
            )
        self.results_via = "storage" if sees and setup.results_via != "driver" else "driver"
        writes = replace(spec.writes, return_files=self.results_via == "driver")
        self.spec = replace(spec, writes=writes)
        self.processor: UnitProcessor | None = None

    def open(self, shipped: ShippedModel) -> dict[str, Any]:
        """Open the job's model (the driver sends it through the object store, as a call's
        argument: an actor's constructor arguments stay small, so Ray can restart it), and say
        what this worker is."""
        if self.processor is None:
            model = str(materialize(shipped, self.spec.engine.model))
            self.spec = replace(self.spec, engine=replace(self.spec.engine, model=model))
            self.processor = UnitProcessor(self.spec)
        return self.info()

    def _opened(self) -> UnitProcessor:
        if self.processor is None:
            raise NotOpen(f"worker {self.spec.label} (pid {os.getpid()}) has no model yet")
        return self.processor

    def info(self) -> dict[str, Any]:
        processor = self._opened()
        ctx = ray.get_runtime_context()
        return {
            **processor.info(),
            "node": self.node,
            "node_id": ctx.get_node_id(),
            "pid": os.getpid(),
            "accelerators": {k: list(v) for k, v in ctx.get_accelerator_ids().items() if v},
            "device_index": self.spec.engine.device_index,
            "results_via": self.results_via,
            "model": self.spec.engine.model,  # the file it opened: the job's, or a shipped copy
        }

    def process(self, task: WorkUnit) -> UnitResult:
        result = self._opened().process(task)
        result.node = self.node
        return result

    def progress(self) -> tuple[int, str | None]:
        """Images finished by this process, and the unit it is running (None between units)."""
        if self.processor is None:
            return 0, None
        return self.processor.images_done, self.processor.running
