"""Step 1 of the ONNX -> torch conversion (`read_program`, needs `onnx`): the graph as plain
data, a `Program`: the node list (op type, input and output names, attributes as ints, floats,
strings and lists) and every initializer and Constant value as an array. Ops outside
`SUPPORTED_OPS` (e.g. the QDQ ops of an int8 build) are refused here, in one line that names
them. The op set is MODNet's (opset 11), plus Cast (the fp16 build keeps float32 I/O and some
fp32 nodes with Cast) and the few ops of the tests' models."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.fx

from modnet_batch.errors import ModnetBatchError

PROGRAM_FORMAT = 2  # bump when the program or its meaning changes: old cache files are ignored

SUPPORTED_OPS = frozenset(
    {
        # MODNet's 19 (opset 11)
        "Constant",
        "Conv",
        "Clip",
        "Slice",
        "Concat",
        "Relu",
        "BatchNormalization",
        "InstanceNormalization",
        "Add",
        "Resize",
        "Unsqueeze",
        "Shape",
        "Gather",
        "Reshape",
        "MatMul",
        "Sigmoid",
        "GlobalAveragePool",
        "Expand",
        "Mul",
        # the fp16 build's casts, and cheap neighbours
        "Cast",
        "Identity",
        "Sub",
        "Div",
    }
)

# Max |torch - onnxruntime| on alpha in [0, 1] that a conversion may show on its check inputs.
# fp32: both compute in float32 with other kernels (summation orders), and MODNet's ~70 layers
# amplify the 1e-7 rounding of its first convolution: measured on 46 real images (ppm100-dev,
# p3m10k-sample; seed-area, 480x288) max 1.03e-4, median 9.5e-6, mean over pixels ~1e-7, and
# no kernel is "the" reference: onnxruntime's optimised and unoptimised graphs differ by up to
# 7.5e-5, float64 torch and onnxruntime by 6.1e-5. 5e-4 is 5x that floor and 1/8 of the 1/255
# step the seed protocols store, while the subtlest wrong conversion measured (an epsilon of
# 1e-3 instead of 1e-5 in every normalisation) moves alpha by >= 1.25e-3 on every check input
# and a wrong Resize mode by ~1. fp16 graphs (an fp16 build, against onnxruntime running the
# same graph): fp16 rounding where the alpha is steep, measured max 0.185 (mean 2e-3), as
# onnxruntime's own fp16 vs fp32 (0.265); 0.5 still refuses a wrong Resize mode (max ~1).
TOLERANCE = {"fp32": 5e-4, "fp16": 0.5}
UNSUPPORTED_HINT = "use --engine onnxruntime for this model"

ONNX_DTYPES: dict[int, torch.dtype] = {
    1: torch.float32,
    2: torch.uint8,
    3: torch.int8,
    5: torch.int16,
    6: torch.int32,
    7: torch.int64,
    9: torch.bool,
    10: torch.float16,
    11: torch.float64,
    16: torch.bfloat16,
}
NP_DTYPES: dict[torch.dtype, type[np.generic]] = {
    torch.float32: np.float32,
    torch.float16: np.float16,
    torch.float64: np.float64,
    torch.int64: np.int64,
    torch.int32: np.int32,
    torch.int16: np.int16,
    torch.int8: np.int8,
    torch.uint8: np.uint8,
    torch.bool: np.bool_,
}
INT64_MAX = 2**63 - 1
TORCH_VERSION = str(torch.__version__)  # a plain str: torch's TorchVersion is no safe global

Attr = int | float | str | list[int] | list[float] | list[str]
HostArray = npt.NDArray[Any]  # numeric, or object with int elements and fx nodes (sizes)


@dataclass(frozen=True)
class OpNode:
    """One ONNX node as plain data ("" stands for an omitted optional input)."""

    op: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Attr] = field(default_factory=dict)

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def describe(self) -> str:
        return f"{self.op} node {self.name or self.outputs[0]!r}"


@dataclass
class Program:
    """An ONNX graph as plain data: what the cache stores and `build_module` compiles."""

    input_name: str
    output_name: str
    opset: int
    nodes: list[OpNode]
    tensors: dict[str, npt.NDArray[Any]]  # initializers and Constant values, by value name

    @property
    def precision(self) -> str:
        """fp16 when the graph holds fp16 weights (the fp16 build), else fp32."""
        floats = {a.dtype for a in self.tensors.values() if a.dtype.kind == "f" and a.size > 1}
        return "fp16" if np.dtype(np.float16) in floats else "fp32"

    @property
    def ops(self) -> set[str]:
        return {n.op for n in self.nodes}

    def to_plain(self) -> dict[str, Any]:
        """Only dicts, lists, strings, numbers and tensors: loadable with weights_only=True."""
        return {
            "input_name": self.input_name,
            "output_name": self.output_name,
            "opset": self.opset,
            "nodes": [
                {
                    "op": n.op,
                    "name": n.name,
                    "inputs": list(n.inputs),
                    "outputs": list(n.outputs),
                    "attrs": dict(n.attrs),
                }
                for n in self.nodes
            ],
            "tensors": {k: torch.from_numpy(np.array(v)) for k, v in self.tensors.items()},
        }

    @classmethod
    def from_plain(cls, plain: dict[str, Any]) -> Program:
        nodes = [
            OpNode(
                op=d["op"],
                name=d["name"],
                inputs=tuple(d["inputs"]),
                outputs=tuple(d["outputs"]),
                attrs=dict(d["attrs"]),
            )
            for d in plain["nodes"]
        ]
        tensors = {k: t.numpy() for k, t in plain["tensors"].items()}
        return cls(
            input_name=plain["input_name"],
            output_name=plain["output_name"],
            opset=int(plain["opset"]),
            nodes=nodes,
            tensors=tensors,
        )


# ---------------------------------------------------------------------------------------------
# Step 1: ONNX -> Program


def read_program(path: str | Path) -> Program:
    """Read `path` into a Program; raise ModnetBatchError naming any op the converter lacks."""
    import onnx
    from onnx import numpy_helper

    from modnet_batch.engine.signature import check_signature

    signature = check_signature(path)
    model = onnx.load(str(path))
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    unsupported = sorted(
        {f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in graph.node} - SUPPORTED_OPS
    )
    if unsupported:
        int8 = any("Quant" in op or op.startswith("QLinear") for op in unsupported)
        raise ModnetBatchError(
            f"model {path} uses ONNX ops the torch engine does not convert: "
            f"{', '.join(unsupported)}{' (an int8 build)' if int8 else ''}; {UNSUPPORTED_HINT}"
        )
    tensors: dict[str, npt.NDArray[Any]] = {
        t.name: numpy_helper.to_array(t) for t in graph.initializer
    }
    nodes: list[OpNode] = []
    for node in graph.node:
        attrs: dict[str, Attr] = {}
        for a in node.attribute:
            value = onnx.helper.get_attribute_value(a)
            if isinstance(value, onnx.TensorProto):
                attrs[a.name] = "<tensor>"
                tensors[node.output[0]] = numpy_helper.to_array(value)
            elif isinstance(value, bytes):
                attrs[a.name] = value.decode()
            elif isinstance(value, int | float):
                attrs[a.name] = value
            elif isinstance(value, list) and all(isinstance(v, int | float) for v in value):
                attrs[a.name] = list(value)
            elif isinstance(value, list) and all(isinstance(v, bytes) for v in value):
                attrs[a.name] = [v.decode() for v in value]
            else:
                raise ModnetBatchError(
                    f"model {path}: {node.op_type} node {node.name!r} has attribute {a.name!r} "
                    f"of a kind the torch engine does not convert; {UNSUPPORTED_HINT}"
                )
        if node.op_type == "Constant":
            if node.output[0] not in tensors:
                tensors[node.output[0]] = _constant_value(node.output[0], attrs, path)
            continue  # its value is in `tensors`
        nodes.append(OpNode(node.op_type, node.name, tuple(node.input), tuple(node.output), attrs))
    return Program(
        input_name=signature.input_name,
        output_name=signature.output_name,
        opset=opset,
        nodes=nodes,
        tensors=tensors,
    )


def _constant_value(name: str, attrs: dict[str, Attr], path: str | Path) -> npt.NDArray[Any]:
    for key, dtype in (
        ("value_float", np.float32),
        ("value_floats", np.float32),
        ("value_int", np.int64),
        ("value_ints", np.int64),
    ):
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    raise ModnetBatchError(
        f"model {path}: Constant {name!r} has no value the torch engine reads; {UNSUPPORTED_HINT}"
    )
