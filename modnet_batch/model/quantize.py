"""Static int8 quantization with onnxruntime.quantization: calibrate once, quantize many times.

Calibration ranges are computed once and kept in onnxruntime's calibration cache, so the
sensitivity search re-quantizes in seconds without re-running the images.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

from modnet_batch.errors import ModnetBatchError

# Per-axis DequantizeLinear (per-channel weights) exists from opset 13.
MIN_OPSET = 13
# Images per calibration pass: Entropy keeps every activation of the pass in memory.
CALIBRATION_CHUNK = 4


@dataclass(frozen=True)
class QuantSettings:
    """The quantize_static arguments a build chooses (see Int8Config)."""

    method: str = "kl"
    percentile: float = 99.999
    quant_format: str = "qdq"
    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = True
    reduce_range: bool = True
    exclude_op_types: tuple[str, ...] = ()


class TensorReader:
    """A CalibrationDataReader over preprocessed 3xHxW tensors, one image per run.

    Subclassing onnxruntime's abstract reader is not needed: it only calls these methods.
    """

    def __init__(self, input_name: str, tensors: Sequence[npt.NDArray[np.float32]]) -> None:
        self.input_name = input_name
        self.tensors = list(tensors)
        self.set_range(0, len(self.tensors))

    def __len__(self) -> int:
        return len(self.tensors)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next = iter(self.tensors[start_index:end_index])

    def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
        tensor = next(self._next, None)
        return None if tensor is None else {self.input_name: tensor[None]}

    def __iter__(self) -> TensorReader:
        return self

    def __next__(self) -> dict[str, npt.NDArray[np.float32]]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def prepare_for_quantization(source: Path, dest: Path) -> None:
    """Opset >= 13 (per-channel scales), then onnxruntime's quantization pre-processing.

    quant_pre_process runs ONNX shape inference and the portable (basic) graph optimisations;
    symbolic shape inference needs sympy and adds nothing for a CNN, so it is skipped.
    """
    from onnxruntime.quantization import quant_pre_process

    model = onnx.load(str(source))
    opset = next((o.version for o in model.opset_import if o.domain in {"", "ai.onnx"}), 0)
    if opset < MIN_OPSET:
        model = onnx.version_converter.convert_version(model, MIN_OPSET)
    upgraded = dest.with_name(dest.stem + ".opset.onnx")
    onnx.save(model, str(upgraded))
    quant_pre_process(str(upgraded), str(dest), skip_symbolic_shape=True)
    upgraded.unlink()


def calibrate(
    model: Path,
    input_name: str,
    tensors: Sequence[npt.NDArray[np.float32]],
    settings: QuantSettings,
    cache: Path,
    workdir: Path,
) -> None:
    """Run the calibration images through `model` and save the ranges to `cache`."""
    from onnxruntime.quantization import create_calibrator, save_tensors_data

    options: dict[str, Any] = {}
    if settings.method == "percentile":
        options["percentile"] = settings.percentile
    calibrator = create_calibrator(
        model,
        augmented_model_path=str(workdir / "augmented.onnx"),
        calibrate_method=_method(settings.method),
        extra_options=options,
    )
    # Chunks bound memory; histograms and min/max merge across chunks. The calibrators print
    # their progress to stdout, which belongs to the CLI.
    with contextlib.redirect_stdout(io.StringIO()):
        for start in range(0, len(tensors), CALIBRATION_CHUNK):
            chunk = tensors[start : start + CALIBRATION_CHUNK]
            calibrator.collect_data(TensorReader(input_name, chunk))
        ranges = calibrator.compute_data()
    save_tensors_data(ranges, cache)
    del calibrator
    (workdir / "augmented.onnx").unlink(missing_ok=True)


def quantize(
    model: Path,
    output: Path,
    cache: Path,
    settings: QuantSettings,
    *,
    keep_float: Sequence[str] = (),
    only: Sequence[str] | None = None,
) -> list[str]:
    """Quantize `model` with the cached ranges; `keep_float` nodes stay float, `only` restricts
    quantization to those nodes. Returns the kept-float nodes that needed protecting."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    op_types = sorted((set(QDQRegistry) | set(QLinearOpsRegistry)) - set(settings.exclude_op_types))
    quantize_static(
        str(model),
        str(output),
        calibration_data_reader=None,
        calibration_cache_path=str(cache),
        calibrate_method=_method(settings.method),
        quant_format=QuantFormat.QDQ if settings.quant_format == "qdq" else QuantFormat.QOperator,
        activation_type=qtype[settings.activation_type],
        weight_type=qtype[settings.weight_type],
        per_channel=settings.per_channel,
        reduce_range=settings.reduce_range,
        op_types_to_quantize=op_types,
        nodes_to_exclude=list(keep_float),
        nodes_to_quantize=list(only) if only is not None else None,
    )
    quantized = onnx.load(str(output))
    float_nodes = set(keep_float)
    if only is not None:
        float_nodes |= {n.name for n in quantized.graph.node} - set(only)
    protected = protect_float_nodes(quantized, float_nodes)
    if protected:
        onnx.save(quantized, str(output))
    return protected


def protect_float_nodes(model: onnx.ModelProto, keep_float: set[str]) -> list[str]:
    """Stop onnxruntime from re-quantizing Conv/Gemm nodes that were left in float.

    onnxruntime's WeightBiasQuantization optimizer (session load, level 1) turns a float Conv/Gemm
    fed by a per-tensor DequantizeLinear and feeding a QuantizeLinear into an int8 node with a
    per-TENSOR weight scale; for MODNet's depthwise convs (BN folded in) that destroys the output.
    It only matches a DQ with a scalar scale, so each such node gets its own per-axis DQ with the
    same scale repeated per channel: identical values, left alone by the optimizer. In place;
    returns the nodes changed.
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    inits = {t.name: t for t in graph.initializer}
    changed: list[str] = []
    for node in list(graph.node):
        if node.name not in keep_float or node.op_type not in {"Conv", "ConvTranspose", "Gemm"}:
            continue
        dq = producer.get(node.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[1] not in inits:
            continue
        scale = numpy_helper.to_array(inits[dq.input[1]])
        zero = numpy_helper.to_array(inits[dq.input[2]]) if len(dq.input) > 2 else None
        channels = _input_channels(node, inits)
        if scale.size != 1 or channels is None or channels < 2:
            continue
        base = f"{node.name}_float_input"
        new_inputs = [dq.input[0], f"{base}_scale"]
        graph.initializer.append(
            numpy_helper.from_array(np.full(channels, scale.item(), scale.dtype), f"{base}_scale")
        )
        if zero is not None:
            new_inputs.append(f"{base}_zero_point")
            graph.initializer.append(
                numpy_helper.from_array(np.full(channels, zero.item(), zero.dtype), new_inputs[-1])
            )
        dq_node = helper.make_node(
            "DequantizeLinear", new_inputs, [base], name=f"{base}_DequantizeLinear", axis=1
        )
        graph.node.insert(list(graph.node).index(node), dq_node)
        node.input[0] = base
        changed.append(node.name)
    return changed


def _input_channels(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> int | None:
    if node.input[1] not in inits:
        return None
    dims = list(inits[node.input[1]].dims)
    if node.op_type == "Conv":
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        return int(dims[1] * group)
    if node.op_type == "ConvTranspose":
        return int(dims[0])
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    return int(dims[1] if trans_b else dims[0])


def _method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    methods = {
        "kl": CalibrationMethod.Entropy,
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
    }
    if name not in methods:
        raise ModnetBatchError(f"calibration method {name!r} is unknown; use {', '.join(methods)}")
    return methods[name]
