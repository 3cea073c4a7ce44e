"""Model variants: build config, fp32/fp16/int8 builds and build.json, calibration overlap,
resolve_model; fast tests on the tiny model, slow ones on the real model and images."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from modnet_batch.data.decode import decode_image
from modnet_batch.digest import sha256_file
from modnet_batch.errors import ModnetBatchError
from modnet_batch.model import variants
from modnet_batch.model.build import build_variant
from modnet_batch.model.build_config import (
    BuildConfig,
    ImageSource,
    build_config_from_dict,
    load_build_config,
)
from modnet_batch.model.calibration import load_calibration_images, select_ids
from modnet_batch.model.fetch import CACHE_ENV
from modnet_batch.model.quantize import protect_float_nodes
from modnet_batch.model.variants import (
    calibration_overlap,
    read_build_record,
    resolve_model,
    variant_info,
)
from modnet_batch.protocol import get_protocol

CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six smooth random 80x60 PNG portraits-to-be, ids im0..im5."""
    folder = tmp_path_factory.mktemp("calib") / "image"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        coarse = rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"im{i}.png"), cv2.resize(coarse, (60, 80)))
    return folder.parent


def _config(model: Path, out: Path, precision: str, folder: Path, **extra: Any) -> BuildConfig:
    data: dict[str, Any] = {
        "name": precision,
        "precision": precision,
        "source": str(model),
        "output": str(out / f"{precision}.onnx"),
        "calibration": {"datasets": [{"path": str(folder), "take": 4}], "images": 10},
        "int8": {"auto_budget": 1},
    }
    data.update(extra)
    return build_config_from_dict(data)


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"input": x})[0])


@pytest.fixture(scope="module")
def built(
    tiny_model: Path, image_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The tiny model built at each precision (built once for the module)."""
    out = tmp_path_factory.mktemp("variants")
    return {
        p: build_variant(_config(tiny_model, out, p, image_folder)).output
        for p in ("fp32", "fp16", "int8")
    }


# --- configuration


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_shipped_configs_parse(precision: str) -> None:
    cfg = load_build_config(CONFIGS / f"build-{precision}.yaml")
    assert (cfg.name, cfg.precision, cfg.source, cfg.output) == (precision, precision, None, None)
    assert cfg.input_shape == (480, 288)
    if precision == "int8":
        assert cfg.calibration.method == "kl"
        assert cfg.int8.keep_float == "auto" and cfg.int8.per_channel
        assert cfg.calibration.datasets[0].take == 20


def test_variant_names_find_the_packaged_configs(tmp_path: Path) -> None:
    from modnet_batch.model.build_config import find_build_config, packaged_configs

    packaged = packaged_configs()
    assert set(packaged) == {"fp32", "fp16", "int8"}
    for name, path in packaged.items():
        assert find_build_config(name) == path
        # configs/ at the top of the checkout links to the packaged files
        assert (CONFIGS / f"build-{name}.yaml").resolve() == path.resolve()
    own = tmp_path / "mine.yaml"
    assert find_build_config(own) == own  # a YAML path is taken as given, even if missing
    with pytest.raises(ModnetBatchError, match="neither a YAML file nor a packaged variant"):
        find_build_config("int4")


def test_calibration_folders_replace_the_configs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from modnet_batch.model.build_config import with_calibration

    monkeypatch.delenv("MODNET_SHARED_DIR", raising=False)
    cfg = load_build_config("int8")  # ${MODNET_SHARED_DIR} is expanded only at build
    assert "${MODNET_SHARED_DIR}" in cfg.calibration.datasets[0].path
    swapped = with_calibration(cfg, [str(tmp_path / "a"), str(tmp_path / "b")])
    assert [s.path for s in swapped.calibration.datasets] == [
        str(tmp_path / "a"),
        str(tmp_path / "b"),
    ]
    assert all(s.take is None and not s.exclude for s in swapped.calibration.datasets)
    assert swapped.int8 == cfg.int8 and swapped.calibration.images == cfg.calibration.images
    assert with_calibration(cfg, []) is cfg


@pytest.mark.slow
def test_the_wheel_ships_the_build_configs(tmp_path: Path) -> None:
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(root)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("modnet_batch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for variant in ("fp32", "fp16", "int8"):
        assert f"modnet_batch/model/configs/build-{variant}.yaml" in names


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"precision": "int4"}, "precision 'int4' is unknown"),
        ({"colour": "red"}, "unknown keys ['colour']"),
        ({"calibration": {"method": "mse"}}, "calibration.method 'mse' is unknown"),
        ({"calibration": {"datasets": [{"take": 3}]}}, "needs a `path`"),
        ({"calibration": {"datasets": [{"path": "x", "take": 0}]}}, "take 0"),
        ({"input_shape": [480]}, "input_shape [480]"),
        ({"int8": {"keep_float": "some"}}, "int8.keep_float 'some'"),
        ({"int8": {"per_chanel": True}}, "unknown keys ['per_chanel']"),
        ({"name": "a/b"}, "name 'a/b'"),
        ({"calibration": {"datasets": []}}, "int8 needs calibration images"),
        ({"calibration": {"protocol": "nope", "datasets": ["x"]}}, "unknown protocol 'nope'"),
    ],
)
def test_config_errors_name_the_problem(patch: dict[str, Any], message: str) -> None:
    data: dict[str, Any] = {"name": "v", "precision": "int8", "calibration": {"datasets": ["d"]}}
    data.update(patch)
    with pytest.raises(ModnetBatchError) as err:
        build_config_from_dict(data, origin="cfg.yaml")
    assert message in str(err.value) and "cfg.yaml" in str(err.value)


def test_config_expands_env_only_at_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: Path
) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    cfg = _config(tiny_model, tmp_path, "int8", Path("${NOT_SET_ANYWHERE}/calib"))
    with pytest.raises(ModnetBatchError, match=r"\$\{NOT_SET_ANYWHERE\}, which is not set"):
        build_variant(cfg)


# --- calibration images


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (ImageSource("d"), ["a", "b", "c", "d"]),
        (ImageSource("d", take=2), ["a", "b"]),
        (ImageSource("d", take=2, exclude=("a", "zz")), ["b", "c"]),
        (ImageSource("d", ids=("c", "a", "c")), ["c", "a"]),
        (ImageSource("d", ids=("c", "a"), exclude=("c",)), ["a"]),
    ],
)
def test_select_ids(source: ImageSource, expected: list[str]) -> None:
    assert select_ids(["d", "b", "a", "c"], source) == expected


def test_select_ids_rejects_unknown_ids() -> None:
    with pytest.raises(ModnetBatchError, match="ids not found: x"):
        select_ids(["a"], ImageSource("d", ids=("a", "x")))


def test_calibration_from_dataset_dir_matches_the_job_path(synth_dataset: Path) -> None:
    cfg = build_config_from_dict(
        {
            "name": "v",
            "precision": "int8",
            "calibration": {"datasets": [{"path": str(synth_dataset), "take": 3}], "images": 2},
        }
    )
    images = load_calibration_images(cfg.calibration, input_shape=(480, 288))
    assert len(images) == 2  # `images` caps `take`
    from modnet_batch.data.dataset import Dataset

    records = {r.image_id: r for r in Dataset.open(synth_dataset).records()}
    assert [i.image_id for i in images] == sorted(records)[:2]
    protocol = get_protocol("seed-area")
    for img in images:
        rgb = decode_image(records[img.image_id].image, name=img.image_id)
        np.testing.assert_array_equal(img.tensor, protocol.preprocess(rgb))


def test_calibration_shape_mismatch_is_explained(image_folder: Path) -> None:
    cfg = build_config_from_dict(
        {"name": "v", "precision": "int8", "calibration": {"datasets": [str(image_folder)]}}
    )
    with pytest.raises(ModnetBatchError, match="input_shape is 240x240"):
        load_calibration_images(cfg.calibration, input_shape=(240, 240))


# --- builds and build.json


def test_fp32_is_a_verified_copy(built: dict[str, Path], tiny_model: Path) -> None:
    assert sha256_file(built["fp32"]) == sha256_file(tiny_model)
    record = read_build_record(built["fp32"])
    assert record is not None and record["keep_float"] == []
    assert record["verification"]["output_mse_vs_source"] == 0.0


def test_fp16_has_fp16_weights_fp32_io_and_says_what_stayed_fp32(
    built: dict[str, Path], tiny_model: Path
) -> None:
    model = onnx.load(str(built["fp16"]))
    assert any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    record = read_build_record(built["fp16"])
    assert record is not None
    # The tiny model's InstanceNorm sees random-weight activations whose variance sum overflows.
    (kept,) = record["keep_float"]
    assert kept["node"] == "norm1" and "overflows" in kept["reason"]
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 64, 48)).astype(np.float32)
    np.testing.assert_allclose(_run(built["fp16"], x), _run(tiny_model, x), atol=2e-3)


def test_int8_is_quantized_close_and_records_its_calibration(
    built: dict[str, Path], tiny_model: Path
) -> None:
    ops = {n.op_type for n in onnx.load(str(built["int8"])).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    record = read_build_record(built["int8"])
    assert record is not None
    assert record["calibration"]["ids"] == ["im0", "im1", "im2", "im3"]
    assert record["calibration"]["method"] == "kl"
    (kept,) = record["keep_float"]  # auto_budget: 1
    ranking = record["details"]["sensitivity"]["nodes"]
    assert kept["node"] == ranking[0][0] and kept["reason"].startswith("auto: rank 1")
    assert {r[0] for r in ranking} == {"conv1", "conv2", "sigmoid"}
    x = np.random.default_rng(2).uniform(-1, 1, (1, 3, 96, 64)).astype(np.float32)
    assert np.abs(_run(built["int8"], x) - _run(tiny_model, x)).mean() < 0.02


def test_build_json_is_complete(built: dict[str, Path], tiny_model: Path) -> None:
    for precision, path in built.items():
        record = read_build_record(path)
        assert record is not None
        assert record["precision"] == precision and record["name"] == precision
        assert record["source"] == {"path": str(tiny_model), "sha256": sha256_file(tiny_model)}
        assert record["output"]["sha256"] == sha256_file(path)
        assert record["output"]["path"] == str(path)
        assert record["settings"]["precision"] == precision
        assert set(record["tools"]) >= {"onnx", "onnxruntime", "onnxconverter_common"}
        assert record["build_seconds"] >= 0
        datetime.fromisoformat(record["built_at"])
        assert record["verification"]["images"]  # it ran the variant on calibration images
        assert isinstance(record["keep_float"], list)


def test_refuses_to_overwrite_unless_forced(
    tiny_model: Path, image_folder: Path, tmp_path: Path
) -> None:
    cfg = _config(tiny_model, tmp_path, "fp32", image_folder)
    first = build_variant(cfg)
    before = first.record_path.read_text()
    with pytest.raises(ModnetBatchError, match="already exists; pass --force"):
        build_variant(cfg)
    assert first.record_path.read_text() == before  # untouched
    again = build_variant(cfg, force=True)
    assert again.record["built_at"] >= first.record["built_at"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp32.build.json", "fp32.onnx"]


def test_explicit_keep_float_is_validated_and_honoured(
    tiny_model: Path, image_folder: Path, tmp_path: Path
) -> None:
    bad = _config(tiny_model, tmp_path, "int8", image_folder, int8={"keep_float": ["nope"]})
    with pytest.raises(ModnetBatchError, match="keep_float names not in the model: nope"):
        build_variant(bad)
    cfg = _config(tiny_model, tmp_path, "int8", image_folder, int8={"keep_float": ["conv2"]})
    record = build_variant(cfg).record
    assert record["keep_float"] == [
        {"node": "conv2", "op_type": "Conv", "reason": "listed in int8.keep_float"}
    ]
    model = onnx.load(str(tmp_path / "int8.onnx"))
    conv2 = next(n for n in model.graph.node if n.name == "conv2")
    assert conv2.input[1] == "w2"  # the float weights, not a DequantizeLinear output


def _dq_conv_q_model(path: Path) -> Path:
    """input -> Q -> DQ -> Conv (float, channel scales 1e-3..1) -> Q -> DQ -> output."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (8, 3, 3, 3)).astype(np.float32)
    w *= np.logspace(-3, 0, 8, dtype=np.float32)[:, None, None, None]
    scalar = numpy_helper.from_array
    inits = [
        scalar(np.array(2 / 255, np.float32), "s_in"),
        scalar(np.array(128, np.uint8), "z_in"),
        scalar(np.array(0.05, np.float32), "s_out"),
        scalar(np.array(128, np.uint8), "z_out"),
        scalar(w, "w"),
        scalar(np.zeros(8, np.float32), "b"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "s_in", "z_in"], ["q"], name="q_in"),
        helper.make_node("DequantizeLinear", ["q", "s_in", "z_in"], ["dq"], name="dq_in"),
        helper.make_node("Conv", ["dq", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["c", "s_out", "z_out"], ["qc"], name="q_out"),
        helper.make_node("DequantizeLinear", ["qc", "s_out", "z_out"], ["output"], name="dq_out"),
    ]
    graph = helper.make_graph(
        nodes,
        "dq_conv_q",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8, 16, 16])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _runtime_vs_reference(path: Path, x: np.ndarray) -> float:
    """Largest |difference| on the small-scale channels, all optimisations vs none."""
    outs = []
    for level in (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    ):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        outs.append(session.run(None, {"input": x})[0])
    return float(np.abs(outs[0] - outs[1])[:, :4].max())


def test_kept_float_conv_is_protected_from_runtime_requantization(tmp_path: Path) -> None:
    path = _dq_conv_q_model(tmp_path / "m.onnx")
    x = np.random.default_rng(3).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)
    model = onnx.load(str(path))
    assert protect_float_nodes(model, {"conv"}) == ["conv"]
    dq = next(n for n in model.graph.node if n.output[0] == "conv_float_input")
    assert dq.op_type == "DequantizeLinear" and dq.attribute[0].i == 1  # per-axis, same values
    protected = tmp_path / "protected.onnx"
    onnx.save(model, str(protected))
    # The runtime computes the protected conv in float, exactly as the graph says.
    assert _runtime_vs_reference(protected, x) < 1e-5
    # Unprotected, onnxruntime 1.32 gives this conv one int8 weight scale for all channels and
    # these channels move by a whole output step (0.05); not asserted, as that is its behaviour.


# --- overlap, resolve_model, variant_info


def test_calibration_overlap(built: dict[str, Path], tiny_model: Path) -> None:
    assert calibration_overlap(built["int8"], ["im9", "im2", "im0"]) == ["im0", "im2"]
    assert calibration_overlap(built["int8"], ["im4", "im5", "other"]) == []
    assert calibration_overlap(built["fp32"], ["im0"]) == []  # not calibrated
    assert calibration_overlap(tiny_model, ["im0"]) == []  # no build.json


def test_resolve_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: Path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(variants, "fetch_model", lambda: tiny_model)
    assert resolve_model(None) == tiny_model
    with pytest.raises(ModnetBatchError, match=r"run `modnet-batch build int8` first"):
        resolve_model("int8")
    target = tmp_path / "cache" / "variants" / "int8.onnx"
    target.parent.mkdir(parents=True)
    target.write_bytes(tiny_model.read_bytes())
    assert resolve_model("int8") == target
    assert resolve_model(str(tiny_model)) == tiny_model
    with pytest.raises(ModnetBatchError, match="neither a variant name"):
        resolve_model(str(tmp_path / "missing.onnx"))


def test_variant_info(built: dict[str, Path], tiny_model: Path, tmp_path: Path) -> None:
    info = variant_info(built["int8"])
    assert info["precision"] == "int8" and info["name"] == "int8" and not info["stale"]
    assert info["sha256"] == sha256_file(built["int8"])
    assert info["build"]["calibration"]["count"] == 4
    plain = variant_info(tiny_model)
    assert plain["precision"] == "fp32" and "build" not in plain
    # Without build.json the precision comes from the graph.
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(built["fp16"].read_bytes())
    assert variant_info(copy)["precision"] == "fp16"
    # A record naming another file's hash is flagged.
    stale = tmp_path / "stale.onnx"
    stale.write_bytes(tiny_model.read_bytes())
    (tmp_path / "stale.build.json").write_text(json.dumps({"precision": "int8", "output": {}}))
    assert variant_info(stale)["stale"]


def test_graph_precision_is_read_once_per_model_file(
    built: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(built["fp16"].read_bytes())
    digest = sha256_file(copy)
    assert variants.graph_precision(copy, digest) == "fp16"
    remembered = tmp_path / "cache" / "graph-precision" / digest
    assert remembered.read_text() == "fp16\n"
    reads: list[Path] = []
    monkeypatch.setattr(variants, "_graph_precision", lambda path: reads.append(path) or "fp32")
    assert variant_info(copy)["precision"] == "fp16" and reads == []  # remembered, not read
    remembered.write_text("garbage\n")  # an unreadable record is read again from the graph
    assert variants.graph_precision(copy, digest) == "fp32" and reads == [copy]
    remembered.write_bytes(b"\xff\xfe")  # not even text
    assert variants.graph_precision(copy, digest) == "fp32" and reads == [copy, copy]


# --- the real model


REAL_CALIBRATION = 4
REAL_KEEP_FLOAT = ["Conv_0", "Conv_4", "Conv_9", "Conv_13"]  # what auto picks first on MODNet
# Alpha agreement with fp32 on 3 held-out ppm100-dev images (480x288, values in [0, 1]); seen:
# fp16 3e-7 / 4e-5, int8 3e-4 / 1.2e-3. A broken int8 (per-tensor depthwise weights) is ~0.1.
TOLERANCE = {"fp32": (0.0, 0.0), "fp16": (1e-5, 5e-4), "int8": (5e-3, 1e-2)}  # (mse, mad)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_real_variant_builds_and_agrees_with_fp32(
    precision: str, shared: Path, real_model: Path, tmp_path: Path
) -> None:
    ppm = shared / "datasets" / "ppm100-dev"
    ids = sorted(p.stem for p in (ppm / "image").iterdir())
    cfg = build_config_from_dict(
        {
            "name": precision,
            "precision": precision,
            "output": str(tmp_path / f"{precision}.onnx"),
            "verify_images": 1,
            "calibration": {
                "datasets": [{"path": str(ppm), "take": REAL_CALIBRATION}],
                "images": REAL_CALIBRATION,
            },
            "int8": {"keep_float": REAL_KEEP_FLOAT},
        }
    )
    result = build_variant(cfg)
    if precision == "int8":
        assert result.record["calibration"]["ids"] == ids[:REAL_CALIBRATION]
    if precision == "fp16":  # IBNorm variances overflow fp16 on real images
        assert any(k["op_type"] == "InstanceNormalization" for k in result.record["keep_float"])
    protocol = get_protocol("seed-area")
    held_out = ids[-3:]
    x = np.stack(
        [
            protocol.preprocess(decode_image((ppm / "image" / f"{i}.jpg").read_bytes(), name=i))
            for i in held_out
        ]
    )
    ours, ref = _run(result.output, x), _run(real_model, x)
    mse, mad = float(np.mean((ours - ref) ** 2)), float(np.mean(np.abs(ours - ref)))
    assert mse <= TOLERANCE[precision][0] and mad <= TOLERANCE[precision][1], (mse, mad)
