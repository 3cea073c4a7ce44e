"""Job config: defaults < YAML < CLI, validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from modnet_batch.config import dump_job, load_job
from modnet_batch.errors import ModnetBatchError


def test_precedence_cli_over_yaml_over_defaults(tmp_path: Path) -> None:
    job_file = tmp_path / "job.yaml"
    job_file.write_text("dataset: d\nout: r\nprotocol: paper\nbatch_size: 8\n")
    job = load_job(job_file, {"protocol": "seed-linear", "batch_size": None, "threads": 2})
    assert job.protocol == "seed-linear"  # CLI wins
    assert job.batch_size == 8  # YAML wins over the default; None on the CLI means "not given"
    assert job.threads == 2 and job.instances == 1


def test_resolved_job_round_trips(tmp_path: Path) -> None:
    job = load_job(None, {"dataset": "d", "out": "r", "decode_reduce": 4})
    assert job.decode_reduce == "4"
    dump_job(job, tmp_path / "job.yaml")
    assert load_job(tmp_path / "job.yaml") == job


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"out": "r"}, "--dataset"),
        ({"dataset": "d"}, "--out"),
        ({"dataset": "d", "out": "r", "batch_size": 0}, "batch_size"),
        ({"dataset": "d", "out": "r", "backend": "spark"}, "backend"),
        ({"dataset": "d", "out": "r", "decode_reduce": "3"}, "decode_reduce"),
    ],
)
def test_invalid_jobs_are_explained(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ModnetBatchError, match=message):
        load_job(None, overrides)


def test_unknown_yaml_key_is_named(tmp_path: Path) -> None:
    job_file = tmp_path / "job.yaml"
    job_file.write_text("dataset: d\nout: r\nbatchsize: 3\n")
    with pytest.raises(ModnetBatchError, match="batchsize"):
        load_job(job_file)
