"""Per-node int8 sensitivity: quantize one node at a time, measure the output error vs float.

Quantizing a node alone isolates the error it injects, including what its neighbours amplify,
on the runtime's real int8 kernels; ~2-3 s per node on 2 cores for MODNet (~120 candidates).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx

from modnet_batch.engine import EngineSpec, open_session
from modnet_batch.model.quantize import QuantSettings, quantize


@dataclass(frozen=True)
class NodeSensitivity:
    node: str
    op_type: str
    mse: float  # mean over images of the output MSE vs float, this node alone in int8
    worst: float  # the largest per-image MSE


def candidate_nodes(model_path: Path, op_types: Sequence[str]) -> list[tuple[str, str]]:
    """(name, op_type) of the nodes whose quantization is measured, in graph order."""
    wanted = set(op_types)
    model = onnx.load(str(model_path), load_external_data=False)
    return [(n.name, n.op_type) for n in model.graph.node if n.op_type in wanted and n.name]


def run_model(
    model_path: Path, tensors: Sequence[npt.NDArray[np.float32]], threads: int
) -> list[npt.NDArray[np.float32]]:
    """The model's output for each 3xHxW tensor (batch of one)."""
    session = open_session(EngineSpec(model=str(model_path), provider="cpu", threads=threads))
    return [np.asarray(session.run(t[None]), dtype=np.float32) for t in tensors]


def rank_nodes(
    model_path: Path,
    cache: Path,
    settings: QuantSettings,
    tensors: Sequence[npt.NDArray[np.float32]],
    reference: Sequence[npt.NDArray[np.float32]],
    candidates: Sequence[tuple[str, str]],
    workdir: Path,
    *,
    threads: int = 1,
    progress: Callable[[str], None] | None = None,
) -> list[NodeSensitivity]:
    """Every candidate's sensitivity, most sensitive first."""
    scratch = workdir / "sensitivity.onnx"
    results: list[NodeSensitivity] = []
    for i, (name, op_type) in enumerate(candidates):
        quantize(model_path, scratch, cache, settings, only=[name])
        outputs = run_model(scratch, tensors, threads)
        errors = [float(np.mean((o - r) ** 2)) for o, r in zip(outputs, reference, strict=True)]
        results.append(NodeSensitivity(name, op_type, float(np.mean(errors)), max(errors)))
        if progress is not None and (i + 1) % 10 == 0:
            progress(f"sensitivity: {i + 1}/{len(candidates)} nodes measured")
    scratch.unlink(missing_ok=True)
    return sorted(results, key=lambda s: s.mse, reverse=True)


def pick_keep_float(ranking: Sequence[NodeSensitivity], budget: int) -> list[NodeSensitivity]:
    """The `budget` most sensitive nodes that measurably change the output (mse > 0)."""
    return [s for s in ranking if s.mse > 0][:budget]
