"""The command line's flags, derived from the options' declarations (options.spec)."""

from __future__ import annotations

import enum
import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from modnet_batch.options.spec import declared, split_optional

F = TypeVar("F", bound=Callable[..., Any])


def _cli_type(tp: Any) -> Any:
    base, _ = split_optional(tp)
    # flags stay flags; every other value arrives as text and is checked by options.spec, so a
    # bad one gets the same one-line error as in YAML
    return bool if base is bool else str


def _default_text(default: Any) -> str:
    if isinstance(default, enum.Enum):
        return str(default.value)
    if isinstance(default, tuple):
        return ",".join(str(v) for v in default) or "none"
    return "none" if default in (None, "") else str(default)


def _metavar(item: Any) -> str:
    """The flag's placeholder: declared, else its choices (a few), else its type."""
    if item.spec.metavar:
        return str(item.spec.metavar)
    if item.spec.choices is not None:
        choices = sorted(item.spec.choices())
        if 0 < len(choices) <= 4:
            return "|".join(choices)
    base, _ = split_optional(item.type)
    return {int: "N", float: "X"}.get(base, "TEXT")


def cli_parameters(cls: type) -> list[inspect.Parameter]:
    """typer parameters for the options of `cls`: every one defaults to None ("not given")."""
    params = []
    for item in declared(cls):
        if not item.spec.cli:
            continue
        help_text = f"{item.spec.help} (default: {_default_text(item.default)})"
        metavar = None if split_optional(item.type)[0] is bool else _metavar(item)
        info = typer.Option(
            item.flag,
            help=help_text,
            envvar=item.spec.envvar,
            show_default=False,
            metavar=metavar,
        )
        annotation = Annotated[_cli_type(item.type) | None, info]  # type: ignore[valid-type]
        params.append(
            inspect.Parameter(
                item.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
            )
        )
    return params


def with_options(cls: type) -> Callable[[F], F]:
    """Give a typer command the options of `cls` as flags; the command receives them as
    `options`, a dict of the values given on the command line (None = not given)."""

    def decorate(fn: F) -> F:
        params = cli_parameters(cls)
        names = [p.name for p in params]
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values()]
        own = [p for p in own if p.name != "options"]
        clash = sorted({p.name for p in own} & set(names))
        if clash:
            raise TypeError(f"{fn.__name__} declares {clash}, which are options of {cls.__name__}")

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            options = {n: kwargs.pop(n) for n in names}
            return fn(*args, options=options, **kwargs)

        command.__signature__ = inspect.Signature([*own, *params])  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in [*own, *params]}
        return command  # type: ignore[return-value]

    return decorate
