"""fp16 variant: float16 weights and compute, fp32 inputs/outputs, overflow-prone nodes kept fp32.

The conversion is onnxconverter-common's; what this adds is deciding which nodes must stay fp32,
from the activations the model actually produces on real images.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx

from modnet_batch.errors import ModnetBatchError

FP16_MAX = 65504.0
# Per-(sample, channel) spatial reductions whose fp16 accumulator can overflow although every
# element fits: the statistic is the sum a kernel accumulates over H x W.
_SQUARE_SUMS = {"InstanceNormalization"}
_SUMS = {"GlobalAveragePool"}


@dataclass(frozen=True)
class Fp16Keep:
    """A node kept fp32 and why."""

    node: str
    op_type: str
    reason: str
    statistic: float | None = None  # the measured value that exceeds FP16_MAX, if any


def overflow_risks(
    model_path: Path, tensors: Sequence[npt.NDArray[np.float32]], threads: int = 1
) -> list[Fp16Keep]:
    """Nodes whose fp16 accumulation or output would exceed the fp16 range on these inputs.

    For InstanceNormalization: the per-channel sum of x^2 (what a one-pass variance kernel
    accumulates; the conservative choice, as backends differ); for GlobalAveragePool: the sum of
    |x|; for every node: max |output|.
    """
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    float_outputs = _float_tensors(model)
    watched = {n.input[0]: n for n in model.graph.node if n.op_type in _SQUARE_SUMS | _SUMS}
    graph_outputs = {o.name for o in model.graph.output}
    for name in sorted(set(float_outputs) | set(watched)):
        if name not in graph_outputs and name in float_outputs:
            model.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    input_name = session.get_inputs()[0].name
    peak: dict[str, float] = {}
    reduced: dict[str, float] = {}
    for tensor in tensors:
        for name, value in zip(names, session.run(None, {input_name: tensor[None]}), strict=True):
            peak[name] = max(peak.get(name, 0.0), float(np.abs(value).max(initial=0.0)))
            node = watched.get(name)
            if node is not None and value.ndim >= 3:
                reduced[node.name] = max(reduced.get(node.name, 0.0), _reduction(node, value))
    risks: list[Fp16Keep] = []
    for node in model.graph.node:
        if node.name in reduced and reduced[node.name] > FP16_MAX:
            what = "sum of x^2" if node.op_type in _SQUARE_SUMS else "sum of |x|"
            risks.append(
                Fp16Keep(
                    node.name,
                    node.op_type,
                    f"per-channel {what} reaches {reduced[node.name]:.3g} > fp16 max {FP16_MAX:g}"
                    " on the check images: an fp16 accumulator overflows",
                    reduced[node.name],
                )
            )
            continue
        top = max((peak.get(o, 0.0) for o in node.output), default=0.0)
        if top > FP16_MAX:
            risks.append(
                Fp16Keep(
                    node.name,
                    node.op_type,
                    f"output magnitude reaches {top:.3g} > fp16 max {FP16_MAX:g}",
                    top,
                )
            )
    return risks


def convert_fp16(
    source: Path, dest: Path, keep_nodes: Sequence[str], keep_op_types: Sequence[str]
) -> list[str]:
    """Write the fp16 model; returns onnxconverter-common's default op block list (kept fp32)."""
    from onnxconverter_common.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(source))
    # A custom op_block_list replaces the default one, which must stay (Resize's scales input
    # would become fp16, which is invalid).
    block = list(dict.fromkeys([*DEFAULT_OP_BLOCK_LIST, *keep_op_types]))
    try:
        with warnings.catch_warnings():
            # It warns once per weight below 1e-7 that it clamps: expected, and not actionable.
            warnings.simplefilter("ignore", UserWarning)
            converted = convert_float_to_float16(
                model, keep_io_types=True, op_block_list=block, node_block_list=list(keep_nodes)
            )
    except Exception as exc:  # the converter raises plain exceptions on graphs it cannot handle
        raise ModnetBatchError(
            f"onnxconverter-common could not convert {source} to fp16 ({exc}); keep the failing "
            "op types in fp32 with fp16.keep_float"
        ) from exc
    onnx.save(converted, str(dest))
    return list(DEFAULT_OP_BLOCK_LIST)


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = list(inferred.graph.value_info) + list(inferred.graph.output)
    return {v.name for v in values if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}


def _reduction(node: onnx.NodeProto, x: npt.NDArray[np.float32]) -> float:
    flat = x.reshape(x.shape[0], x.shape[1], -1).astype(np.float64)
    if node.op_type in _SQUARE_SUMS:
        return float((flat * flat).sum(axis=2).max())
    return float(np.abs(flat).sum(axis=2).max())
