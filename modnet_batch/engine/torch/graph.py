"""Step 2 of the conversion, its machinery: `Builder` walks a Program once, emitting torch.fx
nodes for tensor ops and evaluating host values. Constants become buffers or Python numbers,
Slice bounds Python slices, Resize scales Python floats. Shape arithmetic (Shape -> Gather ->
Unsqueeze -> Concat -> Reshape/Expand, MODNet's SE block) is evaluated on host values whose
elements are ints or fx nodes reading `x.size(i)`, so batch, height and width stay dynamic and
the forward is one flat generated function with no per-node dispatch, which torch.compile and
CUDA graphs can take as it is. The op emitters are in engine/torch/ops.py."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F

from modnet_batch.engine.torch.program import UNSUPPORTED_HINT, HostArray, OpNode, Program
from modnet_batch.errors import ModnetBatchError

# ---------------------------------------------------------------------------------------------
# Step 2: Program -> torch.fx.GraphModule


@dataclass(frozen=True)
class Traced:
    """A value computed by the module: an fx node and its rank."""

    node: torch.fx.Node
    rank: int


Value = Traced | HostArray


def instance_norm(
    x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, eps: float, in_float32: bool
) -> torch.Tensor:
    """ONNX InstanceNormalization (biased variance per sample and channel); in float32 for
    half-precision inputs when `in_float32`, as MODNet's IBNorm variances overflow fp16."""
    if in_float32 and x.dtype != torch.float32:
        y = F.instance_norm(x.float(), weight=scale.float(), bias=bias.float(), eps=eps)
        return y.to(x.dtype)
    return F.instance_norm(x, weight=scale, bias=bias, eps=eps)


def expand_to(x: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """ONNX Expand: broadcast both ways (a 1 in `shape` keeps x's dimension)."""
    target = torch.broadcast_shapes(x.shape, tuple(shape))  # type: ignore[no-untyped-call]
    return torch.broadcast_to(x, target)


def resize_like_onnxruntime(
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


RESIZE_MODES = {
    ("linear", "pytorch_half_pixel"),
    ("linear", "half_pixel"),
    ("linear", "align_corners"),
    ("nearest", "asymmetric"),
    ("nearest", "half_pixel"),
}
NEAREST_ROUNDING = {"asymmetric": "floor", "half_pixel": "round_prefer_ceil"}


class Builder:
    """Walks the program once, emitting fx nodes for tensor ops and evaluating host values."""

    def __init__(self, program: Program, norm_in_float32: bool) -> None:
        self.program = program
        self.norm_in_float32 = norm_in_float32
        self.graph = torch.fx.Graph()
        self.root = torch.nn.Module()
        self.values: dict[str, Value] = dict(program.tensors)
        self.names = {id(v): k for k, v in program.tensors.items()}
        self.attrs: dict[str, torch.fx.Node] = {}
        self.node: OpNode | None = None

    # -- values ------------------------------------------------------------------------------

    def refuse(self, what: str) -> ModnetBatchError:
        where = self.node.describe() if self.node else "the graph"
        return ModnetBatchError(
            f"{where}: {what}, which the torch engine does not convert; {UNSUPPORTED_HINT}"
        )

    def get(self, index: int) -> Value | None:
        assert self.node is not None
        names = self.node.inputs
        if index >= len(names) or not names[index]:
            return None
        try:
            return self.values[names[index]]
        except KeyError:
            raise self.refuse(f"input {names[index]!r} is computed nowhere") from None

    def need(self, index: int) -> Value:
        value = self.get(index)
        if value is None:
            raise self.refuse(f"input {index} is missing")
        return value

    def host(self, index: int) -> HostArray | None:
        """A conversion-time value (constant or shape), or None when omitted."""
        value = self.get(index)
        if isinstance(value, Traced):
            raise self.refuse(f"input {index} is computed at run time, not a constant or a shape")
        return value

    def numbers(self, index: int) -> list[Any] | None:
        value = self.host(index)
        return None if value is None else [_plain(v) for v in value.ravel()]

    def tensor(self, value: Value) -> torch.fx.Node:
        """The fx node of a value, registering a host constant as a buffer on first use."""
        if isinstance(value, Traced):
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

    def rank(self, value: Value) -> int:
        return value.rank if isinstance(value, Traced) else value.ndim

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.fx.Node:
        return self.graph.call_function(fn, tuple(args), kwargs)

    def out(self, value: Value, index: int = 0) -> None:
        assert self.node is not None
        self.values[self.node.outputs[index]] = value

    # -- build -------------------------------------------------------------------------------

    def build(
        self, emitters: Mapping[str, Callable[[Builder, OpNode], None]]
    ) -> torch.fx.GraphModule:
        x = self.graph.placeholder("x")
        self.values[self.program.input_name] = Traced(x, 4)
        for node in self.program.nodes:
            self.node = node
            emit = emitters.get(node.op)
            if emit is None:
                raise self.refuse("its op type")
            emit(self, node)
        self.node = None
        result = self.values.get(self.program.output_name)
        if not isinstance(result, Traced):
            raise self.refuse(f"the output {self.program.output_name!r} is not computed")
        self.graph.output(result.node)
        self.graph.eliminate_dead_code()
        self.graph.lint()
        module = torch.fx.GraphModule(self.root, self.graph, class_name="ModnetTorch")
        module.eval()
        return module


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def as_host(value: Any) -> HostArray:
    """numpy indexing of an object array returns a bare element: wrap it as a 0-d array."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, np.generic):
        return np.asarray(value)
    wrapped = np.empty((), dtype=object)
    wrapped[()] = value
    return wrapped


def symbolic(value: HostArray) -> bool:
    return value.dtype == object and any(isinstance(v, torch.fx.Node) for v in value.ravel())


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def shape_list(b: Builder, value: HostArray) -> list[Any]:
    if value.ndim != 1:
        raise b.refuse("a shape input that is not a 1-D list")
    return [_plain(v) for v in value]


# -- emitters: one per op type ---------------------------------------------------------------
