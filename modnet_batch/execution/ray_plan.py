"""Which actors a job starts on a Ray cluster: one per device per instance, CPU workers filling
each node without oversubscribing it, every actor pinned to its node."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution.resources import cpu_split, device_cpu_share
from modnet_batch.execution.worker_spec import WorkerSpec
from modnet_batch.options import JobConfig


@dataclass(frozen=True)
class ActorPlan:
    """One actor to start: its spec and the Ray options that pin it."""

    spec: WorkerSpec
    options: dict[str, Any]

    @property
    def node_id(self) -> str:
        node: str = self.options["scheduling_strategy"].node_id
        return node


def _alive_nodes() -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return [n for n in nodes if n.get("Alive")]


def _short(node: dict[str, Any]) -> str:
    return str(node["NodeManagerAddress"]) + ":" + str(node["NodeID"])[:6]


def _pinned(node: dict[str, Any]) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)


def plan_actors(job: JobConfig, base: WorkerSpec) -> list[ActorPlan]:
    """One actor per device per instance; CPU workers fill each node without oversubscribing."""
    nodes = _alive_nodes()
    if job.device == "cpu":
        return _cpu_plans(job, base, nodes)
    plans = _device_plans(job, base, nodes)
    _check_fits(plans, nodes)
    if not plans:
        resource = "GPU" if job.device == "gpu" else job.device
        have = sorted({k for n in nodes for k in n["Resources"] if not k.startswith("node:")})
        raise ModnetBatchError(
            f"the Ray cluster has no {resource!r} resource (it has: {', '.join(have)}); "
            "use --device cpu, or start nodes that advertise it"
        )
    return plans


def _cpu_plans(job: JobConfig, base: WorkerSpec, nodes: list[dict[str, Any]]) -> list[ActorPlan]:
    threads = job.threads
    if threads is None and job.workers is not None:
        # --workers alone: spread the cluster's cores over that many workers
        total = sum(int(n["Resources"].get("CPU", 0)) for n in nodes)
        threads = max(1, total // job.workers)
    plans: list[ActorPlan] = []
    for node in nodes:
        cpus = int(node["Resources"].get("CPU", 0))
        if cpus == 0:
            continue
        split = cpu_split(None, threads, cpus)
        for w in range(split.workers):
            spec = replace(
                base,
                engine=replace(base.engine, threads=split.threads),
                label=f"cpu{w}@{_short(node)}",
                decode_threads=job.decode_threads or 1,
                cpus=float(split.threads),
            )
            opts = {"num_cpus": split.threads, "scheduling_strategy": _pinned(node)}
            plans.append(ActorPlan(spec, opts))
    if job.workers is not None:
        if job.workers > len(plans):
            raise ModnetBatchError(
                f"asked for {job.workers} CPU workers but the cluster has room for "
                f"{len(plans)} at these threads per worker; lower --workers or --threads"
            )
        plans = plans[: job.workers]
    return plans


def _device_plans(job: JobConfig, base: WorkerSpec, nodes: list[dict[str, Any]]) -> list[ActorPlan]:
    resource = "GPU" if job.device == "gpu" else job.device
    plans: list[ActorPlan] = []
    remaining = job.workers  # --workers: the first N devices, in node order
    for node in nodes:
        count = int(node["Resources"].get(resource, 0))
        if remaining is not None:
            count = min(count, remaining)
            remaining -= count
        plans.extend(_node_device_plans(job, base, node, resource, count))
    return plans


def _node_device_plans(
    job: JobConfig, base: WorkerSpec, node: dict[str, Any], resource: str, count: int
) -> list[ActorPlan]:
    """The actors of one node's `count` devices of `resource`, `job.instances` per device."""
    inst = job.instances
    # the devices used on this node share its CPUs: each actor decodes and scores for its
    # device with that many threads (--decode-threads: that many, and as many CPUs asked)
    share: float = device_cpu_share(node["Resources"].get("CPU", 0), count) / inst if count else 0
    decode_threads = job.decode_threads or max(1, int(share))
    actor_cpus = float(job.decode_threads) if job.decode_threads else share
    plans: list[ActorPlan] = []
    for index in range(count):
        for i in range(inst):
            name = f"{resource.lower()}{index}" + (f".{i}" if inst > 1 else "")
            # a GPU is chosen by Ray (CUDA_VISIBLE_DEVICES), so inside the actor it is device
            # 0; a custom accelerator unit gets its index from us, distinct per node
            engine = replace(
                base.engine,
                device_index=0 if resource == "GPU" else index,
                threads=job.threads or 1,
            )
            spec = replace(
                base,
                engine=engine,
                label=f"{name}@{_short(node)}",
                decode_threads=decode_threads,
                cpus=actor_cpus,
            )
            opts: dict[str, Any] = {"num_cpus": actor_cpus, "scheduling_strategy": _pinned(node)}
            if resource == "GPU":
                opts["num_gpus"] = 1 / inst
            else:
                opts["resources"] = {resource: 1 / inst}
            plans.append(ActorPlan(spec, opts))
    return plans


def _check_fits(plans: list[ActorPlan], nodes: list[dict[str, Any]]) -> None:
    """Refuse a plan whose actors cannot all be placed: waiting for them would hang forever."""
    need: dict[tuple[str, str], float] = {}
    for plan in plans:
        wanted = {"CPU": plan.options.get("num_cpus", 0), "GPU": plan.options.get("num_gpus", 0)}
        wanted.update(plan.options.get("resources", {}))
        for key, amount in wanted.items():
            need[(plan.node_id, key)] = need.get((plan.node_id, key), 0.0) + amount
    for node in nodes:
        for (node_id, key), amount in need.items():
            have = float(node["Resources"].get(key, 0.0))
            if node_id == node["NodeID"] and amount > have + 1e-9:
                raise ModnetBatchError(
                    f"node {node['NodeManagerAddress']} has {have:g} {key} but the job's actors "
                    f"there need {amount:g}; lower --instances, --threads, --decode-threads or "
                    "--workers"
                )
