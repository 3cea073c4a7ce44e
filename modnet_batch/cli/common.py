"""What every command shares: the terminal, and a library error as one line with exit 1."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from modnet_batch.errors import ModnetBatchError
from modnet_batch.runner import Terminal

term = Terminal.for_commands()


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Within the block, a ModnetBatchError is printed as one line and the command exits 1."""
    try:
        yield
    except ModnetBatchError as exc:
        term.error(exc)
        raise typer.Exit(1) from None


def note_skipped(skipped: list[tuple[str, str]], ignored: list[str]) -> None:
    """The files a listing skipped, each with its reason, and those it ignored."""
    from modnet_batch.data.decode import IMAGE_EXTENSIONS

    for name, reason in skipped:
        term.note(f"skipped {name}: {reason}", "yellow")
    if ignored:
        shown = ", ".join(ignored[:5]) + (" ..." if len(ignored) > 5 else "")
        term.note(
            f"ignored {len(ignored)} file(s) without an image extension "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}): {shown}",
            "yellow",
        )


def argument_help(text: str, default: str | None = None) -> str:
    """An argument's help, with its default in the options' style."""
    return text if default is None else f"{text} (default: {default})"
