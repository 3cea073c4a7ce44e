"""MkDocs hook: pages written from the code at every build, so that they cannot drift.

- `reference/cli.md`: every command, argument and option of the installed typer app
  (`from modnet_batch.cli import app`), walked through its click command tree.
- `benchmarks.md`: the committed benchmark result files (`benchmarks/results/*.json`), each with
  the date, commit and machine it records.

A page asks for generated text with a marker line: `<!-- generated: cli -->` or
`<!-- generated: benchmarks -->`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PROG = "modnet-batch"


def _md(text: str) -> str:
    """Help text as literal Markdown: no HTML, no emphasis, no table breaks."""
    for a, b in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("*", "\\*"), ("|", "\\|")):
        text = text.replace(a, b)
    return text


def _paragraphs(text: str) -> str:
    """A docstring's paragraphs joined back into lines (typer keeps the source's wrapping)."""
    blocks = [" ".join(line.strip() for line in b.splitlines()) for b in text.split("\n\n")]
    return "\n\n".join(_md(b) for b in blocks if b.strip())


def _subcommands(cmd: Any) -> list[tuple[str, Any]]:
    commands = getattr(cmd, "commands", None) or {}
    return [(n, c) for n, c in commands.items() if not getattr(c, "hidden", False)]


def walk(cmd: Any, path: tuple[str, ...] = (PROG,)) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, command) for the app and every command below it, depth first, in help order."""
    yield path, cmd
    for name, sub in _subcommands(cmd):
        yield from walk(sub, (*path, name))


def _metavar(param: Any, ctx: Any) -> str:
    if getattr(param, "is_flag", False):
        return ""
    if param.metavar:
        return str(param.metavar)
    shown = str(param.display_type(ctx)).strip("<>")
    return {"int range": "INTEGER", "bool": "", "list[str]": "..."}.get(shown, shown.upper())


def _arg_name(param: Any) -> str:
    return str(param.metavar or param.name.upper())


def _names(param: Any) -> str:
    names = [*param.opts, *getattr(param, "secondary_opts", [])]
    return " / ".join(f"`{n}`" for n in names)


def _default(param: Any) -> str:
    """The default where the help text does not already state it."""
    help_text = param.help or ""
    if "default" in help_text or param.default is None or param.required:
        return ""
    if getattr(param, "is_flag", False) and param.secondary_opts:
        return f" (default: `{param.secondary_opts[0] if not param.default else param.opts[0]}`)"
    if getattr(param, "is_flag", False) or param.default == ():
        return ""
    return f" (default: `{param.default}`)"


def _option_row(param: Any, ctx: Any) -> str:
    help_text = _md(" ".join((param.help or "").split())) + _default(param)
    if param.envvar:
        help_text += f" (environment: `{param.envvar}`)"
    metavar = _metavar(param, ctx)
    return f"| {_names(param)} | {f'`{metavar}`' if metavar else ''} | {help_text} |"


def command_markdown(path: tuple[str, ...], cmd: Any, ctx: Any) -> str:
    """One command's section: heading, usage, help, arguments, options grouped by help panel."""
    params = [p for p in cmd.params if not getattr(p, "hidden", False)]
    args = [p for p in params if p.param_type_name == "argument"]
    opts = [p for p in params if p.param_type_name == "option"]
    usage = " ".join(path)
    if opts:
        usage += " [OPTIONS]"
    for p in args:
        usage += f" {_arg_name(p)}" if p.required else f" [{_arg_name(p)}]"
    if _subcommands(cmd):
        usage += " COMMAND [ARGS]..."
    out = [f"## `{' '.join(path)}`", "", f"```text\n{usage}\n```", ""]
    if cmd.help:
        out += [_paragraphs(cmd.help), ""]
    if args:
        out += ["**Arguments**", ""]
        out += [f"- `{_arg_name(p)}`: {_md(' '.join((p.help or '').split()))}" for p in args]
        out.append("")
    panels: dict[str, list[str]] = {}
    for p in opts:
        panels.setdefault(getattr(p, "rich_help_panel", None) or "Options", []).append(
            _option_row(p, ctx)
        )
    for panel, rows in panels.items():
        out += [f"**{_md(panel)}**", "", "| option | value | meaning |", "| --- | --- | --- |"]
        out += [*rows, ""]
    subs = _subcommands(cmd)
    if subs:
        out += ["**Commands**", ""]
        for name, sub in subs:
            line = (sub.help or "").strip().split("\n\n")[0]
            out.append(f"- `{name}`: {_md(' '.join(line.split()))}")
        out.append("")
    return "\n".join(out)


def cli_reference() -> str:
    """The whole CLI reference as Markdown, from the app the package installs."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import typer

    from modnet_batch.cli import app

    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name=PROG)
    return "\n".join(command_markdown(path, cmd, ctx) for path, cmd in walk(root))


_STAMP = ("date", "created", "started", "commit", "machine", "host", "device")


def _leaves(data: Any, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, Any]]:
    if isinstance(data, dict) and depth < 4:
        for k, v in data.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k), depth + 1)
    elif isinstance(data, (int, float, str, bool)) or data is None:
        yield prefix, data


def _result_markdown(path: Path) -> str:
    data = json.loads(path.read_text())
    rows = list(_leaves(data))
    stamp = {k: v for k, v in rows if set(k.split(".")) & set(_STAMP)}
    figures = [(k, v) for k, v in rows if k not in stamp and isinstance(v, (int, float))]
    out = [f"### `{path.name}`", ""]
    out += [f"- {_md(k)}: `{v}`" for k, v in stamp.items()]
    out += ["", "| figure | value |", "| --- | --- |"]
    out += [
        f"| `{_md(k)}` | {v:.4g} |" if isinstance(v, float) else f"| `{_md(k)}` | {v} |"
        for k, v in figures[:80]
    ]
    if len(figures) > 80:
        out.append(f"| ... | {len(figures) - 80} more in the file |")
    return "\n".join([*out, ""])


def benchmark_results() -> str:
    """Every committed result file, newest name last; a note on how to make them when none."""
    files = sorted(RESULTS.glob("*.json")) if RESULTS.is_dir() else []
    if not files:
        return (
            '!!! note "No result files are committed yet"\n'
            "    Run a benchmark (for example `make bench` or `make bench-device`) and commit\n"
            "    its JSON under `benchmarks/results/`: this page renders every file there,\n"
            "    with the date, commit and machine it records.\n"
        )
    return "\n".join(_result_markdown(f) for f in files)


GENERATORS = {"cli": cli_reference, "benchmarks": benchmark_results}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs hook: replace each `<!-- generated: NAME -->` line with its generated text."""
    for name, generate in GENERATORS.items():
        marker = f"<!-- generated: {name} -->"
        if marker in markdown:
            markdown = markdown.replace(marker, generate())
    return markdown
