"""Every command's --help shows each option's default in one style and its text as written
(no `[torch]` read as markup); `matte --help` lists only what applies to matting, in panels; the
version flag prints the version."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from modnet_batch import __version__
from modnet_batch.cli import app


def _commands() -> list[tuple[str, Any]]:
    """Every command and subcommand (typer's click objects: duck-typed, typer may vendor click)."""
    root = typer.main.get_command(app)
    found: list[tuple[str, Any]] = []
    for name, cmd in root.commands.items():  # type: ignore[attr-defined]
        if hasattr(cmd, "commands"):
            found.extend((f"{name} {sub}", c) for sub, c in cmd.commands.items())
        else:
            found.append((name, cmd))
    assert len(found) >= 12
    return found


@pytest.mark.parametrize(("name", "command"), _commands(), ids=lambda v: str(v))
def test_every_option_shows_its_default(name: str, command: Any) -> None:
    missing = []
    for param in command.params:
        if param.param_type_name != "option" or param.name == "help":
            continue
        shown = bool(param.show_default) and param.default is not None
        if not (shown or "(default:" in (param.help or "") or param.is_flag):
            missing.append(param.opts[0])
    assert not missing, f"`modnet-batch {name} --help` shows no default for {missing}"


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def _flat(text: str) -> str:
    """The help as one line of words: no panel borders, no line breaks."""
    return " ".join(text.replace("│", " ").split())


@pytest.mark.parametrize(("name", "command"), _commands(), ids=lambda v: str(v))
def test_defaults_are_shown_in_one_style(name: str, command: Any) -> None:
    """Every option's help ends in `(default: X)`; typer's own `[default: X]` appears nowhere."""
    text = _help(*name.split())
    assert "[default:" not in text
    for param in command.params:
        if param.param_type_name == "option" and param.name not in ("help", "version"):
            assert "(default: " in (param.help or ""), f"{name} {param.opts[0]}"


@pytest.mark.parametrize(("name", "command"), _commands(), ids=lambda v: str(v))
def test_help_renders_brackets_literally(name: str, command: Any) -> None:
    """Nothing in square brackets is read as console markup and dropped from --help."""
    import re

    shown = _flat(_help(*name.split()))
    texts = [command.help or ""] + [p.help or "" for p in command.params if not p.hidden]
    for text in texts:
        for token in re.findall(r"\[[^\]\s]{1,40}\]", text):
            assert token in shown, f"`{name} --help` drops {token}"


def test_engine_help_names_the_torch_extra() -> None:
    assert "pip install 'modnet-batch[torch]'" in _flat(_help("submit"))
    assert "pip install 'modnet-batch[torch]'" in _flat(_help("matte"))


def test_matte_offers_only_what_applies_to_matting() -> None:
    text = _help("matte")
    for flag in ("--dataset", "--out ", "--image-column", "--output-dir", "--scoring"):
        assert flag not in text, flag
    for flag in ("--model", "--engine", "--device", "--workers", "--output", "--png-level"):
        assert flag in text, flag
    assert "(default: paper)" in _flat(text)  # matte's own default protocol
    panels = [p for p in ("Input", "Model and engine", "Devices", "Outputs", "Advanced")]
    positions = [text.index(f"─ {p} ─") for p in panels]
    assert positions == sorted(positions)  # grouped, in that order
    refused = CliRunner().invoke(app, ["matte", "src", "out", "--dataset", "d"])
    assert refused.exit_code == 2 and "No such option" in refused.output


def test_submit_still_offers_every_job_option() -> None:
    text = _help("submit")
    for flag in ("--dataset", "--out ", "--image-column", "--output-dir", "--scoring", "--follow"):
        assert flag in text, flag
    assert "(default: seed-area)" in _flat(text)
