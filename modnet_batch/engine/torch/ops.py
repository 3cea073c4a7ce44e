"""Step 2 of the conversion, the ops: one emitter per ONNX op type (`EMITTERS`) and
`build_module`, the Program as a torch.fx.GraphModule. Resize reproduces onnxruntime for the
modes listed at `graph.resize_like_onnxruntime`; Sigmoid is onnxruntime's own CPU approximation
(`onnxruntime_sigmoid`)."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F

from modnet_batch.engine.torch.graph import (
    NEAREST_ROUNDING,
    RESIZE_MODES,
    Builder,
    Traced,
    Value,
    as_host,
    expand_to,
    instance_norm,
    norm_axis,
    resize_like_onnxruntime,
    shape_list,
    symbolic,
)
from modnet_batch.engine.torch.program import INT64_MAX, NP_DTYPES, ONNX_DTYPES, OpNode, Program

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


def _identity(b: Builder, n: OpNode) -> None:
    b.out(b.need(0))


def _unary(fn: Callable[..., Any]) -> Callable[[Builder, OpNode], None]:
    def emit(b: Builder, n: OpNode) -> None:
        x = b.need(0)
        if not isinstance(x, Traced):
            x = Traced(b.tensor(x), x.ndim)
        b.out(Traced(b.call(fn, x.node), x.rank))

    return emit


def _binary(fn: Callable[[Any, Any], Any]) -> Callable[[Builder, OpNode], None]:
    def emit(b: Builder, n: OpNode) -> None:
        left, right = b.need(0), b.need(1)
        if not isinstance(left, Traced) and not isinstance(right, Traced):
            if symbolic(left) or symbolic(right):
                raise b.refuse("arithmetic on shape values")
            if fn is operator.truediv and left.dtype.kind in "iu":
                raise b.refuse("integer division of constants")
            b.out(np.asarray(fn(left, right)).astype(np.result_type(left, right)))
            return

        def operand(v: Value) -> Any:
            if not isinstance(v, Traced) and v.size == 1 and v.ndim == 0 and v.dtype.kind == "f":
                return float(v)  # a Python scalar keeps the tensor's dtype (fp16 stays fp16)
            return b.tensor(v)

        rank = max(b.rank(left), b.rank(right))
        b.out(Traced(b.call(fn, operand(left), operand(right)), rank))

    return emit


def _conv(b: Builder, n: OpNode) -> None:
    x, w, bias = b.need(0), b.need(1), b.get(2)
    assert isinstance(x, Traced)
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
    b.out(Traced(b.call(fn, *args, **kwargs), x.rank))


def _clip(b: Builder, n: OpNode) -> None:
    x = b.need(0)
    assert isinstance(x, Traced)
    if b.program.opset < 11:
        low, high = n.attr("min"), n.attr("max")
    else:
        lows, highs = b.numbers(1), b.numbers(2)
        low = None if lows is None else float(lows[0])
        high = None if highs is None else float(highs[0])
    if low == 0.0 and high is None:
        b.out(Traced(b.call(torch.relu, x.node), x.rank))
        return
    b.out(Traced(b.call(torch.clamp, x.node, low, high), x.rank))


def _concat(b: Builder, n: OpNode) -> None:
    parts = [b.need(i) for i in range(len(n.inputs))]
    axis = int(n.attr("axis"))
    if not any(isinstance(p, Traced) for p in parts):
        hosts = [p for p in parts if not isinstance(p, Traced)]
        objects = any(h.dtype == object for h in hosts)
        b.out(np.concatenate([h.astype(object) if objects else h for h in hosts], axis=axis))
        return
    rank = b.rank(parts[0])
    b.out(Traced(b.call(torch.cat, [b.tensor(p) for p in parts], norm_axis(axis, rank)), rank))


def _shape(b: Builder, n: OpNode) -> None:
    x = b.need(0)
    if not isinstance(x, Traced):
        b.out(np.asarray(x.shape, dtype=np.int64))
        return
    size = b.graph.call_method("size", (x.node,))
    dims = np.empty(x.rank, dtype=object)
    for i in range(x.rank):
        dims[i] = b.call(operator.getitem, size, i)
    b.out(dims)


def _gather(b: Builder, n: OpNode) -> None:
    data = b.need(0)
    indices = b.host(1)
    assert indices is not None
    axis = int(n.attr("axis", 0))
    if not isinstance(data, Traced):
        b.out(as_host(np.take(data, indices.astype(np.int64), axis=axis)))
        return
    axis = norm_axis(axis, data.rank)
    if indices.ndim == 0:
        b.out(Traced(b.call(torch.select, data.node, axis, int(indices)), data.rank - 1))
        return
    picked = b.call(torch.index_select, data.node, axis, b.tensor(indices.astype(np.int64)))
    if indices.ndim != 1:
        raise b.refuse("Gather with multi-dimensional indices on a tensor")
    b.out(Traced(picked, data.rank))


def _unsqueeze(b: Builder, n: OpNode) -> None:
    data = b.need(0)
    axes = n.attr("axes") if b.program.opset < 13 else b.numbers(1)
    assert axes is not None
    rank = b.rank(data) + len(axes)
    ordered = sorted(norm_axis(int(a), rank) for a in axes)
    if not isinstance(data, Traced):
        for a in ordered:
            data = np.expand_dims(data, a)
        b.out(data)
        return
    node = data.node
    for a in ordered:
        node = b.call(torch.unsqueeze, node, a)
    b.out(Traced(node, rank))


def _reshape(b: Builder, n: OpNode) -> None:
    data = b.need(0)
    shape_value = b.host(1)
    assert shape_value is not None
    shape = shape_list(b, shape_value)
    if n.attr("allowzero", 0):
        raise b.refuse("allowzero=1")
    if not isinstance(data, Traced):
        if symbolic(shape_value):
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
    b.out(Traced(b.call(torch.reshape, data.node, dims), len(dims)))


def _expand_node(b: Builder, n: OpNode) -> None:
    data = b.need(0)
    shape_value = b.host(1)
    assert shape_value is not None
    shape = shape_list(b, shape_value)
    node = b.tensor(data)
    b.out(Traced(b.call(expand_to, node, shape), max(b.rank(data), len(shape))))


def _matmul(b: Builder, n: OpNode) -> None:
    left, right = b.need(0), b.need(1)
    rank = max(b.rank(left), b.rank(right))
    b.out(Traced(b.call(torch.matmul, b.tensor(left), b.tensor(right)), rank))


def _global_average_pool(b: Builder, n: OpNode) -> None:
    x = b.need(0)
    assert isinstance(x, Traced)
    node = b.call(torch.mean, x.node, tuple(range(2, x.rank)), keepdim=True)
    b.out(Traced(node, x.rank))


def _batch_norm(b: Builder, n: OpNode) -> None:
    x = b.need(0)
    assert isinstance(x, Traced)
    if len([o for o in n.outputs if o]) > 1:
        raise b.refuse("training-mode outputs")
    scale, bias, mean, var = (b.tensor(b.need(i)) for i in range(1, 5))
    eps = float(n.attr("epsilon", 1e-5))
    node = b.call(F.batch_norm, x.node, mean, var, scale, bias, False, 0.0, eps)
    b.out(Traced(node, x.rank))


def _instance_norm_node(b: Builder, n: OpNode) -> None:
    x = b.need(0)
    assert isinstance(x, Traced)
    scale, bias = b.tensor(b.need(1)), b.tensor(b.need(2))
    eps = float(n.attr("epsilon", 1e-5))
    node = b.call(instance_norm, x.node, scale, bias, eps, b.norm_in_float32)
    b.out(Traced(node, x.rank))


def _resize_node(b: Builder, n: OpNode) -> None:
    x = b.need(0)
    assert isinstance(x, Traced)
    if b.program.opset < 11:
        scales, sizes, coordinates = b.numbers(1), None, "asymmetric"
    else:
        scales, sizes = b.numbers(2), b.numbers(3)
        coordinates = str(n.attr("coordinate_transformation_mode", "half_pixel"))
    mode = str(n.attr("mode", "nearest"))
    if (mode, coordinates) not in RESIZE_MODES:
        raise b.refuse(f"mode={mode} with coordinate_transformation_mode={coordinates}")
    if mode == "nearest":
        rounding = str(n.attr("nearest_mode", "round_prefer_floor"))
        if rounding != NEAREST_ROUNDING[coordinates]:
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
    node = b.call(resize_like_onnxruntime, x.node, scale_tuple, sizes, mode, coordinates)
    b.out(Traced(node, x.rank))


def _slice(b: Builder, n: OpNode) -> None:
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
        stop = None if end >= INT64_MAX // 2 else end
        index[norm_axis(int(axis), rank)] = slice(start, stop, None if step == 1 else step)
    while index and index[-1] == slice(None):
        index.pop()
    if not isinstance(data, Traced):
        b.out(as_host(data[tuple(index)]))
        return
    b.out(Traced(b.call(operator.getitem, data.node, tuple(index)), rank))


def _cast(b: Builder, n: OpNode) -> None:
    data = b.need(0)
    dtype = ONNX_DTYPES.get(int(n.attr("to")))
    if dtype is None:
        raise b.refuse(f"a cast to ONNX type {n.attr('to')}")
    if not isinstance(data, Traced):
        if data.dtype == object:  # shape values are integers already
            if dtype.is_floating_point:
                raise b.refuse("a shape value cast to float")
            b.out(data)
        else:
            b.out(data.astype(NP_DTYPES[dtype]))
        return
    b.out(Traced(b.graph.call_method("to", (data.node, dtype)), data.rank))


EMITTERS: dict[str, Callable[[Builder, OpNode], None]] = {
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
    half-precision input is computed in float32 (see `instance_norm`)."""
    return Builder(program, norm_in_float32).build(EMITTERS)
