"""Check that an ONNX file has MODNet's signature: float [B,3,H,W] in, float [B,1,H,W] out.

The check reads the graph's inputs and outputs from an onnxruntime session, which the engine
opens anyway (a bare, unoptimised one loads MODNet in under 0.1 s; importing the onnx package
alone would add most of a second to every command's start-up).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modnet_batch.errors import ModnetBatchError


@dataclass(frozen=True)
class Signature:
    input_name: str
    output_name: str


def _type(arg: Any) -> str:
    kind = str(arg.type)  # "tensor(float)"
    return kind[len("tensor(") : -1] if kind.startswith("tensor(") else kind


def _describe(arg: Any) -> str:
    return f"{arg.name}: {_type(arg)} {list(arg.shape)}"


def signature_of(session: Any, path: str | Path) -> Signature:
    """The signature of an open onnxruntime session of `path`; a ModnetBatchError saying what
    was found unless it is MODNet's."""
    inputs, outputs = list(session.get_inputs()), list(session.get_outputs())
    ok = (
        len(inputs) == 1
        and len(outputs) == 1
        and all(_type(a) == "float" and len(a.shape) == 4 for a in inputs + outputs)
        and inputs[0].shape[1] == 3
        and outputs[0].shape[1] == 1
    )
    if not ok:
        found = "; ".join(
            [f"input {_describe(i)}" for i in inputs] + [f"output {_describe(o)}" for o in outputs]
        )
        raise ModnetBatchError(
            f"model {path} does not have MODNet's signature (one float input [B,3,H,W], one float "
            f"output [B,1,H,W]); found {found}"
        )
    return Signature(input_name=inputs[0].name, output_name=outputs[0].name)


def check_signature(path: str | Path) -> Signature:
    """Raise a ModnetBatchError saying what was found unless the model has MODNet's signature."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ModnetBatchError(
            f"model {path} does not exist; run `modnet-batch model fetch` or pass --model PATH"
        )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # its warnings are not the user's concern here
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModnetBatchError(f"model {path} is not a readable ONNX file ({reason})") from None
    return signature_of(session, path)
