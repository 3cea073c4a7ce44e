"""Check that an ONNX file has MODNet's signature: float [B,3,H,W] in, float [B,1,H,W] out.

The graph's inputs and outputs are read from an onnxruntime session: a bare, unoptimised one (it
loads MODNet in under 0.1 s; importing the onnx package alone takes most of a second), or the
engine's own (`session_signature`). Where onnxruntime is not installed (the torch engine alone),
they are read with the onnx package.
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


@dataclass(frozen=True)
class _Arg:
    """A graph input or output: its name, element type (float, ...) and dimensions (a name,
    a size, or None where the graph leaves it open)."""

    name: str
    elem: str
    dims: tuple[str | int | None, ...]

    def __str__(self) -> str:
        shown = ", ".join("?" if d is None else str(d) for d in self.dims)
        return f"{self.name}: {self.elem} [{shown}]"


def check_signature(path: str | Path) -> Signature:
    """Raise a ModnetBatchError saying what was found unless the model has MODNet's signature."""
    path = Path(path)
    if not path.is_file():
        raise ModnetBatchError(
            f"model {path} does not exist; run `modnet-batch model fetch` or pass --model PATH"
        )
    try:
        import onnxruntime as ort
    except ImportError:
        return _signature(path, *_onnx_args(path))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # its warnings are not the user's concern here
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise _unreadable(path, exc, f"onnxruntime {ort.__version__}") from None
    return session_signature(path, session)


def session_signature(path: str | Path, session: Any) -> Signature:
    """check_signature of the model that the onnxruntime `session` has open (from `path`)."""

    def args(values: list[Any]) -> list[_Arg]:
        kind = [str(v.type).removeprefix("tensor(").removesuffix(")") for v in values]
        return [_Arg(v.name, k, tuple(v.shape)) for v, k in zip(values, kind, strict=True)]

    return _signature(Path(path), args(session.get_inputs()), args(session.get_outputs()))


def _signature(path: Path, inputs: list[_Arg], outputs: list[_Arg]) -> Signature:
    ok = (
        len(inputs) == 1
        and len(outputs) == 1
        and all(a.elem == "float" and len(a.dims) == 4 for a in inputs + outputs)
        and inputs[0].dims[1] == 3
        and outputs[0].dims[1] == 1
    )
    if not ok:
        found = "; ".join([f"input {i}" for i in inputs] + [f"output {o}" for o in outputs])
        raise ModnetBatchError(
            f"model {path} does not have MODNet's signature (one float input [B,3,H,W], one float "
            f"output [B,1,H,W]); found {found}"
        )
    return Signature(input_name=inputs[0].name, output_name=outputs[0].name)


def _onnx_args(path: Path) -> tuple[list[_Arg], list[_Arg]]:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise _unreadable(path, exc, f"onnx {onnx.__version__}") from None

    def args(values: list[Any]) -> list[_Arg]:
        out = []
        for v in values:
            t = v.type.tensor_type
            elem = onnx.TensorProto.DataType.Name(t.elem_type).lower()
            dims = tuple(
                d.dim_param or (d.dim_value if d.HasField("dim_value") else None)
                for d in t.shape.dim
            )
            out.append(_Arg(v.name, elem, dims))
        return out

    weights = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    return args(inputs), args(list(model.graph.output))


def _unreadable(path: Path, exc: Exception, reader: str) -> ModnetBatchError:
    """A model the reader cannot load: too new for it (say so), or not an ONNX model."""
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    if any(k in text for k in ("IR version", "opset", "Opset")):
        return ModnetBatchError(
            f"model {path} needs a newer {reader.split()[0]} than {reader} ({reason}); upgrade "
            "it (pip install -U onnxruntime), or export the model for an older opset"
        )
    return ModnetBatchError(f"model {path} is not a readable ONNX file ({reason})")
