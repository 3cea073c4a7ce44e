"""The torch engine: the ONNX converter against onnxruntime (op by op on small graphs, whole
models, dynamic shapes), refusals, the conversion cache, precisions and run_uint8; the real
model on real images in the slow set."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from modnet_batch.cache import CACHE_ENV
from modnet_batch.engine import TORCH_MISSING, EngineSpec, get_engine, open_session
from modnet_batch.errors import ModnetBatchError
from modnet_batch.protocol import get_protocol
from tests.helpers import make_slow_model

torch = pytest.importorskip(
    "torch", reason="the torch engine is optional: pip install 'modnet-batch[torch]'"
)

from modnet_batch.digest import sha256_file  # noqa: E402
from modnet_batch.engine.torch import convert as conversion  # noqa: E402  (needs torch)
from modnet_batch.engine.torch import ops, program  # noqa: E402
from modnet_batch.engine.torch.session import TorchEngine, TorchSession  # noqa: E402

EXACT = 1e-5  # torch vs onnxruntime on the small models: a few float32 roundings apart


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test converts into its own cache, never the user's."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    return cache


def _small_inputs() -> list[npt.NDArray[np.float32]]:
    rng = np.random.default_rng(3)
    return [rng.uniform(-1, 1, (3, 24, 40)).astype(np.float32) for _ in range(2)]


def _engine() -> TorchEngine:
    """A torch engine whose conversions are checked on two small random inputs (fast)."""
    return TorchEngine(check_inputs=_small_inputs)


def _ort(path: Path) -> Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: np.asarray(session.run(None, {name: x})[0])


def _batch(b: int, h: int, w: int, seed: int = 0) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).uniform(-1, 1, (b, 3, h, w)).astype(np.float32)


def _save(
    path: Path,
    nodes: list[onnx.NodeProto],
    inits: dict[str, npt.NDArray[Any]],
    opset: int = 11,
) -> Path:
    """A graph with MODNet's signature: `input` [B,3,H,W] float -> `output` [B,1,h,w] float."""
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", 3, "h", "w"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["b", 1, "oh", "ow"])],
        [numpy_helper.from_array(a, n) for n, a in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _first_channel(source: str) -> tuple[list[onnx.NodeProto], dict[str, npt.NDArray[Any]]]:
    """Slice channel 0 of `source` into `output` (so that any op fits the signature)."""
    consts = {
        "s0": np.array([0], np.int64),
        "s1": np.array([1], np.int64),
        "ax1": np.array([1], np.int64),
    }
    return [helper.make_node("Slice", [source, "s0", "s1", "ax1"], ["output"])], consts


def _module_vs_ort(path: Path, batches: Sequence[npt.NDArray[np.float32]]) -> float:
    module = ops.build_module(program.read_program(path))
    run = _ort(path)
    worst = 0.0
    with torch.inference_mode():
        for x in batches:
            got = module(torch.from_numpy(x)).numpy()
            want = run(x)
            assert got.shape == want.shape
            worst = max(worst, float(np.abs(got - want).max()))
    return worst


# -- whole models ---------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["tiny", "slow"])
def test_matches_onnxruntime_at_odd_sizes_and_batches(
    which: str, tiny_model: Path, tmp_path: Path
) -> None:
    model = tiny_model if which == "tiny" else make_slow_model(tmp_path / "slow.onnx", convs=3)
    session = _engine().open(EngineSpec(model=str(model)))
    run = _ort(model)
    for b, h, w in [(1, 37, 53), (3, 37, 53), (2, 64, 48), (4, 17, 9)]:
        x = _batch(b, h, w, seed=b * h)
        got = session.run(x)
        assert got.dtype == np.float32 and got.shape == (b, 1, h, w)
        assert np.abs(got - run(x)).max() <= EXACT, (which, b, h, w)


def test_registered_engine_opens_with_the_default_check(tiny_model: Path) -> None:
    """`--engine torch`: the lazy registry entry, the synthetic seed-area check inputs."""
    session = open_session(EngineSpec(model=str(tiny_model), threads=1), "torch")
    assert isinstance(session, TorchSession)
    assert session.runs_on == "torch:cpu"
    check = session.conversion.record["check"]
    assert check["inputs"] == 4 and check["shapes"][0] == [3, 480, 288]
    assert check["max_abs_diff"] <= EXACT and check["tolerance"] == program.TOLERANCE["fp32"]
    assert check["passed"] and check["reference"].startswith("onnxruntime ")


def test_registry_does_not_import_torch() -> None:
    code = (
        "import sys, modnet_batch.engine as e; print('torch' in e.ENGINES, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


def test_missing_torch_gives_the_install_line(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "torch" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ModnetBatchError) as err:
        get_engine("torch").open(EngineSpec(model=str(tiny_model)))
    assert str(err.value) == TORCH_MISSING
    assert TORCH_MISSING == "the torch engine needs PyTorch: pip install 'modnet-batch[torch]'"


# -- op by op, on small graphs ---------------------------------------------------------------


def _resize_model(
    path: Path, attrs: dict[str, Any], scales: list[float] | None, sizes: Any
) -> Path:
    inits: dict[str, npt.NDArray[Any]] = {"roi": np.array([], np.float32)}
    inputs = ["input", "roi"]
    if scales is not None:
        inits["scales"] = np.array(scales, np.float32)
        inputs.append("scales")
    else:
        inits["scales"] = np.array([], np.float32)
        inits["sizes"] = np.array(sizes, np.int64)
        inputs += ["scales", "sizes"]
    tail, consts = _first_channel("r")
    nodes = [helper.make_node("Resize", inputs, ["r"], **attrs), *tail]
    return _save(path, nodes, {**inits, **consts})


LINEAR = {"mode": "linear", "nearest_mode": "floor"}
TORCH_HALF = {**LINEAR, "coordinate_transformation_mode": "pytorch_half_pixel"}
NEAREST = {
    "mode": "nearest",
    "coordinate_transformation_mode": "asymmetric",
    "nearest_mode": "floor",
}
NEAREST_HALF = {
    "mode": "nearest",
    "coordinate_transformation_mode": "half_pixel",
    "nearest_mode": "round_prefer_ceil",
}
# A scale that is not a power of two (3, or out/in from sizes) is rounded to float32 and used
# as a divisor by onnxruntime but as the reciprocal by torch: source positions a few float32
# roundings apart, ~3e-6 on values in [-1, 1]. With powers of two (MODNet's 2, 0.5, 0.25) the
# positions and weights are exact and only the weighted sum's rounding differs (1 ulp).
NEAR = 1e-5
ULPS = 2.5e-7


@pytest.mark.parametrize(
    ("attrs", "scales", "sizes", "bound"),
    [
        (TORCH_HALF, [1, 1, 2, 2], None, ULPS),  # MODNet's up-sampling
        (TORCH_HALF, [1, 1, 0.5, 0.5], None, ULPS),  # MODNet's down-sampling
        (TORCH_HALF, [1, 1, 0.25, 0.25], None, ULPS),  # ... 5 x 7 -> 1 x 1: source 0
        (TORCH_HALF, [1, 1, 0.25, 3], None, NEAR),
        ({**LINEAR, "coordinate_transformation_mode": "half_pixel"}, [1, 1, 0.5, 2], None, ULPS),
        ({**LINEAR, "coordinate_transformation_mode": "align_corners"}, None, [2, 3, 11, 7], NEAR),
        (TORCH_HALF, None, [2, 3, 1, 9], NEAR),
        (NEAREST, [1, 1, 2, 0.5], None, ULPS),
        (NEAREST_HALF, [1, 1, 3, 0.5], None, ULPS),
    ],
)
def test_resize_matches_onnxruntime(
    attrs: dict[str, Any],
    scales: list[float] | None,
    sizes: Any,
    bound: float,
    tmp_path: Path,
) -> None:
    """MODNet's Resize (linear, pytorch_half_pixel, scales of odd sizes, where the output is
    floor(in * scale), an output axis of length 1 included) and the other supported modes."""
    path = _resize_model(tmp_path / "resize.onnx", attrs, scales, sizes)
    batches = [_batch(2, 13, 21, 1)]
    if sizes is None:
        batches += [_batch(2, 5, 7), _batch(2, 9, 4, 2)]
    assert _module_vs_ort(path, batches) <= bound


def test_resize_mode_outside_the_set_is_refused(tmp_path: Path) -> None:
    attrs = {"mode": "cubic", "coordinate_transformation_mode": "half_pixel"}
    path = _resize_model(tmp_path / "cubic.onnx", attrs, [1, 1, 2, 2], None)
    with pytest.raises(ModnetBatchError, match=r"mode=cubic.*--engine onnxruntime"):
        ops.build_module(program.read_program(path))


def _se_block_model(path: Path) -> Path:
    """MODNet's ops other than Resize in MODNet's arrangement: Conv + BatchNorm on one half of
    the channels and InstanceNorm on the other (Slice, Concat), Clip, an SE block whose shapes
    are computed at run time (Shape, Gather, Unsqueeze, Concat, Reshape, MatMul, Expand, Mul,
    GlobalAveragePool), Add, Relu, Sigmoid."""
    rng = np.random.default_rng(5)
    c = 8
    inits: dict[str, npt.NDArray[Any]] = {
        "w": rng.normal(0, 0.4, (c, 3, 3, 3)).astype(np.float32),
        "bias": rng.normal(0, 0.1, (c,)).astype(np.float32),
        "bn_s": rng.uniform(0.5, 1.5, (c // 2,)).astype(np.float32),
        "bn_b": rng.normal(0, 0.1, (c // 2,)).astype(np.float32),
        "bn_m": rng.normal(0, 0.1, (c // 2,)).astype(np.float32),
        "bn_v": rng.uniform(0.5, 2, (c // 2,)).astype(np.float32),
        "in_s": np.ones(c // 2, np.float32),
        "in_b": np.zeros(c // 2, np.float32),
        "fc1": rng.normal(0, 0.5, (c, 4)).astype(np.float32),
        "fc2": rng.normal(0, 0.5, (4, c)).astype(np.float32),
        "head": rng.normal(0, 0.5, (1, c, 1, 1)).astype(np.float32),
        "lo": np.array(0.0, np.float32),
        "hi": np.array(6.0, np.float32),
        "zero": np.array([0], np.int64),
        "half": np.array([c // 2], np.int64),
        "end": np.array([2**63 - 1], np.int64),
        "ax1": np.array([1], np.int64),
        "one": np.array([1], np.int64),
        "i0": np.array(0, np.int64),
        "i1": np.array(1, np.int64),
    }
    n = helper.make_node
    nodes = [
        n("Conv", ["input", "w", "bias"], ["c"], pads=[1, 1, 1, 1], strides=[1, 1]),
        n("Slice", ["c", "zero", "half", "ax1", "one"], ["c_a"]),
        n("BatchNormalization", ["c_a", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"], epsilon=1e-5),
        n("Slice", ["c", "half", "end", "ax1", "one"], ["c_b"]),
        n("InstanceNormalization", ["c_b", "in_s", "in_b"], ["inorm"], epsilon=1e-5),
        n("Concat", ["bn", "inorm"], ["ibn"], axis=1),
        n("Clip", ["ibn", "lo", "hi"], ["act"]),
        n("Shape", ["act"], ["shape"]),
        n("Gather", ["shape", "i0"], ["batch"], axis=0),
        n("Gather", ["shape", "i1"], ["chans"], axis=0),
        n("GlobalAveragePool", ["act"], ["pool"]),
        n("Unsqueeze", ["batch"], ["b1"], axes=[0]),
        n("Unsqueeze", ["chans"], ["c1"], axes=[0]),
        n("Concat", ["b1", "c1"], ["bc"], axis=0),
        n("Reshape", ["pool", "bc"], ["flat"]),
        n("MatMul", ["flat", "fc1"], ["h1"]),
        n("Relu", ["h1"], ["h1r"]),
        n("MatMul", ["h1r", "fc2"], ["h2"]),
        n("Sigmoid", ["h2"], ["att"]),
        n("Concat", ["b1", "c1", "one", "one"], ["bc11"], axis=0),
        n("Reshape", ["att", "bc11"], ["att4"]),
        n("Expand", ["att4", "shape"], ["attx"]),
        n("Mul", ["act", "attx"], ["scaled"]),
        n("Add", ["scaled", "act"], ["res"]),
        n("Conv", ["res", "head"], ["logit"]),
        n("Sigmoid", ["logit"], ["output"]),
    ]
    return _save(path, nodes, inits)


def test_modnet_ops_and_run_time_shapes_match_onnxruntime(tmp_path: Path) -> None:
    path = _se_block_model(tmp_path / "se.onnx")
    read = program.read_program(path)
    assert read.ops | {"Constant"} >= {"Shape", "Gather", "Expand", "Reshape", "MatMul"}
    batches = [_batch(1, 37, 53), _batch(3, 16, 16, 1), _batch(2, 5, 64, 2)]
    assert _module_vs_ort(path, batches) <= EXACT


def test_an_fp16_build_with_casts_runs(tiny_model: Path, tmp_path: Path) -> None:
    """onnxconverter-common's fp16 graph (fp16 weights, Cast nodes, float32 I/O), as `modnet-
    batch build` makes it, runs as built: its Cast nodes take float32 in and out."""
    from onnxconverter_common import float16

    model = float16.convert_float_to_float16(onnx.load(str(tiny_model)), keep_io_types=True)
    path = tmp_path / "tiny-fp16.onnx"
    onnx.save(model, str(path))
    session = _engine().open(EngineSpec(model=str(path), precision="fp16"))
    assert session.conversion.program.precision == "fp16"
    assert "Cast" in session.conversion.program.ops
    assert session.conversion.record["check"]["tolerance"] == program.TOLERANCE["fp16"]
    x = _batch(2, 37, 53)
    got = session.run(x)
    assert got.dtype == np.float32
    assert np.abs(got - _ort(path)(x)).max() <= 1e-2  # measured 1e-3 (fp16 rounding)
    with pytest.raises(ModnetBatchError, match="fp16 build; bf16 needs the fp32 model"):
        _engine().open(EngineSpec(model=str(path), precision="bf16"))


# -- refusals -------------------------------------------------------------------------------


def _int8_model(path: Path) -> Path:
    """A QDQ graph as onnxruntime's static quantization writes one."""
    inits = {
        "scale": np.array(1 / 127, np.float32),
        "zp": np.array(0, np.int8),
        "w": np.ones((1, 3, 1, 1), np.float32),
    }
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "scale", "zp"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["dq"]),
        helper.make_node("Conv", ["dq", "w"], ["c"]),
        helper.make_node("Sigmoid", ["c"], ["output"]),
    ]
    return _save(path, nodes, inits, opset=13)


def test_unsupported_ops_are_refused_in_one_line(tmp_path: Path) -> None:
    path = _int8_model(tmp_path / "int8.onnx")
    with pytest.raises(ModnetBatchError) as err:
        _engine().open(EngineSpec(model=str(path)))
    message = str(err.value)
    assert "\n" not in message
    assert "DequantizeLinear, QuantizeLinear" in message and "int8" in message
    assert message.endswith("use --engine onnxruntime for this model")
    with pytest.raises(ModnetBatchError, match=r"int8 build.*--engine onnxruntime"):
        _engine().open(EngineSpec(model=str(path), precision="int8"))


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"precision": "fp8"}, "unknown precision 'fp8'"),
        ({"compile": "jit"}, "unknown compile mode 'jit'"),
        ({"compile": "cudagraphs"}, "'cudagraphs' needs the cuda provider"),
        ({"provider": "rocm"}, "cpu or cuda, not 'rocm'"),
    ],
)
def test_options_are_checked(spec: dict[str, Any], match: str, tiny_model: Path) -> None:
    with pytest.raises(ModnetBatchError, match=match):
        _engine().open(EngineSpec(model=str(tiny_model), **spec))


def test_cuda_without_a_gpu_is_an_error(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModnetBatchError, match="sees no CUDA device"):
        _engine().open(EngineSpec(model=str(tiny_model), provider="cuda"))


def test_a_wrong_conversion_is_refused_with_the_measured_difference(
    tiny_model: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong op (Sigmoid emitted as identity) moves alpha far beyond the tolerance: refused,
    with the measured max |diff| and the tolerance, and nothing is cached."""
    monkeypatch.setitem(ops.EMITTERS, "Sigmoid", ops._identity)
    with pytest.raises(ModnetBatchError) as err:
        _engine().open(EngineSpec(model=str(tiny_model)))
    message = str(err.value)
    assert "is refused" in message and "max |diff|" in message
    assert f"tolerance {program.TOLERANCE['fp32']:g}" in message
    assert not list(fresh_cache.glob("torch/*.pt"))


def test_a_tolerance_below_the_measured_difference_refuses(tiny_model: Path) -> None:
    def wide() -> list[npt.NDArray[np.float32]]:  # big values: float32 rounding shows
        return [_batch(1, 40, 40)[0] * 1000]

    with pytest.raises(ModnetBatchError, match="tolerance 1e-12"):
        TorchEngine(check_inputs=wide, tolerance=1e-12).open(
            EngineSpec(model=str(make_slow_model(Path(str(tiny_model) + ".slow.onnx"))))
        )


# -- the cache ------------------------------------------------------------------------------


def test_the_second_open_loads_the_cache(
    tiny_model: Path, tmp_path: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks.tiny import make_tiny_model

    model = make_tiny_model(tmp_path / "m.onnx", seed=1)
    first = _engine().open(EngineSpec(model=str(model)))
    assert not first.conversion.from_cache
    assert (
        first.conversion.path is not None and first.conversion.path.parent == fresh_cache / "torch"
    )
    record = first.conversion.record
    assert record["check"]["inputs"] == 2 and record["check"]["passed"]
    assert record["source_sha256"] == sha256_file(model)
    assert first.conversion.path.with_suffix(".json").is_file()

    def no_conversion(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("converted again")

    with monkeypatch.context() as m:
        m.setattr(conversion, "convert", no_conversion)
        second = _engine().open(EngineSpec(model=str(model)))
    assert second.conversion.from_cache and second.conversion.record == record
    x = _batch(2, 37, 53)
    assert np.array_equal(first.run(x), second.run(x))

    make_tiny_model(model, seed=2)  # the same path, another content: converted again
    third = _engine().open(EngineSpec(model=str(model)))
    assert not third.conversion.from_cache
    assert third.conversion.path != first.conversion.path
    assert np.abs(third.run(x) - _ort(model)(x)).max() <= EXACT


def test_the_cache_is_beside_the_model_when_the_cache_dir_is_not_writable(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    model = tmp_path / "models" / "tiny.onnx"
    model.parent.mkdir()
    model.write_bytes(tiny_model.read_bytes())
    session = _engine().open(EngineSpec(model=str(model)))
    assert session.conversion.path is not None and session.conversion.path.parent == model.parent
    assert _engine().open(EngineSpec(model=str(model))).conversion.from_cache


def test_the_cache_file_is_plain_data(tiny_model: Path) -> None:
    session = _engine().open(EngineSpec(model=str(tiny_model)))
    assert session.conversion.path is not None
    saved = torch.load(session.conversion.path, weights_only=True)  # no pickled code
    assert saved["record"]["torch"] == str(torch.__version__)
    assert {n["op"] for n in saved["program"]["nodes"]} == {
        "Conv",
        "InstanceNormalization",
        "Relu",
        "Sigmoid",
    }


# -- precisions and run_uint8 ---------------------------------------------------------------


@pytest.mark.parametrize(("precision", "bound"), [("fp16", 5e-3), ("bf16", 3e-2)])
def test_half_precisions_on_the_cpu(precision: str, bound: float, tiny_model: Path) -> None:
    """fp16/bf16 casts of the fp32 model: float32 out, within a loose bound of onnxruntime fp32
    (tiny model: measured ~1e-3 fp16, ~1e-2 bf16; 10 and 8 mantissa bits)."""
    session = _engine().open(EngineSpec(model=str(tiny_model), precision=precision))
    assert session.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    assert {p.dtype for p in session.module.parameters()} == {session.dtype}
    x = _batch(2, 37, 53)
    got = session.run(x)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    assert np.abs(got - _ort(tiny_model)(x)).max() <= bound


@pytest.mark.parametrize("channels_last", [False, True])
def test_run_uint8_equals_run_on_the_protocols_input(channels_last: bool, tiny_model: Path) -> None:
    """run_uint8(pixels) == run(seed-area preprocess(pixels)) bit for bit, for images already
    at the network size (the preprocess's resize is then a copy)."""
    session = _engine().open(EngineSpec(model=str(tiny_model), channels_last=channels_last))
    rng = np.random.default_rng(9)
    pixels = rng.integers(0, 256, (2, 480, 288, 3), dtype=np.uint8)
    preprocess = get_protocol("seed-area").preprocess
    floats = np.stack([preprocess(p) for p in pixels])
    assert np.array_equal(session.run_uint8(pixels), session.run(floats))
    with pytest.raises(ModnetBatchError, match=r"\[B,H,W,3\] uint8"):
        session.run_uint8(floats)


@pytest.mark.slow
def test_torch_compile_matches_eager(tiny_model: Path) -> None:
    """compile="compile" (inductor, ~20 s of compiling on 2 cores), new shapes included."""
    compiled = _engine().open(EngineSpec(model=str(tiny_model), compile="compile"))
    eager = _engine().open(EngineSpec(model=str(tiny_model)))
    for b, h, w in [(2, 37, 53), (3, 64, 48), (1, 17, 9)]:
        x = _batch(b, h, w)
        assert np.abs(compiled.run(x) - eager.run(x)).max() <= 1e-6


@pytest.mark.gpu
def test_cuda_matches_the_cpu(tiny_model: Path) -> None:
    """On a GPU: eager and CUDA-graphed sessions agree with the CPU; run_uint8 likewise."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cpu = _engine().open(EngineSpec(model=str(tiny_model)))
    pixels = np.random.default_rng(1).integers(0, 256, (2, 64, 48, 3), dtype=np.uint8)
    for mode in ("none", "cudagraphs"):
        gpu = _engine().open(EngineSpec(model=str(tiny_model), provider="cuda", compile=mode))
        assert gpu.runs_on == "torch:cuda:0"
        for b, h, w in [(2, 37, 53), (2, 37, 53), (4, 64, 48)]:
            x = _batch(b, h, w)
            assert np.abs(gpu.run(x) - cpu.run(x)).max() <= 1e-5
        assert np.abs(gpu.run_uint8(pixels) - cpu.run_uint8(pixels)).max() <= 1e-5


# -- the real model (slow) -------------------------------------------------------------------


@pytest.mark.slow
def test_real_model_on_real_images(real_model: Path, shared: Path) -> None:
    """8 ppm100-dev images at seed-area's 480x288: torch fp32 vs onnxruntime fp32.

    Per pixel the two lie as far apart as any two float32 kernel sets do on MODNet (measured
    max 9e-5 on these images; onnxruntime's optimised and unoptimised graphs differ by up to
    3.5e-5, float64 torch and onnxruntime fp32 by 2.5e-5), so the per-pixel bound is the
    conversion tolerance; the mean difference and each image's seed-area MSE (after the
    uint8 truncation) must agree far tighter."""
    from modnet_batch.data.decode import decode_matte
    from modnet_batch.metrics.matting import image_metrics

    protocol = get_protocol("seed-area")
    images = sorted((shared / "datasets" / "ppm100-dev" / "image").glob("*.jpg"))[:8]
    assert len(images) == 8
    inputs = conversion.check_inputs_from_images(images)
    spec = EngineSpec(model=str(real_model), threads=2, spin=False)
    session = TorchEngine(check_inputs=lambda: inputs).open(spec)
    reference = open_session(spec)
    check = session.conversion.record["check"]
    assert check["inputs"] == 8 and check["passed"]
    for path, x in zip(images, inputs, strict=True):
        got, want = session.run(x[None])[0, 0], reference.run(x[None])[0, 0]
        diff = np.abs(got.astype(np.float64) - want)
        assert diff.max() <= program.TOLERANCE["fp32"], path.name
        assert diff.mean() <= 1e-6, path.name
        matte_path = path.parent.parent / "matte" / path.name
        matte = decode_matte(matte_path.read_bytes(), name=matte_path.name)
        gt = protocol.ground_truth(matte)
        mse = []
        for alpha in (got, want):
            scored = protocol.postprocess(alpha, *matte.shape)
            fg = protocol.foreground(scored.score)
            mse.append(image_metrics(scored.score, gt, fg, protocol.foreground(gt)).mse)
        assert abs(mse[0] - mse[1]) <= 1e-6, path.name
