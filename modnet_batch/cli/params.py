"""The command line's flags, derived from the options' declarations (options.spec)."""

from __future__ import annotations

import enum
import functools
import inspect
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from modnet_batch.options.spec import PANELS, Declared, Source, build, declared, split_optional

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


@contextmanager
def _literal(obj: Any) -> Iterator[None]:
    """`obj`'s help texts (its own, its parameters', its subcommands') escaped for rich while
    its --help renders, so that `[torch]` is shown, not read as a style tag."""
    items: list[Any] = [obj, *obj.params, *getattr(obj, "commands", {}).values()]
    saved = [(it, a, getattr(it, a, None)) for it in items for a in ("help", "short_help")]
    for it, attr, text in saved:
        if isinstance(text, str):
            setattr(it, attr, escape(text))
    try:
        yield
    finally:
        for it, attr, text in saved:
            setattr(it, attr, text)


class LiteralCommand(TyperCommand):
    """A command whose --help shows its texts as written (panels and all)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        with _literal(self):
            super().format_help(ctx, formatter)


class LiteralGroup(TyperGroup):
    """A group whose --help shows its texts and its commands' summaries as written."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        with _literal(self):
            super().format_help(ctx, formatter)


def with_default(help_text: str, default: Any) -> str:
    """Every option's help ends the same way in every command: `(default: X)`."""
    return f"{help_text} (default: {default_text(default)})"


def default_text(default: Any) -> str:
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, enum.Enum):
        return str(default.value)
    if isinstance(default, tuple):
        return ",".join(str(v) for v in default) or "none"
    return "none" if default in (None, "") else str(default)


def _cli_type(tp: Any) -> Any:
    base, _ = split_optional(tp)
    # flags stay flags, a list of strings is a repeated flag; every other value arrives as text
    # and is checked by options.spec, so a bad one gets the same one-line error as in YAML
    if base is bool:
        return bool
    if typing.get_origin(base) is tuple and typing.get_args(base)[0] is str:
        return list[str]
    return str


def _metavar(item: Declared) -> str:
    """The flag's placeholder: declared, else its choices (a few), else its type."""
    if item.spec.metavar:
        return str(item.spec.metavar)
    if item.spec.choices is not None:
        choices = sorted(item.spec.choices())
        if 0 < len(choices) <= 4:
            return "|".join(choices)
    base, _ = split_optional(item.type)
    return {int: "N", float: "X"}.get(base, "TEXT")


def _panel_order(item: Declared) -> int:
    panel = item.spec.panel
    return PANELS.index(panel) if panel in PANELS else len(PANELS)


def offered(cls: type, command: str) -> list[Declared]:
    """The options of `cls` that `command` takes on its command line."""
    return [item for item in declared(cls) if item.spec.offered_by(command)]


def cli_parameters(cls: type, command: str) -> list[inspect.Parameter]:
    """typer parameters for the options of `cls` that `command` offers: every one defaults to
    None ("not given"), grouped in its help panel, its help literal and ending in its default."""
    params = []
    for item in sorted(offered(cls, command), key=_panel_order):
        metavar = None if split_optional(item.type)[0] is bool else _metavar(item)
        info = typer.Option(
            item.flag,
            help=with_default(item.spec.help, item.default_for(command)),
            envvar=item.spec.envvar,
            show_default=False,
            metavar=metavar,
            hidden=command in item.spec.unlisted,
            rich_help_panel=item.spec.panel,
        )
        annotation = Annotated[_cli_type(item.type) | None, info]  # type: ignore[valid-type]
        params.append(
            inspect.Parameter(
                item.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
            )
        )
    return params


def with_options(*classes: type, command: str) -> Callable[[F], F]:
    """Give the typer command `command` the options of `classes` that it offers, as flags; the
    command receives them as `options`, a dict of the values given on its command line (None =
    not given); `parse` turns it into one options class."""

    def decorate(fn: F) -> F:
        params = [p for cls in classes for p in cli_parameters(cls, command)]
        names = [p.name for p in params]
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values()]
        own = [p for p in own if p.name != "options"]
        clash = sorted({p.name for p in own} & set(names)) or sorted(
            {n for n in names if names.count(n) > 1}
        )
        if clash:
            raise TypeError(f"{fn.__name__} declares {clash} twice")

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            options = {n: kwargs.pop(n) for n in names}
            return fn(*args, options=options, **kwargs)

        run.__signature__ = inspect.Signature([*own, *params])  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in [*own, *params]}
        return run  # type: ignore[return-value]

    return decorate


def parse(cls: type[T], options: dict[str, Any]) -> T:
    """The options of `cls` from a command's `options` (flag text, checked as YAML is)."""
    names = {item.name for item in declared(cls)}
    given = {k: v for k, v in options.items() if k in names}
    return build(cls, [Source("command line", given, text=True)])
