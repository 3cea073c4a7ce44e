"""The options of a job (`submit`, job.yaml): declared once, resolved CLI > YAML > defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modnet_batch.engine import DEFAULT_ENGINE, ENGINES
from modnet_batch.errors import ModnetBatchError
from modnet_batch.options.spec import (
    ADVANCED,
    DEVICES,
    INPUT,
    MODEL,
    OUTPUTS,
    Source,
    build,
    check_all,
    load_yaml,
    option,
    plain,
)
from modnet_batch.pipeline import DecodeMode
from modnet_batch.protocol import DEFAULT_PROTOCOL, PROTOCOLS
from modnet_batch.results.outputs import (
    DEFAULT_PNG_LEVEL,
    OutputSize,
    colour_text,
    output_text,
    parse_size,
    png_level,
)
from modnet_batch.storage import redact

# The execution backends (execution.backends registers one runner for each name).
BACKENDS = ("ray", "inline")


@dataclass(frozen=True)
class JobConfig:
    # --- what to run
    dataset: str = option(
        "",
        "Dataset directory (from `ingest`), or Parquet read in place: a .parquet file or a folder "
        "of them (see --image-column).",
        metavar="DIR",
        panel=INPUT,
        commands=("submit",),
    )
    image_column: str | None = option(
        None,
        "Parquet read in place: the column of encoded images (binary, or a struct with a bytes "
        "field as Hugging Face datasets writes); none = image.",
        metavar="NAME",
        panel=INPUT,
        unlisted=("matte",),
    )
    matte_column: str | None = option(
        None,
        "Parquet read in place: the column of encoded mattes (ground truth); none = matte in "
        "the files that have one (the others are unscored).",
        metavar="NAME",
        panel=INPUT,
        unlisted=("matte",),
    )
    id_column: str | None = option(
        None,
        "Parquet read in place: the column of image ids; none = the image paths' stems when "
        "unique, else <file stem>-<row>.",
        metavar="NAME",
        panel=INPUT,
        unlisted=("matte",),
    )
    model: str | None = option(
        None,
        "Model: a path, or a built variant fp32/fp16/int8; none = the reference model.",
        metavar="MODEL",
        panel=MODEL,
    )
    protocol: str = option(
        DEFAULT_PROTOCOL,
        "Evaluation protocol: seed-area, seed-linear or paper.",
        choices=PROTOCOLS.keys,
        metavar="PROTOCOL",
        panel=INPUT,
        default_in=(("matte", "paper"),),  # MODNet's own inference size
    )
    out: str = option(
        "",
        "Run directory; an existing one of the same job is resumed.",
        metavar="RUN",
        panel=OUTPUTS,
        commands=("submit",),
    )
    # --- where to run it
    address: str | None = option(
        None,
        "Ray Jobs API address, e.g. http://HEAD:8265; none = an embedded local Ray.",
        envvar="RAY_ADDRESS",
        metavar="URL",
        panel=DEVICES,
    )
    backend: str = option(
        "ray", "ray, or inline (one process, no Ray).", choices=lambda: BACKENDS, panel=DEVICES
    )
    engine: str = option(
        DEFAULT_ENGINE,
        "Inference engine: onnxruntime, or torch (the ONNX converted once into a torch module; "
        "pip install 'modnet-batch[torch]').",
        choices=ENGINES.keys,
        panel=MODEL,
    )
    precision: str | None = option(
        None,
        "Compute precision: fp32, fp16 or bf16 for the torch engine, which casts the fp32 model; "
        "none = the model's own (onnxruntime always runs that: use --model fp16).",
        metavar="fp32|fp16|bf16",
        panel=MODEL,
    )
    channels_last: bool = option(
        False,
        "torch engine: NHWC weights and inputs (often faster convolutions on GPUs).",
        panel=MODEL,
    )
    torch_compile: str = option(
        "none",
        "torch engine: none, compile (torch.compile: minutes per input shape on a CPU) or "
        "cudagraphs (one CUDA graph per input shape, replayed: no per-kernel launch cost).",
        choices=lambda: ("none", "compile", "cudagraphs"),
        panel=MODEL,
    )
    scoring: str = option(
        "auto",
        "Where the metrics but Conn are computed: device (torch engine, seed protocols: uint8 "
        "pixels travel, the GPU scores), cpu (the pool threads), auto = device where it can.",
        choices=lambda: ("auto", "device", "cpu"),
        panel=ADVANCED,
        commands=("submit",),
    )
    device: str = option(
        "cpu",
        "cpu, gpu, or a Ray custom resource naming one accelerator.",
        metavar="DEVICE",
        panel=DEVICES,
    )
    provider: str | None = option(
        None,
        "onnxruntime provider: cpu, cuda, tensorrt, rocm, ...; none = cuda on gpu, else cpu.",
        metavar="NAME",
        panel=DEVICES,
    )
    workers: int | None = option(
        None,
        "Devices or CPU workers to use; none = all / fill the CPUs.",
        min=1,
        panel=DEVICES,
    )
    threads: int | None = option(
        None,
        "Threads per CPU worker; none = split the CPUs without oversubscribing.",
        min=1,
        panel=DEVICES,
    )
    instances: int = option(
        1, "Actors per device (a model zoo perf tool's -i).", min=1, panel=DEVICES
    )
    # --- how
    batch_size: int | None = option(
        None,
        "Images per inference batch; none = 1 on CPU, and on accelerators what each device "
        "measures as its own when it starts (1..256).",
        min=1,
        panel=MODEL,
    )
    decode_threads: int | None = option(
        None,
        "Decode/score threads per actor, each holding one Ray CPU; none = 1 on CPU workers, and "
        "on accelerators each device's share of its node's CPUs.",
        min=1,
        panel=DEVICES,
    )
    decode_reduce: DecodeMode | None = option(
        None,
        "JPEG decode: off (exact), auto (reduced where the protocol allows), 2, 4, 8; none = "
        "exact when the dataset has ground truth, auto when it has none.",
        parse=DecodeMode.parse,
        metavar="off|auto|2|4|8",
        panel=ADVANCED,
    )
    decoding: str = option(
        "cpu",
        "Where photos are decoded and resized: cpu (the pool threads, exact), or device (torch "
        "engine: baseline JPEGs decoded by the GPU's JPEG decoder and resized there, the rest "
        "on the CPU; metrics approximate; needs torchvision).",
        choices=lambda: ("cpu", "device"),
        panel=ADVANCED,
    )
    decode_megapixels: int = option(
        128,
        "--decoding device: megapixels decoded on the device at once (fewer where its free "
        "memory is short).",
        min=1,
        metavar="MP",
        panel=ADVANCED,
    )
    decode_check: int = option(
        8,
        "A scored job with a reduced decode runs this many of its images again with an exact "
        "decode and reports how far its metrics moved (0: no check).",
        min=0,
        panel=ADVANCED,
        commands=("submit",),
    )
    # --- what to write per image
    output: str | None = option(
        None,
        "Per-image files, comma-separated: alpha-png, alpha-png16, npz, cutout (RGBA PNG), "
        "composite (JPEG on --background) or none; none given = npz for a dataset with ground "
        "truth, alpha-png without.",
        parse=output_text,
        metavar="KINDS",
        panel=OUTPUTS,
    )
    output_size: OutputSize | None = option(
        None,
        "Size of image outputs: source (each photo's own) or scored (the protocol's scoring "
        "size); none = source. npz is always at the scoring size.",
        parse=parse_size,
        metavar="source|scored",
        panel=OUTPUTS,
    )
    output_dir: str | None = option(
        None,
        "Where image outputs go; none = RUN/outputs.",
        metavar="DIR",
        panel=OUTPUTS,
        commands=("submit",),
    )
    background: str = option(
        "#ffffff",
        "Colour under `composite`: white, black, green or #RRGGBB.",
        parse=colour_text,
        metavar="COLOUR",
        panel=OUTPUTS,
    )
    png_level: int = option(
        DEFAULT_PNG_LEVEL,
        "PNG compression level, 0 (fastest) to 9 (smallest).",
        parse=png_level,
        metavar="0-9",
        panel=OUTPUTS,
    )
    shards_in_flight: int = option(
        2,
        "Work units each worker holds: one running, the next preparing meanwhile.",
        min=1,
        panel=ADVANCED,
    )
    max_retries: int = option(3, "Retries of a work unit whose worker died.", min=0, panel=ADVANCED)
    results_via: str = option(
        "auto",
        "How per-image files reach the run directory: storage (each worker writes them; every "
        "node must see --out), driver (workers send them back with their results and the driver "
        "writes them: no shared file system needed), auto = driver for the workers that cannot "
        "see --out.",
        choices=lambda: ("auto", "storage", "driver"),
        panel=ADVANCED,
    )
    dashboard: bool = option(False, "Start the Ray dashboard (embedded Ray).", panel=ADVANCED)
    runtime_env: dict[str, Any] = option(
        {}, "Extra Ray runtime_env for --address.", cli=False, panel=ADVANCED
    )

    def to_dict(self) -> dict[str, Any]:
        return plain(self)


def load_job(
    yaml_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    cli: bool = False,
) -> JobConfig:
    """Defaults, then the YAML file's keys, then the non-None overrides (`cli`: flag text)."""
    sources: list[Source] = []
    if yaml_path is not None:
        sources.append(Source(f"job file {yaml_path}", load_yaml(Path(yaml_path), "job file")))
    origin = "command line" if cli else "job options"
    sources.append(Source(origin, overrides or {}, unset_none=True, text=cli))
    job = build(JobConfig, sources)
    validate(job)
    return job


def validate(job: JobConfig) -> None:
    """Every option's type and range, then the rules between options."""
    check_all(job, "job option")
    if not job.dataset:
        raise ModnetBatchError(
            "no dataset given; pass --dataset DIR (made by `modnet-batch ingest`, or Parquet files)"
        )
    if not job.out:
        raise ModnetBatchError("no run directory given; pass --out RUN")


def dump_job(job: JobConfig, path: Path) -> None:
    path.write_text(job_yaml(job))


def job_yaml(job: JobConfig) -> str:
    """job.yaml's text: every URI without its credentials (storage.redact)."""
    return yaml.safe_dump(without_secrets(job.to_dict()), sort_keys=False)


def without_secrets(value: Any) -> Any:
    """`value` (a job's dict) with storage.redact applied to every string in it."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: without_secrets(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_secrets(v) for v in value]
    return value
