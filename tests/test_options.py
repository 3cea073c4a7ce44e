"""Job config: defaults < YAML < CLI, validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from modnet_batch.errors import ModnetBatchError
from modnet_batch.options import dump_job, load_job


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


@pytest.mark.parametrize(
    ("yaml_text", "key", "expected"),
    [
        ("batch_size: 2.5", "batch_size = 2.5", "an integer >= 1"),  # a float where an int belongs
        ("workers: 0", "workers = 0", "an integer >= 1"),  # zero count (was ZeroDivisionError)
        ("threads: -2", "threads = -2", "an integer >= 1"),
        ("instances: two", "instances = 'two'", "an integer >= 1"),
        ("dataset: [a, b]", "dataset = ['a', 'b']", "a string"),  # a list where a path belongs
        ("dashboard: maybe", "dashboard = 'maybe'", "true or false"),
        ("max_retries: -1", "max_retries = -1", "an integer >= 0"),
        ("decode_reduce: 3", "decode_reduce = 3", "one of off, auto, 2, 4, 8"),
        ("protocol: ppm", "protocol = 'ppm'", "one of seed-area, seed-linear, paper"),
        ("runtime_env: [x]", "runtime_env = ['x']", "a mapping"),
        ("shards_in_flight: true", "shards_in_flight = True", "an integer >= 1"),
    ],
)
def test_bad_yaml_values_are_one_line_errors_naming_key_value_and_expectation(
    tmp_path: Path, yaml_text: str, key: str, expected: str
) -> None:
    job_file = tmp_path / "job.yaml"
    job_file.write_text(f"dataset: d\nout: r\n{yaml_text}\n")
    with pytest.raises(ModnetBatchError) as info:
        load_job(job_file)
    message = str(info.value)
    assert "\n" not in message
    assert str(job_file) in message and key in message and f"expected {expected}" in message


def test_a_job_made_in_code_is_checked_too() -> None:
    from modnet_batch.options import JobConfig
    from modnet_batch.options.job import validate

    with pytest.raises(ModnetBatchError, match=r"job option: batch_size = 0 .* >= 1"):
        validate(JobConfig(dataset="d", out="r", batch_size=0))


def test_submit_flags_are_the_declared_options() -> None:
    """Every job option except YAML-only ones is a submit flag, with the declared help."""
    import typer.main

    from modnet_batch.cli import app
    from modnet_batch.options import JobConfig
    from modnet_batch.options.spec import declared

    command = typer.main.get_command(app)
    submit = command.commands["submit"]  # type: ignore[attr-defined]
    flags = {p.name: p for p in submit.params if p.param_type_name == "option"}
    for item in declared(JobConfig):
        if not item.spec.cli:
            assert item.name not in flags
            continue
        assert flags[item.name].opts == [item.flag]
        assert item.spec.help in (flags[item.name].help or "")


def test_backend_names_match_the_registry() -> None:
    from modnet_batch.execution.backends import BACKENDS as REGISTRY
    from modnet_batch.options import BACKENDS

    assert set(BACKENDS) == set(REGISTRY)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["submit", "--dataset", "d", "--out", "r", "--batch-size", "0"], "--batch-size = '0'"),
        (["submit", "--dataset", "d", "--out", "r", "--workers", "1.5"], "--workers = '1.5'"),
        (["submit", "--dataset", "d", "--out", "r", "--decode-reduce", "5"], "--decode-reduce"),
        (["bench", "--mode", "model", "--batch-size", "1,x"], "--batch-size = '1,x'"),
        (["bench", "--mode", "model", "--workers", "0"], "--workers = '0'"),
        (["bench", "--mode", "model", "--duration", "0"], "--duration = '0'"),
        (["bench", "--mode", "fast"], "--mode = 'fast'"),
    ],
)
def test_bad_cli_values_are_one_line_errors(args: list[str], needle: str) -> None:
    from typer.testing import CliRunner

    from modnet_batch.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.output


@pytest.mark.parametrize(
    ("command", "config"),
    [
        ("ingest", "IngestConfig"),
        ("report", "ReportConfig"),
        ("build", "BuildOptions"),
        ("status", "ClusterConfig"),
        ("logs", "ClusterConfig"),
    ],
)
def test_every_command_takes_its_declared_options(command: str, config: str) -> None:
    """ingest, report, build and the cluster commands take the options declared in options/,
    with their help, and nothing else."""
    import typer.main

    import modnet_batch.options as options
    from modnet_batch.cli import app

    cls = getattr(options, config)
    params = typer.main.get_command(app).commands[command].params  # type: ignore[attr-defined]
    flags = {p.name: p for p in params if p.param_type_name == "option" and p.name != "help"}
    offered = {d.name: d for d in options.spec.declared(cls) if d.spec.offered_by(command)}
    assert set(flags) == set(offered)
    for name, item in offered.items():
        assert flags[name].opts == [item.flag] and item.spec.help in (flags[name].help or "")


def test_an_option_can_belong_to_some_commands_and_default_differently() -> None:
    from modnet_batch.options import JobConfig
    from modnet_batch.options.spec import command_defaults, declared

    items = {d.name: d for d in declared(JobConfig)}
    assert items["dataset"].spec.offered_by("submit")
    assert not items["dataset"].spec.offered_by("matte")
    assert items["model"].spec.offered_by("matte")
    assert command_defaults(JobConfig, "matte") == {"protocol": "paper"}
    assert command_defaults(JobConfig, "submit") == {"protocol": "seed-area"}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["ingest", "src", "out", "--shard-size", "0"], "--shard-size = '0'"),
        (["ingest", "src", "out", "--backend", "spark"], "--backend = 'spark'"),
        (["report", "run", "--metric", "iou"], "--metric = 'iou'"),
        (["report", "run", "--worst", "x"], "--worst = 'x'"),
    ],
)
def test_bad_values_of_every_command_are_one_line_errors(args: list[str], needle: str) -> None:
    from typer.testing import CliRunner

    from modnet_batch.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.output


def test_a_list_of_strings_is_a_repeated_flag_or_a_yaml_list() -> None:
    from modnet_batch.cli.params import parse
    from modnet_batch.options import BuildOptions
    from modnet_batch.options.spec import Source, build

    flags = parse(BuildOptions, {"calibration": ["a dir", "b,c"], "force": True})
    assert flags == BuildOptions(calibration=("a dir", "b,c"), force=True)  # no comma split
    assert build(BuildOptions, [Source("yaml", {"calibration": ["x"]})]).calibration == ("x",)
    with pytest.raises(ModnetBatchError, match="expected a list of strings"):
        build(BuildOptions, [Source("yaml", {"calibration": [1]})])
