"""The torch engine: MODNet's ONNX converted to a torch module (engine.torch.convert), on the CPU or
one CUDA device, in fp32, fp16 or bf16.

The conversion runs once per model file and torch version and is checked against onnxruntime
before it is used (engine.torch.convert.load_program); a session then only builds the module
from the cached program (tens of milliseconds). Options of EngineSpec that only this engine reads:

- `precision`: fp32 as converted; fp16 / bf16 cast the module's weights and compute (the input
  is cast on the device, the output comes back float32; InstanceNormalization is computed in
  float32, see engine.torch.convert). An fp16 build (Cast nodes, fp16 weights) runs as it
  was built. int8 builds are refused: their QDQ ops stay with onnxruntime.
- `channels_last`: NHWC weights and inputs (often faster convolutions on GPUs and oneDNN CPUs).
- `compile`: "none"; "compile" (torch.compile, default inductor backend; the first batch of
  each new shape compiles, minutes on a CPU); "cudagraphs" (CUDA only: one CUDA graph captured
  per input shape and replayed, which removes the per-kernel launch cost; refused on the CPU,
  where there is nothing to capture).
- `threads`: torch.set_num_threads (process-wide, as one worker is one process). `spin` has no
  torch counterpart (OpenMP's wait policy is fixed when its library loads) and is ignored.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from modnet_batch.engine.base import EngineSpec
from modnet_batch.engine.torch.convert import (
    UNSUPPORTED_HINT,
    Converted,
    build_module,
    load_program,
    synthetic_check_inputs,
)
from modnet_batch.engine.torch.device_work import TorchDeviceWork
from modnet_batch.errors import ModnetBatchError

PRECISIONS: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
COMPILE_MODES = ("none", "compile", "cudagraphs")
# The seed protocols' normalisation, x -> (x - 127.5) / 127.5 in float32 (protocol/seed.py).
_OFFSET = 127.5
_MAX_GRAPHS = 8  # CUDA graphs kept (one per input shape); the oldest is dropped beyond


class _CudaGraphs:
    """One CUDA graph per input shape and dtype, captured on first use after a warm-up on a
    side stream, then replayed from a static input buffer; graphs share one memory pool."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: OrderedDict[
            tuple[tuple[int, ...], torch.dtype],
            tuple[torch.Tensor, torch.Tensor, torch.cuda.CUDAGraph],
        ] = OrderedDict()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self._capture(x)
            self.graphs[key] = entry
            if len(self.graphs) > _MAX_GRAPHS:
                self.graphs.popitem(last=False)
        else:
            self.graphs.move_to_end(key)
        static_in, static_out, graph = entry
        static_in.copy_(x)
        graph.replay()
        return static_out  # read (copied to the host) before the next replay overwrites it

    def _capture(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.cuda.CUDAGraph]:
        static_in = x.clone()
        side = torch.cuda.Stream(device=x.device)  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # cuDNN picks its algorithms outside the capture
                self.module(static_in)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            static_out = self.module(static_in)
        return static_in, static_out, graph


@dataclass
class TorchSession:
    """A converted MODNet on one torch device, in one precision."""

    spec: EngineSpec
    module: torch.nn.Module
    device: torch.device
    dtype: torch.dtype  # what the module's input is cast to (float32 for an fp16 build)
    conversion: Converted
    forward: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)

    @property
    def runs_on(self) -> str:
        """`torch:cpu` or `torch:cuda:N`: the device every weight lies on (checked at open)."""
        return f"torch:{self.device}"

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """[B,3,H,W] float32 in [-1, 1] -> [B,1,H,W] float32 in [0, 1]."""
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            return self._infer(x.to(self.device))

    def run_uint8(self, batch: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """[B,H,W,3] uint8 RGB at the network's input size -> [B,1,H,W] float32 in [0, 1].

        Only the uint8 pixels travel to the device (a quarter of the float32 bytes); the
        transpose and the normalisation run there, as the seed protocols compute it:
        (float32(x) - 127.5) / 127.5, two correctly rounded float32 operations, so the input
        equals `SeedProtocol.preprocess` of an image already at network size bit for bit: on
        the CPU (tested), and on CUDA by construction (IEEE subtraction and division by a
        device tensor, not the multiplication by the reciprocal torch uses for a Python-scalar
        divisor there). The paper protocol normalises before its float resize, so its inputs
        are not a uint8 image at network size: use `run` for it.
        """
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[3] != 3:
            raise ModnetBatchError(
                f"run_uint8 takes a [B,H,W,3] uint8 RGB batch; got {batch.dtype} "
                f"{list(batch.shape)}"
            )
        with torch.inference_mode():
            pixels = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
            offset = torch.tensor(_OFFSET, dtype=torch.float32, device=self.device)
            x = (pixels.permute(0, 3, 1, 2).to(torch.float32) - offset) / offset
            return self._infer(x)

    @property
    def device_work(self) -> TorchDeviceWork:
        """Decoding, preparing, resizing back and scoring on this session's device."""
        return TorchDeviceWork(self.device, self.infer_tensor)

    def infer_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised [B,3,H,W] float32 on the device -> [B,1,H,W] float32 there."""
        layout = torch.channels_last if self.spec.channels_last else torch.contiguous_format
        x = x.to(self.dtype).contiguous(memory_format=layout)
        return self.forward(x).to(torch.float32)

    def _infer(self, x: torch.Tensor) -> npt.NDArray[np.float32]:
        return np.ascontiguousarray(self.infer_tensor(x).cpu().numpy())


def _device(spec: EngineSpec) -> torch.device:
    if spec.provider == "cpu":
        return torch.device("cpu")
    if spec.provider == "cuda":
        if not torch.cuda.is_available():
            raise ModnetBatchError(
                f"the torch engine was asked for CUDA device {spec.device_index} but this torch "
                f"({torch.__version__}) sees no CUDA device; install a CUDA build of torch or "
                "use --device cpu"
            )
        count = torch.cuda.device_count()
        if not 0 <= spec.device_index < count:
            raise ModnetBatchError(
                f"the torch engine was asked for CUDA device {spec.device_index}; this machine "
                f"has {count} (0..{count - 1})"
            )
        return torch.device(f"cuda:{spec.device_index}")
    raise ModnetBatchError(
        f"the torch engine runs on provider cpu or cuda, not {spec.provider!r}; use "
        "--engine onnxruntime for other execution providers"
    )


def _check_options(spec: EngineSpec) -> torch.dtype:
    if spec.precision == "int8":
        raise ModnetBatchError(
            f"model {spec.model} is an int8 build: the torch engine runs fp32, fp16 and bf16; "
            f"{UNSUPPORTED_HINT}"
        )
    if spec.precision not in PRECISIONS:
        raise ModnetBatchError(
            f"unknown precision {spec.precision!r} for the torch engine; use one of: "
            f"{', '.join(PRECISIONS)}"
        )
    if spec.compile not in COMPILE_MODES:
        raise ModnetBatchError(
            f"unknown compile mode {spec.compile!r}; use one of: {', '.join(COMPILE_MODES)}"
        )
    if spec.compile == "cudagraphs" and spec.provider != "cuda":
        raise ModnetBatchError(
            "compile mode 'cudagraphs' needs the cuda provider (CUDA graphs capture GPU "
            "kernels); use 'compile' or 'none' on the CPU"
        )
    return PRECISIONS[spec.precision]


class TorchEngine:
    """Opens torch sessions; `check_inputs` feeds the conversion's comparison with onnxruntime
    (called only when a model is converted; default: synthetic portraits, seed-area)."""

    name = "torch"

    def __init__(
        self,
        check_inputs: Callable[[], Sequence[npt.NDArray[np.float32]]] = synthetic_check_inputs,
        tolerance: float | None = None,
    ) -> None:
        self.check_inputs = check_inputs
        self.tolerance = tolerance

    def open(self, spec: EngineSpec) -> TorchSession:
        """Convert (or load from the cache) `spec.model` and place it on the spec's device."""
        dtype = _check_options(spec)
        device = _device(spec)
        torch.set_num_threads(max(1, spec.threads))
        conversion = load_program(
            spec.model, self.check_inputs, tolerance=self.tolerance, threads=spec.threads
        )
        program = conversion.program
        module: torch.nn.Module = build_module(program)
        if program.precision == "fp16":
            if spec.precision == "bf16":
                raise ModnetBatchError(
                    f"model {spec.model} is an fp16 build; bf16 needs the fp32 model"
                )
            dtype = torch.float32  # the build's own Cast nodes take float32 in and out
        elif dtype != torch.float32:
            module = module.to(dtype)
        module = module.to(device)
        if spec.channels_last:
            module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        placed = {t.device for t in (*module.parameters(), *module.buffers())}
        if placed - {device}:
            raise ModnetBatchError(
                f"the torch module of {spec.model} has tensors on {sorted(map(str, placed))}, "
                f"not only on {device}"
            )
        forward: Callable[[torch.Tensor], torch.Tensor] = module
        if spec.compile == "compile":
            forward = torch.compile(module)
        elif spec.compile == "cudagraphs":
            forward = _CudaGraphs(module)
        return TorchSession(
            spec=spec,
            module=module,
            device=device,
            dtype=dtype,
            conversion=conversion,
            forward=forward,
        )
