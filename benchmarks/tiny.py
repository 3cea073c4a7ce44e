"""A tiny ONNX model with MODNet's signature, for benchmarks of everything but the network
(streaming, memory, bookkeeping): float [B,3,H,W] in [-1,1] -> float [B,1,H,W] in [0,1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_tiny_model(path: Path, seed: int = 0, opset: int = 11) -> Path:
    """Conv3x3 -> InstanceNorm -> Relu -> Conv1x1 -> Sigmoid, dynamic batch/height/width."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    arrays = {
        "w1": rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32),
        "b1": rng.normal(0, 0.1, (4,)).astype(np.float32),
        "s": np.ones(4, np.float32),
        "b": np.zeros(4, np.float32),
        "w2": rng.normal(0, 0.5, (1, 4, 1, 1)).astype(np.float32),
        "b2": np.zeros(1, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("InstanceNormalization", ["c1", "s", "b"], ["n1"], name="norm1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Sigmoid", ["c2"], ["output"], name="sigmoid"),
    ]
    dims_in: list[str | int | None] = ["batch_size", 3, "height", "width"]
    dims_out: list[str | int | None] = ["batch_size", 1, "height", "width"]
    graph = helper.make_graph(
        nodes,
        "tiny_modnet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims_in)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, dims_out)],
        [numpy_helper.from_array(a, n) for n, a in arrays.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
