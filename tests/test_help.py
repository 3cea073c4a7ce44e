"""Every command's --help shows each option's default (issue: CLI conventions), and the version
flag prints the version."""

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
