"""The build configuration of a model variant (`configs/build-*.yaml`): frozen dataclasses + loader.

Paths may use `~` and `${ENV}`; relative paths are relative to the working directory.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from modnet_batch.errors import ModnetBatchError

PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_METHODS = ("kl", "minmax", "percentile")
QUANT_FORMATS = ("qdq", "qoperator")
QUANT_TYPES = ("uint8", "int8")
# Op types whose quantization the auto keep-float search measures one node at a time. Resize,
# Slice, Reshape, ... follow their input's quantization and are never quantized alone.
AUTO_OP_TYPES = ("Conv", "Gemm", "MatMul", "Add", "Mul", "Concat", "Sigmoid", "GlobalAveragePool")
_ENV = re.compile(r"\$\{(\w+)\}|\$(\w+)")


@dataclass(frozen=True)
class ImageSource:
    """One dataset dir (`modnet-batch ingest`) or image folder (PPM layout or flat) to draw from."""

    path: str
    take: int | None = None  # the first N ids in sorted order (after `ids` / `exclude`)
    ids: tuple[str, ...] | None = None  # exactly these ids, instead of all
    exclude: tuple[str, ...] = ()  # never these ids


@dataclass(frozen=True)
class CalibrationConfig:
    """Real images: int8 calibration, the fp16 overflow check, and every variant's verification."""

    datasets: tuple[ImageSource, ...] = ()
    images: int = 50  # at most this many, taken dataset by dataset in order
    protocol: str = "seed-area"  # preprocessing exactly as evaluation with this protocol does
    method: str = "kl"  # int8 ranges: kl (entropy) | minmax | percentile
    percentile: float = 99.999  # for method: percentile


@dataclass(frozen=True)
class Int8Config:
    # --- quantization (defaults: what is fast and accurate on x86 AVX2 without VNNI)
    quant_format: str = "qdq"  # qdq | qoperator
    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = True  # depthwise convs with folded BN need a scale per output channel
    reduce_range: bool = True  # 7-bit weights: no int16 saturation in AVX2 u8*s8 kernels
    # No int8 kernel on CPU for these: quantizing them only adds Q/DQ and rounds their params.
    exclude_op_types: tuple[str, ...] = ("BatchNormalization", "InstanceNormalization")
    # --- nodes left in float
    keep_float: str | tuple[str, ...] = "auto"  # "auto" or node names
    auto_budget: int = 8  # auto: keep this many of the most sensitive nodes in float
    auto_images: int = 8  # auto: calibration images used to rank nodes
    auto_op_types: tuple[str, ...] = AUTO_OP_TYPES


@dataclass(frozen=True)
class Fp16Config:
    # "auto": fp32 for reductions whose fp16 accumulation overflows on the images (InstanceNorm
    # variance), else these op types / node names stay fp32.
    keep_float: str | tuple[str, ...] = "auto"


@dataclass(frozen=True)
class BuildConfig:
    name: str
    precision: str
    source: str | None = None  # None = the reference model (`modnet-batch model fetch`)
    input_shape: tuple[int, int] | None = (480, 288)  # H, W of calibration tensors; None = any
    output: str | None = None  # None = <cache>/variants/<name>.onnx
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    int8: Int8Config = field(default_factory=Int8Config)
    fp16: Fp16Config = field(default_factory=Fp16Config)
    verify_images: int = 4  # images compared with the source after the build

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def expand_path(value: str, what: str) -> Path:
    """`~` and `${VAR}` expanded; an unset variable is an error, not an empty string."""

    def sub(match: re.Match[str]) -> str:
        var = match.group(1) or match.group(2)
        if var not in os.environ:
            raise ModnetBatchError(
                f"{what} {value!r} uses ${{{var}}}, which is not set; export {var}, write the "
                "path out in the build config, or pass `build --calibration DIR`"
            )
        return os.environ[var]

    return Path(_ENV.sub(sub, value)).expanduser()


PACKAGED = Path(__file__).resolve().parent / "configs"  # shipped in the wheel (package data)


def packaged_configs() -> dict[str, Path]:
    """The build configs shipped with the package, by variant name: `build fp16` finds them."""
    return {p.stem.removeprefix("build-"): p for p in sorted(PACKAGED.glob("build-*.yaml"))}


def find_build_config(spec: str | Path) -> Path:
    """A YAML path as given, or the packaged config of a variant name (fp32, fp16, int8)."""
    path = Path(spec)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        return path
    known = packaged_configs()
    if str(spec) in known:
        return known[str(spec)]
    raise ModnetBatchError(
        f"build config {spec!r} is neither a YAML file nor a packaged variant; use one of "
        f"{', '.join(known)} or a path like configs/build-int8.yaml"
    )


def with_calibration(config: BuildConfig, folders: list[str]) -> BuildConfig:
    """The config with its calibration datasets replaced by `folders` (all of each)."""
    if not folders:
        return config
    sources = tuple(ImageSource(path=f) for f in folders)
    return replace(config, calibration=replace(config.calibration, datasets=sources))


def load_build_config(path: str | Path) -> BuildConfig:
    """Read a build YAML; unknown keys and bad values raise ModnetBatchError naming them."""
    path = find_build_config(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ModnetBatchError(
            f"build config {path} does not exist; see configs/build-int8.yaml for an example"
        ) from None
    except yaml.YAMLError as exc:
        raise ModnetBatchError(f"build config {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ModnetBatchError(f"build config {path} must be a mapping of keys to values")
    return build_config_from_dict(data, origin=str(path))


def build_config_from_dict(data: dict[str, Any], origin: str = "build config") -> BuildConfig:
    """A BuildConfig from plain values (the YAML's structure), validated."""
    values = dict(data)
    calib = _section(
        values.pop("calibration", None) or {}, CalibrationConfig, f"{origin}: calibration"
    )
    datasets = tuple(
        _source(s, f"{origin}: calibration.datasets[{i}]")
        for i, s in enumerate(calib.pop("datasets", None) or ())
    )
    int8 = _section(values.pop("int8", None) or {}, Int8Config, f"{origin}: int8")
    fp16 = _section(values.pop("fp16", None) or {}, Fp16Config, f"{origin}: fp16")
    _check_keys(values, BuildConfig, origin, skip=frozenset({"calibration", "int8", "fp16"}))
    if "input_shape" in values and values["input_shape"] is not None:
        values["input_shape"] = _shape(values["input_shape"], origin)
    for key in ("keep_float",):
        for section in (int8, fp16):
            if isinstance(section.get(key), list):
                section[key] = tuple(str(v) for v in section[key])
    for key in ("exclude_op_types", "auto_op_types"):
        if isinstance(int8.get(key), list):
            int8[key] = tuple(str(v) for v in int8[key])
    try:
        config = BuildConfig(
            **values,
            calibration=CalibrationConfig(datasets=datasets, **calib),
            int8=Int8Config(**int8),
            fp16=Fp16Config(**fp16),
        )
    except TypeError as exc:  # a required key is missing
        raise ModnetBatchError(f"{origin}: {exc}; `name` and `precision` are required") from None
    validate_build_config(config, origin)
    return config


def validate_build_config(config: BuildConfig, origin: str = "build config") -> None:
    """Raise ModnetBatchError naming `origin` and the first key with a value out of range."""
    for check in (_names_and_choices, _ranges):
        problem = check(config)
        if problem:
            raise ModnetBatchError(f"{origin}: {problem}")
    from modnet_batch.protocol import get_protocol

    try:
        get_protocol(config.calibration.protocol)
    except ModnetBatchError as exc:
        raise ModnetBatchError(f"{origin}: calibration.protocol: {exc}") from None


def _names_and_choices(config: BuildConfig) -> str | None:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", config.name or ""):
        return f"name {config.name!r} must match [A-Za-z0-9._-]+ (it names the output file)"
    if config.precision not in PRECISIONS:
        return f"precision {config.precision!r} is unknown; use one of {', '.join(PRECISIONS)}"
    q, calib = config.int8, config.calibration
    choices = {
        "calibration.method": (calib.method, CALIBRATION_METHODS),
        "int8.quant_format": (q.quant_format, QUANT_FORMATS),
        "int8.activation_type": (q.activation_type, QUANT_TYPES),
        "int8.weight_type": (q.weight_type, QUANT_TYPES),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            return f"{key} {value!r} is unknown; use one of {', '.join(allowed)}"
    if (q.activation_type, q.weight_type) == ("int8", "uint8"):
        return "int8 activations with uint8 weights are not supported by onnxruntime"
    for section, keep in (("int8", q.keep_float), ("fp16", config.fp16.keep_float)):
        if isinstance(keep, str) and keep != "auto":
            return f"{section}.keep_float {keep!r}: use auto or a list of names"
    return None


def _ranges(config: BuildConfig) -> str | None:
    q, calib = config.int8, config.calibration
    if not 0 < calib.percentile <= 100:
        return f"calibration.percentile {calib.percentile} must be in (0, 100]"
    if q.auto_budget < 0 or q.auto_images < 1:
        return "int8.auto_budget must be >= 0 and int8.auto_images >= 1"
    if calib.images < 1 or config.verify_images < 0:
        return "calibration.images must be >= 1 and verify_images >= 0"
    if config.precision == "int8" and not calib.datasets:
        return (
            "int8 needs calibration images: add calibration.datasets (dataset dirs or image "
            "folders), e.g. `calibration: {datasets: [{path: data/calib}]}`"
        )
    return None


def _section(values: Any, cls: type, where: str) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise ModnetBatchError(f"{where} must be a mapping, got {values!r}")
    _check_keys(values, cls, where)
    return dict(values)


def _check_keys(
    values: dict[str, Any], cls: type, where: str, skip: frozenset[str] = frozenset()
) -> None:
    known = {f.name for f in dataclasses.fields(cls)} - skip
    unknown = sorted(set(values) - known - skip)
    if unknown:
        raise ModnetBatchError(f"{where} has unknown keys {unknown}; known keys: {sorted(known)}")


def _source(value: Any, where: str) -> ImageSource:
    if isinstance(value, str):
        return ImageSource(path=value)
    values = _section(value, ImageSource, where)
    if "path" not in values:
        raise ModnetBatchError(f"{where} needs a `path` (dataset dir or image folder)")
    for key in ("ids", "exclude"):
        if values.get(key) is not None:
            if not isinstance(values[key], list):
                raise ModnetBatchError(f"{where}.{key} must be a list of image ids")
            values[key] = tuple(str(v) for v in values[key])
    if values.get("exclude") is None:
        values.pop("exclude", None)
    take = values.get("take")
    if take is not None and (not isinstance(take, int) or take < 1):
        raise ModnetBatchError(f"{where}.take {take!r} must be a positive integer")
    return ImageSource(**values)


def _shape(value: Any, where: str) -> tuple[int, int]:
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and v > 0 for v in value)
    ):
        return int(value[0]), int(value[1])
    raise ModnetBatchError(f"{where}: input_shape {value!r} must be [height, width] or null")
