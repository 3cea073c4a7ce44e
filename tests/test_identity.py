"""The run identity (results/identity.py): the same job resumes, identities recorded in older
encodings are recognised, another model or protocol is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modnet_batch.errors import ModnetBatchError
from modnet_batch.execution.driver import run_job
from modnet_batch.options import load_job
from modnet_batch.results import RunIdentity
from modnet_batch.results.outputs import OutputKind, OutputSize, OutputSpec

# state/identity.json as a scored seed-area job with the defaults records it
RECORDED = {
    "dataset": "f7db4a5c476e67b7036dc50f21a8fa65db800e1499026ca13d220d28640b98b3",
    "decode_reduce": 1,
    "model_sha256": "bcede659abcfb576fa6added05af18a626a9bc5c41454e6d0ed9e87e5279e38b",
    "protocol": "seed-area",
}


def _job(dataset: Path, out: Path, model: Path, **kw: object) -> object:
    return load_job(
        None,
        {"dataset": str(dataset), "out": str(out), "model": str(model), "backend": "inline", **kw},
    )


def test_the_same_job_has_the_same_identity() -> None:
    identity = RunIdentity.from_dict(RECORDED)
    assert identity.decode_factor == 1 and identity.engine is None
    assert identity.to_dict() == RECORDED
    identity.check(dict(RECORDED), Path("run"))  # no refusal
    outputs = OutputSpec(kinds=(OutputKind.CUTOUT,), size=OutputSize.SOURCE, png_level=3)
    matting = RunIdentity(**{**identity.__dict__, "outputs": outputs, "output_dir": "/out"})
    assert RunIdentity.from_dict(json.loads(json.dumps(matting.to_dict()))) == matting


@pytest.mark.parametrize(("legacy", "factor"), [("off", 1), ("auto", 0), ("4", 4)])
def test_the_decode_recorded_as_a_mode_is_recognised(legacy: str, factor: int) -> None:
    old = {k: v for k, v in RECORDED.items() if k != "decode_reduce"} | {"decode": legacy}
    identity = RunIdentity(
        dataset=RECORDED["dataset"],
        model_sha256=RECORDED["model_sha256"],
        protocol="seed-area",
        decode_factor=factor,
    )
    assert RunIdentity.from_dict(old) == identity
    identity.check(old, Path("run"))


def test_another_model_or_protocol_is_refused_in_one_line() -> None:
    identity = RunIdentity.from_dict(RECORDED)
    for key, value in (("model_sha256", "0" * 64), ("protocol", "paper")):
        with pytest.raises(ModnetBatchError) as err:
            identity.check({**RECORDED, key: value}, Path("/runs/r1"))
        text = str(err.value)
        assert "\n" not in text and "/runs/r1" in text and f"differs in {key}" in text
        assert "choose a new --out" in text
    with pytest.raises(ModnetBatchError, match="differs in future_key"):
        identity.check({**RECORDED, "future_key": 1}, Path("r"))  # a newer writer's input


def test_a_run_recorded_in_the_old_encoding_resumes(
    synth_dataset: Path, tiny_model: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    run_job(_job(synth_dataset, run, tiny_model))  # type: ignore[arg-type]
    path = run / "state" / "identity.json"
    recorded = json.loads(path.read_text())
    assert recorded["decode_reduce"] == 1  # a scored job decodes exactly
    old = {k: v for k, v in recorded.items() if k != "decode_reduce"} | {"decode": "off"}
    path.write_text(json.dumps(old))
    again = run_job(_job(synth_dataset, run, tiny_model))  # type: ignore[arg-type]
    assert again.complete and again.summary.images.total == 12
    assert json.loads(path.read_text()) == old  # kept as the run first recorded it
    with pytest.raises(ModnetBatchError, match="differs in protocol"):
        run_job(_job(synth_dataset, run, tiny_model, protocol="paper"))  # type: ignore[arg-type]
