"""The documentation is tested: its command examples against the CLI, its quick starts end to end.

Every fenced `console`, `bash`, `sh` or `shell` block of README.md and docs/**/*.md is read. In a
`console` block the commands are the lines that start with `$ `; in the others every line is.
A `\\` at the end of a line continues the command.

- Every `modnet-batch ...` command found must name an existing (sub)command that accepts every
  option it uses: a renamed or removed flag fails here.
- A block right after a `<!-- docs-test: run -->` line runs end to end (marker `slow`), command
  by command, in a fresh folder holding `PPM-100/` (synthetic portraits in the PPM-100 layout)
  and `photos/` (the same photos alone), with a private model cache.
- `mkdocs build --strict` passes (skips without mkdocs).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer

from modnet_batch.cli import app

ROOT = Path(__file__).resolve().parent.parent
PROG = "modnet-batch"
_BLOCK = re.compile(
    r"^(?P<mark><!-- docs-test: run -->\n)?"
    r"```(?P<lang>console|bash|sh|shell)[^\n]*\n(?P<body>.*?)^```",
    re.S | re.M,
)


@dataclass(frozen=True)
class Example:
    """One documented command: where it is, its words, and whether its block runs."""

    where: str
    argv: tuple[str, ...]
    run: bool
    block: int


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _commands(lang: str, body: str) -> list[tuple[int, str]]:
    """The block's commands (line index in the block, text), continuations joined."""
    out: list[tuple[int, str]] = []
    pending = ""
    first = 0
    for i, raw in enumerate(body.splitlines()):
        line = raw.rstrip()
        if not pending:
            if lang == "console":
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            first = i
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append((first, pending + line))
        pending = ""
    return out


def _argv(command: str) -> tuple[str, ...] | None:
    """The words after `modnet-batch` (environment assignments before it allowed), else None."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        return None
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        words.pop(0)
    if not words or Path(words[0]).name != PROG:
        return None
    return tuple(words[1:])


def examples(files: list[Path] | None = None) -> list[Example]:
    found: list[Example] = []
    for path in doc_files() if files is None else files:
        text = path.read_text()
        for i, m in enumerate(_BLOCK.finditer(text)):
            line = text.count("\n", 0, m.start("body")) + 1
            name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            for offset, command in _commands(m["lang"], m["body"]):
                argv = _argv(command)
                if argv is not None:
                    found.append(Example(f"{name}:{line + offset}", argv, bool(m["mark"]), i))
    return found


def _resolve(argv: tuple[str, ...]) -> tuple[Any, list[str], list[str]]:
    """(command, its path, the words left) for `modnet-batch ARGV`."""
    cmd: Any = typer.main.get_command(app)
    path = [PROG]
    words = list(argv)
    while words and getattr(cmd, "commands", None) and not words[0].startswith("-"):
        sub = cmd.commands.get(words[0])
        if sub is None:
            known = ", ".join(sorted(cmd.commands))
            raise AssertionError(f"`{' '.join(path)}` has no command {words[0]!r} ({known})")
        cmd = sub
        path.append(words.pop(0))
    return cmd, path, words


def _accepted(cmd: Any) -> set[str]:
    names = {"--help"}
    for p in cmd.params:
        names.update(getattr(p, "opts", []))
        names.update(getattr(p, "secondary_opts", []))
    return {n for n in names if n.startswith("-")}


def check(example: Example) -> None:
    """Raise AssertionError naming the example when the CLI does not accept it."""
    cmd, path, words = _resolve(example.argv)
    accepted = _accepted(cmd)
    for word in words:
        if word == "--":
            break
        flag = word.split("=", 1)[0]
        if flag.startswith("-") and len(flag) > 1 and flag not in accepted:
            raise AssertionError(
                f"{example.where}: `{' '.join(path)}` has no option {flag} "
                f"(it takes: {', '.join(sorted(accepted))})"
            )
    if getattr(cmd, "commands", None) and "--help" not in words and "--version" not in words:
        raise AssertionError(f"{example.where}: `{' '.join(path)}` needs a command")


def test_readme_is_a_front_page() -> None:
    # what it is, install, two commands, three quick starts, links: the rest is in the guide
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150


def test_docs_have_command_examples() -> None:
    found = examples()
    assert len(found) >= 20
    assert any(e.run for e in found)
    assert {e.argv[0] for e in found} >= {"submit", "matte", "bench", "report", "ingest"}


@pytest.mark.parametrize("example", examples(), ids=lambda e: f"{e.where}:{' '.join(e.argv)[:40]}")
def test_documented_command_is_accepted_by_the_cli(example: Example) -> None:
    check(example)


def test_a_renamed_flag_fails(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```console\n$ modnet-batch matte photos out --outptu cutout\n```\n")
    (bad,) = examples([page])
    with pytest.raises(AssertionError, match="has no option --outptu"):
        check(bad)
    page.write_text("```bash\nRAY_AUTH_MODE=token modnet-batch sumbit --dataset d\n```\n")
    (bad,) = examples([page])
    with pytest.raises(AssertionError, match="has no command 'sumbit'"):
        check(bad)


# ---- the quick starts, end to end ----


def _run_blocks() -> list[list[Example]]:
    blocks: dict[tuple[str, int], list[Example]] = {}
    for e in examples():
        if e.run:
            blocks.setdefault((e.where.split(":")[0], e.block), []).append(e)
    return list(blocks.values())


@pytest.fixture(scope="module")
def doc_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PPM-100/ (4 synthetic portraits with mattes) and photos/ (the photos alone)."""
    from modnet_batch.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("docs-template")
    make_synthetic(root / "PPM-100", n=4, height=320, width=256)
    shutil.copytree(root / "PPM-100" / "image", root / "photos")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("block", _run_blocks(), ids=lambda b: b[0].where)
def test_quick_start_runs(block: list[Example], doc_workdir: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    shutil.copytree(doc_workdir, work)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["MODNET_BATCH_CACHE"] = str(tmp_path / "cache")
    env["COLUMNS"] = "200"
    env.pop("RAY_ADDRESS", None)
    for example in block:
        proc = subprocess.run(
            [sys.executable, "-m", "modnet_batch", *example.argv],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, (
            f"{example.where}: `{PROG} {' '.join(example.argv)}` exited {proc.returncode}\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )


def _hooks() -> Any:
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_page_renders_a_result_file_with_its_stamp(tmp_path: Path) -> None:
    result = {
        "date": "2026-01-02T03:04:05Z",
        "commit": "abc1234",
        "machine": {"cpu": "x", "cores": 2},
        "matte": {"steady_img_s": 2.5, "overall_img_s": 1.9, "images": 41},
    }
    path = tmp_path / "matting.json"
    path.write_text(json.dumps(result))
    page = _hooks()._result_markdown(path)
    assert "`matting.json`" in page
    assert "2026-01-02T03:04:05Z" in page and "abc1234" in page
    assert "| `matte.steady_img_s` | 2.5 |" in page
    assert "| `matte.images` | 41 |" in page
    assert "machine.cpu: `x`" in page and "machine.cores" not in page.split("| figure")[1]


def test_mkdocs_builds_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    pytest.importorskip("material", reason="mkdocs-material is not installed ('.[docs]')")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["NO_MKDOCS_2_WARNING"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reference = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    for path, cmd in _walk(typer.main.get_command(app), (PROG,)):
        assert " ".join(path) in reference
        for flag in _accepted(cmd) - {"--help"}:
            assert flag in reference, f"{' '.join(path)} {flag} missing from the CLI reference"


def _walk(cmd: Any, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any]]:
    out = [(path, cmd)]
    for name, sub in (getattr(cmd, "commands", None) or {}).items():
        if not getattr(sub, "hidden", False):
            out += _walk(sub, (*path, name))
    return out
