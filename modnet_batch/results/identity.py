"""A run's identity: what makes a re-run of a job "the same job", so that it resumes in the run
directory instead of being refused (`state/identity.json`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from modnet_batch.errors import ModnetBatchError
from modnet_batch.results.outputs import OutputKind, OutputSize, OutputSpec
from modnet_batch.storage import AnyPath

# `decode` as runs recorded it for a while (the decode mode's value), and its factor now.
_LEGACY_DECODE = {"off": 1, "auto": 0, "2": 2, "4": 4, "8": 8}


@dataclass(frozen=True)
class RunIdentity:
    """The inputs that decide a job's results: the same dataset content, model file, protocol
    and decode, and, where they are not the defaults, the engine (with its precision and where
    it scores), device decoding, the outputs folder and the per-image outputs.

    `decode_factor` is 0 for a decode reduced per image (auto), 1 for exact, else the fixed
    reduction. identity.json records only what is not the default, so runs made before an
    input existed still resume; a run that recorded its decode as `decode` (the mode's value)
    is read as the same identity.
    """

    dataset: str  # the dataset's fingerprint (Dataset.fingerprint)
    model_sha256: str
    protocol: str
    decode_factor: int
    # another engine than the default (onnxruntime): its name, compute precision, scoring place
    engine: str | None = None
    precision: str | None = None
    scoring: str | None = None
    decoding: str = "cpu"  # `device`: decoded and resized on the engine's device
    output_dir: str | None = None  # `--output-dir` as resolved, when the outputs go elsewhere
    outputs: OutputSpec = field(default_factory=OutputSpec)
    # keys this modnet-batch does not know (a newer writer's): they make another job
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """identity.json: the encoding every earlier run used, defaults left out."""
        data: dict[str, Any] = {
            "dataset": self.dataset,
            "model_sha256": self.model_sha256,
            "protocol": self.protocol,
            "decode_reduce": self.decode_factor,
        }
        if self.engine is not None:
            data.update(engine=self.engine, precision=self.precision, scoring=self.scoring)
        if self.decoding != "cpu":
            data["decoding"] = self.decoding
        if self.output_dir is not None:
            data["output_dir"] = self.output_dir
        if self.outputs != OutputSpec():
            data["outputs"] = {
                "kinds": [k.value for k in self.outputs.kinds],
                "size": self.outputs.size.value,
                "background": list(self.outputs.background),
                "png_level": self.outputs.png_level,
            }
        return {**self.extra, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "identity") -> RunIdentity:
        """An identity as a run recorded it, in any encoding modnet-batch has written."""
        values = dict(data)
        try:
            if "decode" in values and "decode_reduce" not in values:
                values["decode_reduce"] = _LEGACY_DECODE[str(values.pop("decode"))]
            known = {f.name for f in fields(cls)} - {"decode_factor", "outputs", "extra"}
            return cls(
                decode_factor=int(values.pop("decode_reduce")),
                outputs=_outputs(values.pop("outputs", None)),
                **{k: values.pop(k) for k in list(values) if k in known},
                extra=values,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModnetBatchError(
                f"{origin} is not a modnet-batch run identity ({exc}); choose a new --out"
            ) from None

    def differences(self, other: RunIdentity) -> list[str]:
        """The identity.json keys in which `other` differs from this identity."""
        mine, theirs = self.to_dict(), other.to_dict()
        return sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))

    def check(self, recorded: dict[str, Any], run: AnyPath) -> None:
        """Refuse to resume `run` when what it recorded is another job's identity."""
        diff = self.differences(RunIdentity.from_dict(recorded, f"{run}/state/identity.json"))
        if diff:
            raise ModnetBatchError(
                f"run directory {run} holds a different job (differs in {', '.join(diff)}); "
                "choose a new --out, or delete it to start over"
            )


def _outputs(recorded: Any) -> OutputSpec:
    """The per-image outputs an identity recorded (npz alone when it says nothing)."""
    if recorded is None:
        return OutputSpec()
    return OutputSpec(
        kinds=tuple(OutputKind(k) for k in recorded["kinds"]),
        size=OutputSize(recorded.get("size", OutputSize.SCORED.value)),
        background=tuple(recorded.get("background", OutputSpec.background)),
        png_level=int(recorded.get("png_level", OutputSpec.png_level)),
    )
