"""The onnxruntime engine: one session on one execution provider, explicit threads, and proof
of where it runs.

onnxruntime ignores OMP_NUM_THREADS, so intra-op threads are always set explicitly; a session that
asked for an accelerator but silently fell back to the CPU is an error, not a slow run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from modnet_batch.engine.base import EngineSpec
from modnet_batch.engine.signature import check_signature, session_signature
from modnet_batch.errors import ModnetBatchError

if TYPE_CHECKING:
    from modnet_batch.engine.signature import Signature

# Execution-provider registry: the short names a job config uses -> onnxruntime provider names.
PROVIDERS: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}
_DEVICE_ID_PROVIDERS = {"cuda", "tensorrt", "rocm", "migraphx", "dml"}


def import_onnxruntime() -> Any:
    """The onnxruntime module, or a one-line error saying which extra installs it."""
    try:
        import onnxruntime
    except ImportError:
        raise ModnetBatchError(
            "the onnxruntime engine needs onnxruntime: pip install 'modnet-batch[cpu]' "
            "(or 'modnet-batch[gpu]' on a CUDA machine)"
        ) from None
    return onnxruntime


@dataclass
class OnnxRuntimeSession:
    """An onnxruntime session plus the names and facts the pipeline needs."""

    session: Any  # onnxruntime.InferenceSession (untyped library)
    signature: Signature
    provider: str
    spec: EngineSpec

    @property
    def runs_on(self) -> str:
        return self.provider

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        out = self.session.run([self.signature.output_name], {self.signature.input_name: batch})
        return np.asarray(out[0])

    @property
    def device_work(self) -> None:
        """Nothing but inference runs on an execution provider: the CPU threads do the rest."""
        return None


class OnnxRuntimeEngine:
    name = "onnxruntime"

    def open(self, spec: EngineSpec) -> OnnxRuntimeSession:
        """Open `spec.model` on the requested provider; raise if it would run anywhere else."""
        ort = import_onnxruntime()
        if spec.provider not in PROVIDERS:
            known = ", ".join(PROVIDERS)
            raise ModnetBatchError(
                f"unknown execution provider {spec.provider!r}; use one of: {known}"
            )
        ort_name = PROVIDERS[spec.provider]
        available = ort.get_available_providers()
        if ort_name not in available:
            gpu = spec.provider in {"cuda", "tensorrt"}
            hint = " (pip install 'modnet-batch[gpu]')" if gpu else ""
            raise ModnetBatchError(
                f"execution provider {ort_name} is not available in this onnxruntime build "
                f"(available: {', '.join(available)}){hint}"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, spec.threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spec.spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers: list[Any] = [ort_name]
        if spec.provider in _DEVICE_ID_PROVIDERS:
            providers = [(ort_name, {"device_id": spec.device_index})]
        if spec.provider != "cpu":
            providers.append("CPUExecutionProvider")  # for ops the accelerator lacks, not instead
        try:
            session = ort.InferenceSession(
                str(Path(spec.model)), sess_options=options, providers=providers
            )
        except Exception:
            try:
                check_signature(spec.model)  # one line where the file is not a MODNet model
            except ModnetBatchError as bad:
                raise bad from None
            raise
        signature = session_signature(spec.model, session)
        active = session.get_providers()
        if not active or active[0] != ort_name:
            raise ModnetBatchError(
                f"session for {spec.model} asked for {ort_name} on device {spec.device_index} "
                f"but runs on {active}; check the driver and the onnxruntime build"
            )
        return OnnxRuntimeSession(
            session=session, signature=signature, provider=ort_name, spec=spec
        )
