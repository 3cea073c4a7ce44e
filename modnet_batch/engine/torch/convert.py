"""MODNet's ONNX graph as a torch module, by a converter of the project's own.

Two steps, so that the slow one runs once per model:

1. `read_program(path)` (needs `onnx`): the graph as plain data, a `Program`: the node list
   (op type, input and output names, attributes as ints, floats, strings and lists) and every
   initializer and Constant value as an array. Ops outside `SUPPORTED_OPS` (e.g. the QDQ ops of
   an int8 build) are refused here, in one line that names them.
2. `build_module(program)`: a `torch.fx.GraphModule` generated from the node list. Everything is
   decided at this step: constants become buffers or Python numbers, Slice bounds become Python
   slices, Resize scales Python floats. Shape arithmetic (Shape -> Gather -> Unsqueeze ->
   Concat -> Reshape/Expand, MODNet's SE block) is evaluated on host values whose elements
   are ints or fx nodes reading `x.size(i)`, so batch, height and width stay dynamic and the
   forward is one flat generated function with no per-node dispatch, which torch.compile and
   CUDA graphs can take as it is.

`convert()` does both and compares the module with onnxruntime on check inputs; `load_program()`
does that once per model file and torch version and caches the result beside the model (see
`cache_path`). The op set is MODNet's (opset 11), plus Cast (the fp16 build keeps float32 I/O
and some fp32 nodes with Cast) and the few ops of the tests' models; Resize reproduces
onnxruntime for the modes listed at `_resize`.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import operator
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.fx
import torch.nn.functional as F

from modnet_batch.cache import cache_dir
from modnet_batch.digest import sha256_file
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

_ONNX_DTYPES: dict[int, torch.dtype] = {
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
_NP_DTYPES: dict[torch.dtype, type[np.generic]] = {
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
_INT64_MAX = 2**63 - 1
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


# ---------------------------------------------------------------------------------------------
# Step 2: Program -> torch.fx.GraphModule


@dataclass(frozen=True)
class _Tensor:
    """A value computed by the module: an fx node and its rank."""

    node: torch.fx.Node
    rank: int


_Value = _Tensor | HostArray


def _instance_norm(
    x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, eps: float, in_float32: bool
) -> torch.Tensor:
    """ONNX InstanceNormalization (biased variance per sample and channel); in float32 for
    half-precision inputs when `in_float32`, as MODNet's IBNorm variances overflow fp16."""
    if in_float32 and x.dtype != torch.float32:
        y = F.instance_norm(x.float(), weight=scale.float(), bias=bias.float(), eps=eps)
        return y.to(x.dtype)
    return F.instance_norm(x, weight=scale, bias=bias, eps=eps)


def _expand(x: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """ONNX Expand: broadcast both ways (a 1 in `shape` keeps x's dimension)."""
    target = torch.broadcast_shapes(x.shape, tuple(shape))  # type: ignore[no-untyped-call]
    return torch.broadcast_to(x, target)


def _resize(
    x: torch.Tensor,
    scales: tuple[float, ...] | None,
    sizes: list[int] | None,
    mode: str,
    coordinates: str,
) -> torch.Tensor:
    """ONNX Resize over the spatial axes as onnxruntime computes it, for these modes:

    - linear + pytorch_half_pixel (MODNet's) / half_pixel: F.interpolate, align_corners=False,
      with the given scales (output = floor(in * scale), source = (dst + 0.5) / scale - 0.5,
      clamped); pytorch_half_pixel maps an output axis of length 1 to source 0, which
      F.interpolate does not, so such an axis is first narrowed to its first element;
    - linear + align_corners: F.interpolate(size=..., align_corners=True);
    - nearest + asymmetric + floor: F.interpolate "nearest" (source = floor(dst / scale));
    - nearest + half_pixel + round_prefer_ceil: "nearest-exact".
    """
    spatial = x.shape[2:]
    if sizes is not None:
        out = [int(s) for s in sizes[2:]]
        factors: list[float] | None = None
    else:
        assert scales is not None
        factors = list(scales[2:])
        out = [math.floor(n * s) for n, s in zip(spatial, factors, strict=True)]
    if mode == "nearest":
        kind = "nearest-exact" if coordinates == "half_pixel" else "nearest"
        if factors is None:
            return F.interpolate(x, size=out, mode=kind)
        return F.interpolate(x, scale_factor=factors, mode=kind, recompute_scale_factor=False)
    kind = {3: "linear", 4: "bilinear", 5: "trilinear"}[x.dim()]
    if coordinates == "align_corners":
        return F.interpolate(x, size=out, mode=kind, align_corners=True)
    if coordinates == "pytorch_half_pixel" and 1 in out:
        for axis, n in enumerate(out):
            if n == 1:
                x = x.narrow(axis + 2, 0, 1)
        if factors is None:
            return F.interpolate(x, size=out, mode=kind, align_corners=False)
        factors = [1.0 if n == 1 else s for n, s in zip(out, factors, strict=True)]
    if factors is None:
        return F.interpolate(x, size=out, mode=kind, align_corners=False)
    return F.interpolate(
        x, scale_factor=factors, mode=kind, align_corners=False, recompute_scale_factor=False
    )


_RESIZE_MODES = {
    ("linear", "pytorch_half_pixel"),
    ("linear", "half_pixel"),
    ("linear", "align_corners"),
    ("nearest", "asymmetric"),
    ("nearest", "half_pixel"),
}
_NEAREST_ROUNDING = {"asymmetric": "floor", "half_pixel": "round_prefer_ceil"}


class _Builder:
    """Walks the program once, emitting fx nodes for tensor ops and evaluating host values."""

    def __init__(self, program: Program, norm_in_float32: bool) -> None:
        self.program = program
        self.norm_in_float32 = norm_in_float32
        self.graph = torch.fx.Graph()
        self.root = torch.nn.Module()
        self.values: dict[str, _Value] = dict(program.tensors)
        self.names = {id(v): k for k, v in program.tensors.items()}
        self.attrs: dict[str, torch.fx.Node] = {}
        self.node: OpNode | None = None

    # -- values ------------------------------------------------------------------------------

    def refuse(self, what: str) -> ModnetBatchError:
        where = self.node.describe() if self.node else "the graph"
        return ModnetBatchError(
            f"{where}: {what}, which the torch engine does not convert; {UNSUPPORTED_HINT}"
        )

    def get(self, index: int) -> _Value | None:
        assert self.node is not None
        names = self.node.inputs
        if index >= len(names) or not names[index]:
            return None
        try:
            return self.values[names[index]]
        except KeyError:
            raise self.refuse(f"input {names[index]!r} is computed nowhere") from None

    def need(self, index: int) -> _Value:
        value = self.get(index)
        if value is None:
            raise self.refuse(f"input {index} is missing")
        return value

    def host(self, index: int) -> HostArray | None:
        """A conversion-time value (constant or shape), or None when omitted."""
        value = self.get(index)
        if isinstance(value, _Tensor):
            raise self.refuse(f"input {index} is computed at run time, not a constant or a shape")
        return value

    def numbers(self, index: int) -> list[Any] | None:
        value = self.host(index)
        return None if value is None else [_plain(v) for v in value.ravel()]

    def tensor(self, value: _Value) -> torch.fx.Node:
        """The fx node of a value, registering a host constant as a buffer on first use."""
        if isinstance(value, _Tensor):
            return value.node
        if value.dtype == object:
            raise self.refuse("a shape value is used as tensor data")
        name = self.names.get(id(value))
        if name is not None and name in self.attrs:
            return self.attrs[name]
        learned = self.node is not None and self.node.op in {
            "Conv",
            "MatMul",
            "BatchNormalization",
            "InstanceNormalization",
        }
        data = torch.from_numpy(np.array(value))
        target = f"c{len(self.attrs)}_{re.sub(r'[^0-9A-Za-z_]', '_', name or 'folded')}"[:60]
        if learned and data.is_floating_point():
            self.root.register_parameter(target, torch.nn.Parameter(data, requires_grad=False))
        else:
            self.root.register_buffer(target, data)
        node = self.graph.get_attr(target)
        self.attrs[name or target] = node
        return node

    def rank(self, value: _Value) -> int:
        return value.rank if isinstance(value, _Tensor) else value.ndim

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.fx.Node:
        return self.graph.call_function(fn, tuple(args), kwargs)

    def out(self, value: _Value, index: int = 0) -> None:
        assert self.node is not None
        self.values[self.node.outputs[index]] = value

    # -- build -------------------------------------------------------------------------------

    def build(self) -> torch.fx.GraphModule:
        x = self.graph.placeholder("x")
        self.values[self.program.input_name] = _Tensor(x, 4)
        for node in self.program.nodes:
            self.node = node
            emit = _EMITTERS.get(node.op)
            if emit is None:
                raise self.refuse("its op type")
            emit(self, node)
        self.node = None
        result = self.values.get(self.program.output_name)
        if not isinstance(result, _Tensor):
            raise self.refuse(f"the output {self.program.output_name!r} is not computed")
        self.graph.output(result.node)
        self.graph.eliminate_dead_code()
        self.graph.lint()
        module = torch.fx.GraphModule(self.root, self.graph, class_name="ModnetTorch")
        module.eval()
        return module


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _as_host(value: Any) -> HostArray:
    """numpy indexing of an object array returns a bare element: wrap it as a 0-d array."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, np.generic):
        return np.asarray(value)
    wrapped = np.empty((), dtype=object)
    wrapped[()] = value
    return wrapped


def _symbolic(value: HostArray) -> bool:
    return value.dtype == object and any(isinstance(v, torch.fx.Node) for v in value.ravel())


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _shape_list(b: _Builder, value: HostArray) -> list[Any]:
    if value.ndim != 1:
        raise b.refuse("a shape input that is not a 1-D list")
    return [_plain(v) for v in value]


# -- emitters: one per op type ---------------------------------------------------------------


# onnxruntime's CPU Sigmoid is MLAS's logistic kernel: Eigen's rational approximation on
# [-18, 18], evaluated with fused multiply-adds. It reaches 1.0 from x ~ 15.8, where the exact
# sigmoid gives 0.9999999 up to x ~ 16.6, and the seed protocols' uint8(alpha * 255) truncation
# turns that into 254 instead of 255: on ppm100-dev about 1,400 saturated pixels per image, the
# largest difference between the engines. Evaluated as MLAS does (each multiply-add rounded once
# to float32, computed through float64: exact products), the truncated values agree everywhere
# on 3 million probes (-30..30 and N(0, 8)).
_LOGISTIC_P = (
    4.37031012579801e-11,
    1.15627324459942e-07,
    6.08574864600143e-05,
    8.51377133304701e-03,
    2.48287947061529e-01,
)  # alpha_9 .. alpha_1
_LOGISTIC_Q = (
    6.10247389755681e-13,
    5.76102136993427e-09,
    6.29106785017040e-06,
    1.70198817374094e-03,
    1.16817656904453e-01,
    9.93151921023180e-01,
)  # beta_10 .. 0


def _f32(value: float) -> float:
    return float(np.float32(value))


_P32 = tuple(_f32(c) for c in _LOGISTIC_P)
_Q32 = tuple(_f32(c) for c in _LOGISTIC_Q)


def onnxruntime_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Sigmoid as onnxruntime's CPU provider computes it (see _LOGISTIC_P), in x's dtype."""
    f32, f64 = torch.float32, torch.float64
    v = x.to(f32).clamp(-18.0, 18.0)
    v2 = v * v

    def horner(coefficients: tuple[float, ...]) -> torch.Tensor:
        acc = torch.full_like(v2, coefficients[0])
        for c in coefficients[1:]:
            acc = (acc.to(f64) * v2.to(f64) + c).to(f32)  # one rounding, as an FMA
        return acc

    p = horner(_P32) * v
    q = horner(_Q32)
    return (p / q + 0.5).to(x.dtype)


def _identity(b: _Builder, n: OpNode) -> None:
    b.out(b.need(0))


def _unary(fn: Callable[..., Any]) -> Callable[[_Builder, OpNode], None]:
    def emit(b: _Builder, n: OpNode) -> None:
        x = b.need(0)
        if not isinstance(x, _Tensor):
            x = _Tensor(b.tensor(x), x.ndim)
        b.out(_Tensor(b.call(fn, x.node), x.rank))

    return emit


def _binary(fn: Callable[[Any, Any], Any]) -> Callable[[_Builder, OpNode], None]:
    def emit(b: _Builder, n: OpNode) -> None:
        left, right = b.need(0), b.need(1)
        if not isinstance(left, _Tensor) and not isinstance(right, _Tensor):
            if _symbolic(left) or _symbolic(right):
                raise b.refuse("arithmetic on shape values")
            if fn is operator.truediv and left.dtype.kind in "iu":
                raise b.refuse("integer division of constants")
            b.out(np.asarray(fn(left, right)).astype(np.result_type(left, right)))
            return

        def operand(v: _Value) -> Any:
            if not isinstance(v, _Tensor) and v.size == 1 and v.ndim == 0 and v.dtype.kind == "f":
                return float(v)  # a Python scalar keeps the tensor's dtype (fp16 stays fp16)
            return b.tensor(v)

        rank = max(b.rank(left), b.rank(right))
        b.out(_Tensor(b.call(fn, operand(left), operand(right)), rank))

    return emit


def _conv(b: _Builder, n: OpNode) -> None:
    x, w, bias = b.need(0), b.need(1), b.get(2)
    assert isinstance(x, _Tensor)
    if n.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise b.refuse(f"auto_pad={n.attr('auto_pad')}")
    dims = b.rank(w) - 2
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(dims)
    if fn is None:
        raise b.refuse(f"a {dims}-D convolution")
    pads = list(n.attr("pads", [0] * 2 * dims))
    begin, end = pads[:dims], pads[dims:]
    node = x.node
    if begin != end:  # asymmetric: pad explicitly, F.pad takes the last axis first
        flat = [p for axis in reversed(range(dims)) for p in (begin[axis], end[axis])]
        node = b.call(F.pad, node, flat)
        begin = [0] * dims
    args = (node, b.tensor(w), None if bias is None else b.tensor(bias))
    kwargs = {
        "stride": tuple(n.attr("strides", [1] * dims)),
        "padding": tuple(begin),
        "dilation": tuple(n.attr("dilations", [1] * dims)),
        "groups": int(n.attr("group", 1)),
    }
    b.out(_Tensor(b.call(fn, *args, **kwargs), x.rank))


def _clip(b: _Builder, n: OpNode) -> None:
    x = b.need(0)
    assert isinstance(x, _Tensor)
    if b.program.opset < 11:
        low, high = n.attr("min"), n.attr("max")
    else:
        lows, highs = b.numbers(1), b.numbers(2)
        low = None if lows is None else float(lows[0])
        high = None if highs is None else float(highs[0])
    if low == 0.0 and high is None:
        b.out(_Tensor(b.call(torch.relu, x.node), x.rank))
        return
    b.out(_Tensor(b.call(torch.clamp, x.node, low, high), x.rank))


def _concat(b: _Builder, n: OpNode) -> None:
    parts = [b.need(i) for i in range(len(n.inputs))]
    axis = int(n.attr("axis"))
    if not any(isinstance(p, _Tensor) for p in parts):
        hosts = [p for p in parts if not isinstance(p, _Tensor)]
        objects = any(h.dtype == object for h in hosts)
        b.out(np.concatenate([h.astype(object) if objects else h for h in hosts], axis=axis))
        return
    rank = b.rank(parts[0])
    b.out(_Tensor(b.call(torch.cat, [b.tensor(p) for p in parts], _axis(axis, rank)), rank))


def _shape(b: _Builder, n: OpNode) -> None:
    x = b.need(0)
    if not isinstance(x, _Tensor):
        b.out(np.asarray(x.shape, dtype=np.int64))
        return
    size = b.graph.call_method("size", (x.node,))
    dims = np.empty(x.rank, dtype=object)
    for i in range(x.rank):
        dims[i] = b.call(operator.getitem, size, i)
    b.out(dims)


def _gather(b: _Builder, n: OpNode) -> None:
    data = b.need(0)
    indices = b.host(1)
    assert indices is not None
    axis = int(n.attr("axis", 0))
    if not isinstance(data, _Tensor):
        b.out(_as_host(np.take(data, indices.astype(np.int64), axis=axis)))
        return
    axis = _axis(axis, data.rank)
    if indices.ndim == 0:
        b.out(_Tensor(b.call(torch.select, data.node, axis, int(indices)), data.rank - 1))
        return
    picked = b.call(torch.index_select, data.node, axis, b.tensor(indices.astype(np.int64)))
    if indices.ndim != 1:
        raise b.refuse("Gather with multi-dimensional indices on a tensor")
    b.out(_Tensor(picked, data.rank))


def _unsqueeze(b: _Builder, n: OpNode) -> None:
    data = b.need(0)
    axes = n.attr("axes") if b.program.opset < 13 else b.numbers(1)
    assert axes is not None
    rank = b.rank(data) + len(axes)
    ordered = sorted(_axis(int(a), rank) for a in axes)
    if not isinstance(data, _Tensor):
        for a in ordered:
            data = np.expand_dims(data, a)
        b.out(data)
        return
    node = data.node
    for a in ordered:
        node = b.call(torch.unsqueeze, node, a)
    b.out(_Tensor(node, rank))


def _reshape(b: _Builder, n: OpNode) -> None:
    data = b.need(0)
    shape_value = b.host(1)
    assert shape_value is not None
    shape = _shape_list(b, shape_value)
    if n.attr("allowzero", 0):
        raise b.refuse("allowzero=1")
    if not isinstance(data, _Tensor):
        if _symbolic(shape_value):
            raise b.refuse("a constant reshaped to a run-time shape")
        target = [data.shape[i] if s == 0 else s for i, s in enumerate(shape)]
        b.out(np.reshape(data, target))
        return
    size = None
    dims: list[Any] = []
    for i, s in enumerate(shape):
        if isinstance(s, int) and s == 0:  # ONNX: 0 copies the input's dimension
            size = size or b.graph.call_method("size", (data.node,))
            dims.append(b.call(operator.getitem, size, i))
        else:
            dims.append(s)
    b.out(_Tensor(b.call(torch.reshape, data.node, dims), len(dims)))


def _expand_node(b: _Builder, n: OpNode) -> None:
    data = b.need(0)
    shape_value = b.host(1)
    assert shape_value is not None
    shape = _shape_list(b, shape_value)
    node = b.tensor(data)
    b.out(_Tensor(b.call(_expand, node, shape), max(b.rank(data), len(shape))))


def _matmul(b: _Builder, n: OpNode) -> None:
    left, right = b.need(0), b.need(1)
    rank = max(b.rank(left), b.rank(right))
    b.out(_Tensor(b.call(torch.matmul, b.tensor(left), b.tensor(right)), rank))


def _global_average_pool(b: _Builder, n: OpNode) -> None:
    x = b.need(0)
    assert isinstance(x, _Tensor)
    node = b.call(torch.mean, x.node, tuple(range(2, x.rank)), keepdim=True)
    b.out(_Tensor(node, x.rank))


def _batch_norm(b: _Builder, n: OpNode) -> None:
    x = b.need(0)
    assert isinstance(x, _Tensor)
    if len([o for o in n.outputs if o]) > 1:
        raise b.refuse("training-mode outputs")
    scale, bias, mean, var = (b.tensor(b.need(i)) for i in range(1, 5))
    eps = float(n.attr("epsilon", 1e-5))
    node = b.call(F.batch_norm, x.node, mean, var, scale, bias, False, 0.0, eps)
    b.out(_Tensor(node, x.rank))


def _instance_norm_node(b: _Builder, n: OpNode) -> None:
    x = b.need(0)
    assert isinstance(x, _Tensor)
    scale, bias = b.tensor(b.need(1)), b.tensor(b.need(2))
    eps = float(n.attr("epsilon", 1e-5))
    node = b.call(_instance_norm, x.node, scale, bias, eps, b.norm_in_float32)
    b.out(_Tensor(node, x.rank))


def _resize_node(b: _Builder, n: OpNode) -> None:
    x = b.need(0)
    assert isinstance(x, _Tensor)
    if b.program.opset < 11:
        scales, sizes, coordinates = b.numbers(1), None, "asymmetric"
    else:
        scales, sizes = b.numbers(2), b.numbers(3)
        coordinates = str(n.attr("coordinate_transformation_mode", "half_pixel"))
    mode = str(n.attr("mode", "nearest"))
    if (mode, coordinates) not in _RESIZE_MODES:
        raise b.refuse(f"mode={mode} with coordinate_transformation_mode={coordinates}")
    if mode == "nearest":
        rounding = str(n.attr("nearest_mode", "round_prefer_floor"))
        if rounding != _NEAREST_ROUNDING[coordinates]:
            raise b.refuse(f"nearest_mode={rounding} with {coordinates}")
    if x.rank not in (3, 4, 5):
        raise b.refuse(f"a rank-{x.rank} input")
    scale_tuple: tuple[float, ...] | None = None
    if sizes:
        if len(sizes) != x.rank:
            raise b.refuse(f"sizes of {len(sizes)} axes for a rank-{x.rank} input")
    elif scales:
        scale_tuple = tuple(float(s) for s in scales)
        if scale_tuple[:2] != (1.0, 1.0) or len(scale_tuple) != x.rank:
            raise b.refuse(f"scales {list(scale_tuple)} (only spatial axes may be resized)")
        sizes = None
    else:
        raise b.refuse("neither scales nor sizes")
    node = b.call(_resize, x.node, scale_tuple, sizes, mode, coordinates)
    b.out(_Tensor(node, x.rank))


def _slice(b: _Builder, n: OpNode) -> None:
    data = b.need(0)
    if b.program.opset < 10:
        starts, ends = list(n.attr("starts")), list(n.attr("ends"))
        axes: list[Any] | None = n.attr("axes")
        steps: list[Any] | None = None
    else:
        starts_v, ends_v = b.numbers(1), b.numbers(2)
        assert starts_v is not None and ends_v is not None
        starts, ends, axes, steps = starts_v, ends_v, b.numbers(3), b.numbers(4)
    rank = b.rank(data)
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index: list[slice] = [slice(None)] * rank
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        if not all(isinstance(v, int) for v in (start, end, step)):
            raise b.refuse("Slice bounds computed at run time")
        if step < 1:
            raise b.refuse(f"step {step}")
        stop = None if end >= _INT64_MAX // 2 else end
        index[_axis(int(axis), rank)] = slice(start, stop, None if step == 1 else step)
    while index and index[-1] == slice(None):
        index.pop()
    if not isinstance(data, _Tensor):
        b.out(_as_host(data[tuple(index)]))
        return
    b.out(_Tensor(b.call(operator.getitem, data.node, tuple(index)), rank))


def _cast(b: _Builder, n: OpNode) -> None:
    data = b.need(0)
    dtype = _ONNX_DTYPES.get(int(n.attr("to")))
    if dtype is None:
        raise b.refuse(f"a cast to ONNX type {n.attr('to')}")
    if not isinstance(data, _Tensor):
        if data.dtype == object:  # shape values are integers already
            if dtype.is_floating_point:
                raise b.refuse("a shape value cast to float")
            b.out(data)
        else:
            b.out(data.astype(_NP_DTYPES[dtype]))
        return
    b.out(_Tensor(b.graph.call_method("to", (data.node, dtype)), data.rank))


_EMITTERS: dict[str, Callable[[_Builder, OpNode], None]] = {
    "Identity": _identity,
    "Relu": _unary(torch.relu),
    "Sigmoid": _unary(onnxruntime_sigmoid),
    "Add": _binary(operator.add),
    "Sub": _binary(operator.sub),
    "Mul": _binary(operator.mul),
    "Div": _binary(operator.truediv),
    "Conv": _conv,
    "Clip": _clip,
    "Concat": _concat,
    "Shape": _shape,
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Reshape": _reshape,
    "Expand": _expand_node,
    "MatMul": _matmul,
    "GlobalAveragePool": _global_average_pool,
    "BatchNormalization": _batch_norm,
    "InstanceNormalization": _instance_norm_node,
    "Resize": _resize_node,
    "Slice": _slice,
    "Cast": _cast,
}


def build_module(program: Program, *, norm_in_float32: bool = True) -> torch.fx.GraphModule:
    """The program as a GraphModule on the CPU in the graph's own dtypes: forward(x) maps
    [B,3,H,W] in [-1, 1] to [B,1,H,W] in [0, 1]. `norm_in_float32`: InstanceNormalization of a
    half-precision input is computed in float32 (see `_instance_norm`)."""
    return _Builder(program, norm_in_float32).build()


# ---------------------------------------------------------------------------------------------
# The check against onnxruntime


@dataclass(frozen=True)
class CheckResult:
    """How far the converted module's alpha lies from onnxruntime's on the check inputs."""

    max_abs_diff: float
    mean_abs_diff: float
    inputs: int
    shapes: list[list[int]]
    tolerance: float
    reference: str  # what the module was compared with

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance  # NaN fails

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "mean_abs_diff": self.mean_abs_diff,
            "inputs": self.inputs,
            "shapes": self.shapes,
            "tolerance": self.tolerance,
            "reference": self.reference,
            "passed": self.passed,
        }


CHECK_SEED = 7  # the synthetic check portraits' set


def synthetic_check_inputs(count: int = 4, protocol: str = "seed-area") -> list[HostArray]:
    """`count` synthetic portraits (modnet_batch.data.synthetic) preprocessed as `protocol`
    does: the check a conversion gets when no real images are given."""
    from modnet_batch.data.synthetic import synthetic_sample
    from modnet_batch.protocol import get_protocol

    preprocess = get_protocol(protocol).preprocess
    return [preprocess(synthetic_sample(i, seed=CHECK_SEED).image) for i in range(count)]


def check_inputs_from_images(
    paths: Sequence[str | Path], protocol: str = "seed-area"
) -> list[npt.NDArray[np.float32]]:
    """Image files decoded and preprocessed exactly as a job with `protocol` does: float32
    [3,H,W] arrays in [-1, 1]."""
    from modnet_batch.data.decode import decode_image
    from modnet_batch.protocol import get_protocol

    preprocess = get_protocol(protocol).preprocess
    return [preprocess(decode_image(Path(p).read_bytes(), name=str(p))) for p in paths]


def compare_with_onnxruntime(
    module: torch.nn.Module,
    model_path: str | Path,
    inputs: Sequence[npt.NDArray[np.float32]],
    tolerance: float,
    threads: int = 1,
) -> CheckResult:
    """Run `module` (on the CPU, as it is) and onnxruntime's CPU session of `model_path` on
    each input (batch 1); max and mean |diff| over every output pixel."""
    import onnxruntime as ort

    from modnet_batch.engine.base import EngineSpec
    from modnet_batch.engine.onnxruntime import OnnxRuntimeEngine

    if not inputs:
        raise ModnetBatchError("the torch conversion check needs at least one input")
    # spin off: onnxruntime's spinning threads would compete with torch's for the cores
    spec = EngineSpec(model=str(model_path), threads=threads, spin=False)
    session = OnnxRuntimeEngine().open(spec)
    batches = [np.ascontiguousarray(x[None], dtype=np.float32) for x in inputs]
    wanted = [session.run(batch).astype(np.float64) for batch in batches]
    worst, total, count = 0.0, 0.0, 0
    with torch.inference_mode():
        for batch, want in zip(batches, wanted, strict=True):
            got = module(torch.from_numpy(batch)).float().numpy().astype(np.float64)
            if got.shape != want.shape:
                raise ModnetBatchError(
                    f"the torch conversion of {model_path} gives shape {list(got.shape)} where "
                    f"onnxruntime gives {list(want.shape)}; {UNSUPPORTED_HINT}"
                )
            diff = np.abs(got - want)
            worst = max(worst, float(diff.max())) if np.isfinite(diff).all() else math.nan
            total += float(diff.sum())
            count += diff.size
    return CheckResult(
        max_abs_diff=worst,
        mean_abs_diff=total / count,
        inputs=len(inputs),
        shapes=[list(x.shape) for x in inputs],
        tolerance=tolerance,
        reference=f"onnxruntime {ort.__version__} {session.runs_on}",
    )


def convert(
    model_path: str | Path,
    check_inputs: Sequence[npt.NDArray[np.float32]],
    *,
    tolerance: float | None = None,
    threads: int = 1,
) -> tuple[Program, CheckResult]:
    """Read, build and check `model_path`; refuse (ModnetBatchError with the measured difference
    and the tolerance) a conversion whose alpha differs from onnxruntime's beyond `tolerance`
    (default `TOLERANCE` for the graph's precision)."""
    program = read_program(model_path)
    tol = TOLERANCE[program.precision] if tolerance is None else tolerance
    module = build_module(program)
    check = compare_with_onnxruntime(module, model_path, check_inputs, tol, threads)
    if not check.passed:
        raise ModnetBatchError(
            f"the torch conversion of {model_path} is refused: its alpha differs from "
            f"onnxruntime's by max |diff| {check.max_abs_diff:.3g} (mean "
            f"{check.mean_abs_diff:.3g}) on {check.inputs} check input(s), beyond the "
            f"tolerance {tol:g}; {UNSUPPORTED_HINT}"
        )
    return program, check


# ---------------------------------------------------------------------------------------------
# The conversion cache


@dataclass
class Converted:
    """A checked program, and where it came from."""

    program: Program
    record: dict[str, Any]  # source, source_sha256, torch, format, check, convert_seconds
    path: Path | None  # the cache file, None when nothing could be written
    from_cache: bool
    seconds: float  # spent converting or loading, here


def cache_name(model_path: str | Path, sha256: str) -> str:
    """The cache file's name: the model's name and content hash, torch's version, the format."""
    version = re.sub(r"[^0-9A-Za-z.]", "_", TORCH_VERSION)
    return f"{Path(model_path).stem}-{sha256[:16]}-torch{version}-p{PROGRAM_FORMAT}.pt"


def cache_paths(model_path: str | Path, sha256: str) -> list[Path]:
    """Where a conversion is looked for and written, in order: `<cache>/torch/`, then beside the
    ONNX file (for a cache directory that is not writable)."""
    name = cache_name(model_path, sha256)
    return [cache_dir() / "torch" / name, Path(model_path).resolve().parent / name]


def _read_cache(path: Path, sha256: str, tolerance: float | None) -> Converted | None:
    start = time.perf_counter()
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        record = saved["record"]
        ok = (
            record["source_sha256"] == sha256
            and record["torch"] == TORCH_VERSION
            and record["format"] == PROGRAM_FORMAT
            and (tolerance is None or record["check"]["max_abs_diff"] <= tolerance)
        )
        program = Program.from_plain(saved["program"]) if ok else None
    except Exception:  # absent, partial, or from another version: convert again
        return None
    if program is None:
        return None
    return Converted(program, record, path, True, time.perf_counter() - start)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[bool]:
    """Hold an exclusive lock beside `path` (workers opening the same model convert it once);
    yields False when the directory cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)


def load_program(
    model_path: str | Path,
    check_inputs: Callable[[], Sequence[npt.NDArray[np.float32]]] = synthetic_check_inputs,
    *,
    tolerance: float | None = None,
    threads: int = 1,
) -> Converted:
    """The checked program of `model_path` from the cache, converting and checking it once
    per model content, torch version and converter format. `check_inputs` is called only
    when a conversion runs. A cached conversion whose recorded difference exceeds an explicit
    `tolerance` is converted (and checked) again."""
    from modnet_batch.storage import atomic_write_bytes, atomic_write_json

    sha256 = sha256_file(model_path)
    paths = cache_paths(model_path, sha256)
    for path in paths:
        hit = _read_cache(path, sha256, tolerance)
        if hit is not None:
            return hit
    for path in paths:
        with _locked(path) as writable:
            if not writable:
                continue
            hit = _read_cache(path, sha256, tolerance)  # another worker converted meanwhile
            if hit is not None:
                return hit
            converted = _convert_record(model_path, sha256, check_inputs(), tolerance, threads)
            buffer = _serialise(converted)
            try:
                atomic_write_bytes(path, buffer)
                atomic_write_json(path.with_suffix(".json"), converted.record)
            except OSError:
                continue  # not writable after all: the next place, else uncached
            converted.path = path
            return converted
    return _convert_record(model_path, sha256, check_inputs(), tolerance, threads)


def _convert_record(
    model_path: str | Path,
    sha256: str,
    inputs: Sequence[npt.NDArray[np.float32]],
    tolerance: float | None,
    threads: int,
) -> Converted:
    start = time.perf_counter()
    program, check = convert(model_path, inputs, tolerance=tolerance, threads=threads)
    seconds = time.perf_counter() - start
    record = {
        "source": str(model_path),
        "source_sha256": sha256,
        "torch": TORCH_VERSION,
        "format": PROGRAM_FORMAT,
        "precision": program.precision,
        "nodes": len(program.nodes),
        "check": check.to_dict(),
        "convert_seconds": round(seconds, 3),
    }
    return Converted(program, record, None, False, seconds)


def _serialise(converted: Converted) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save({"record": converted.record, "program": converted.program.to_plain()}, buffer)
    return buffer.getvalue()


def describe(converted: Converted) -> str:
    """One line for logs: where the program came from and its check."""
    check = converted.record["check"]
    origin = "cached" if converted.from_cache else "converted"
    return (
        f"{origin} {converted.record['source']} ({converted.seconds:.2f} s): max |diff| "
        f"{check['max_abs_diff']:.2g} vs {check['reference']} on {check['inputs']} input(s), "
        f"tolerance {check['tolerance']:g}"
    )


__all__ = [
    "SUPPORTED_OPS",
    "TOLERANCE",
    "CheckResult",
    "Converted",
    "OpNode",
    "Program",
    "build_module",
    "check_inputs_from_images",
    "compare_with_onnxruntime",
    "convert",
    "load_program",
    "read_program",
    "synthetic_check_inputs",
]
