"""A tiny ONNX model with MODNet's signature: float [B,3,H,W] in [-1,1] -> float [B,1,H,W]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make_tiny_model(path: Path, seed: int = 0, opset: int = 11) -> Path:
    """Conv3x3 -> InstanceNorm -> Relu -> Conv1x1 -> Sigmoid, dynamic batch/height/width."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, (4,)).astype(np.float32)
    scale = np.ones(4, np.float32)
    bias = np.zeros(4, np.float32)
    w2 = rng.normal(0, 0.5, (1, 4, 1, 1)).astype(np.float32)
    b2 = np.zeros(1, np.float32)
    inits = [
        numpy_helper.from_array(a, n)
        for a, n in ((w1, "w1"), (b1, "b1"), (scale, "s"), (bias, "b"), (w2, "w2"), (b2, "b2"))
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("InstanceNormalization", ["c1", "s", "b"], ["n1"], name="norm1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Sigmoid", ["c2"], ["output"], name="sigmoid"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_modnet",
        [
            helper.make_tensor_value_info(
                "input", TensorProto.FLOAT, ["batch_size", 3, "height", "width"]
            )
        ],
        [
            helper.make_tensor_value_info(
                "output", TensorProto.FLOAT, ["batch_size", 1, "height", "width"]
            )
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
