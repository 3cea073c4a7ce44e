"""Check that an ONNX file has MODNet's signature: float [B,3,H,W] in, float [B,1,H,W] out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from modnet_batch.errors import ModnetBatchError

_FLOAT = onnx.TensorProto.FLOAT


@dataclass(frozen=True)
class Signature:
    input_name: str
    output_name: str


def _dims(value: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def _describe(value: onnx.ValueInfoProto) -> str:
    elem = onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type).lower()
    return f"{value.name}: {elem} {_dims(value)}"


def check_signature(path: str | Path) -> Signature:
    """Raise a ModnetBatchError saying what was found unless the model has MODNet's signature."""
    path = Path(path)
    if not path.is_file():
        raise ModnetBatchError(
            f"model {path} does not exist; run `modnet-batch model fetch` or pass --model PATH"
        )
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModnetBatchError(f"model {path} is not a readable ONNX file ({exc})") from None
    inputs = [
        i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}
    ]
    outputs = list(model.graph.output)
    ok = (
        len(inputs) == 1
        and len(outputs) == 1
        and inputs[0].type.tensor_type.elem_type == _FLOAT
        and outputs[0].type.tensor_type.elem_type == _FLOAT
        and len(_dims(inputs[0])) == 4
        and len(_dims(outputs[0])) == 4
        and _dims(inputs[0])[1] == 3
        and _dims(outputs[0])[1] == 1
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
