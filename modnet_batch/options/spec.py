"""Options declared once: a dataclass field carries its name, type, default, help and checks;
YAML loading, validation, the resolved dump and (in cli_options) the CLI's flags derive from it.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from modnet_batch.errors import ModnetBatchError

T = TypeVar("T")
_KEY = "modnet_batch.option"

# The groups of a long option list in --help, in this order.
INPUT = "Input"
MODEL = "Model and engine"
DEVICES = "Devices"
OUTPUTS = "Outputs"
MEASURE = "Measurement"  # bench: what, how long, how often
ADVANCED = "Advanced"
PANELS = (INPUT, MODEL, DEVICES, MEASURE, OUTPUTS, ADVANCED)


@dataclass(frozen=True)
class OptionSpec:
    help: str
    min: float | None = None  # inclusive lower bound of a number
    choices: Callable[[], Iterable[str]] | None = None  # called late: registries fill up
    parse: Callable[[Any], Any] | None = None  # turns a YAML/CLI value into the field's type
    flag: str | None = None  # the CLI flag, default --<name-with-dashes>
    envvar: str | None = None  # the CLI reads this variable when the flag is absent
    cli: bool = True  # offered on the command line (False: YAML only)
    metavar: str | None = None  # the CLI's placeholder; default from the choices or the type
    panel: str | None = None  # the group it is listed under in --help (PANELS)
    # the commands that offer it (empty: every command taking these options), and those that
    # accept it without listing it in their --help
    commands: tuple[str, ...] = ()
    unlisted: tuple[str, ...] = ()
    # (command, default) pairs: a command whose default differs (`matte` runs the paper protocol)
    default_in: tuple[tuple[str, Any], ...] = ()

    def offered_by(self, command: str) -> bool:
        return self.cli and (not self.commands or command in self.commands)


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field declaring one option (see OptionSpec for the keywords)."""
    meta = {_KEY: OptionSpec(help=help, **kwargs)}
    if isinstance(default, dict | list):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class Declared:
    name: str
    type: Any
    default: Any
    spec: OptionSpec

    @property
    def flag(self) -> str:
        return self.spec.flag or "--" + self.name.replace("_", "-")

    def default_for(self, command: str) -> Any:
        """The default that `command` applies when the option is not given."""
        return dict(self.spec.default_in).get(command, self.default)


def command_defaults(cls: type, command: str) -> dict[str, Any]:
    """The options of `cls` whose default in `command` differs from the declared one."""
    return {d.name: d.default_for(command) for d in declared(cls) if d.spec.default_in}


def declared(cls: type) -> list[Declared]:
    """Every option of the dataclass `cls`, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_KEY)
        if spec is None:
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with option()")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out.append(Declared(f.name, hints[f.name], default, spec))
    return out


# --- checking values ---------------------------------------------------------------------------
def split_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _expected(tp: Any, spec: OptionSpec) -> str:
    base, optional = split_optional(tp)
    origin = typing.get_origin(base)
    if spec.choices is not None:
        text = "one of " + ", ".join(spec.choices())
    elif base is bool:
        text = "true or false"
    elif base is int:
        text = "an integer" + (f" >= {spec.min:g}" if spec.min is not None else "")
    elif base is float:
        text = "a number" + (f" >= {spec.min:g}" if spec.min is not None else "")
    elif origin is tuple and _item(base) is str:
        text = "a list of strings"
    elif origin is tuple:
        text = "a list of integers" + (f" >= {spec.min:g}" if spec.min is not None else "")
    elif origin is dict or base is dict:
        text = "a mapping"
    elif isinstance(base, type) and issubclass(base, enum.Enum):
        text = "one of " + ", ".join(str(m.value) for m in base)
    else:
        text = "a string"
    return text + (" (or null)" if optional else "")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _conforms(value: Any, tp: Any, spec: OptionSpec) -> bool:
    base, optional = split_optional(tp)
    if value is None:
        return optional
    origin = typing.get_origin(base)
    low = spec.min
    if base is bool:
        return isinstance(value, bool)
    if base is int:
        return _is_int(value) and (low is None or value >= low)
    if base is float:
        ok = _is_int(value) or isinstance(value, float)
        return ok and (low is None or value >= low)
    if origin is tuple and _item(base) is str:
        return isinstance(value, tuple) and all(isinstance(v, str) for v in value)
    if origin is tuple:
        return isinstance(value, tuple) and all(
            _is_int(v) and (low is None or v >= low) for v in value
        )
    if origin is dict or base is dict:
        return isinstance(value, dict)
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return isinstance(value, base)
    if not isinstance(value, str):
        return False
    return spec.choices is None or value in set(spec.choices())


def _item(tp: Any) -> Any:
    """The item type of `tuple[X, ...]`."""
    return typing.get_args(tp)[0]


def _as_list(value: Any, item: Any) -> Any:
    """A YAML list or repeated flags -> a tuple; for integers also `1,2,4` (one flag's text).
    Anything else is left for the check."""
    if isinstance(value, str) and item is str:
        return (value,)
    if isinstance(value, str):
        try:
            return tuple(int(v) for v in value.split(",") if v.strip())
        except ValueError:
            return value
    return tuple(value) if isinstance(value, list | tuple) else value


def check(item: Declared, value: Any, origin: str, *, text: bool = False) -> Any:
    """`value` converted to the option's type, or a one-line error naming origin, key and value.

    `text`: the value is command-line text (numbers arrive as strings; the flag is named)."""
    converted = value
    base = split_optional(item.type)[0]
    name = item.flag if text else item.name
    try:
        if item.spec.parse is not None and value is not None:
            try:
                converted = item.spec.parse(value)
            except ModnetBatchError as exc:
                if isinstance(base, type) and issubclass(base, enum.Enum):
                    raise ValueError(str(exc)) from None  # the check below lists the choices
                # otherwise the parser alone knows what was wrong (any text is a str)
                raise ModnetBatchError(
                    f"{origin}: {name} = {value!r} is not valid: {exc}"
                ) from None
        elif text and isinstance(value, str) and base in (int, float):
            converted = base(value)
        elif typing.get_origin(base) is tuple:
            converted = _as_list(value, _item(base))
        elif base is float and _is_int(value):
            converted = float(value)
    except (ValueError, TypeError):
        converted = value
    if not _conforms(converted, item.type, item.spec):
        expected = _expected(item.type, item.spec)
        raise ModnetBatchError(f"{origin}: {name} = {value!r} is not valid; expected {expected}")
    return converted


@dataclass(frozen=True)
class Source:
    """Option values from one place: a YAML file, overrides given in code (`unset_none`: None
    means "not given"), or the command line (`text` too: values are flag text)."""

    origin: str
    values: dict[str, Any]
    unset_none: bool = False
    text: bool = False


def build(cls: type[T], sources: list[Source]) -> T:
    """An instance of the options dataclass `cls`, later sources winning (defaults < YAML < CLI)."""
    items = {d.name: d for d in declared(cls)}
    values: dict[str, Any] = {}
    for source in sources:
        unknown = sorted(set(source.values) - set(items))
        if unknown:
            raise ModnetBatchError(
                f"{source.origin} has unknown keys {unknown}; known keys: {sorted(items)}"
            )
        for key, value in source.values.items():
            if value is None and (source.unset_none or source.text):
                continue
            values[key] = check(items[key], value, source.origin, text=source.text)
    return cls(**values)


def check_all(obj: Any, origin: str) -> None:
    """Check every option of an options instance made in code (not through `build`)."""
    for item in declared(type(obj)):
        value = getattr(obj, item.name)
        if check(item, value, origin) != value:
            raise ModnetBatchError(
                f"{origin}: {item.name} = {value!r} is not valid; "
                f"expected {_expected(item.type, item.spec)}"
            )


def load_yaml(path: Path, what: str) -> dict[str, Any]:
    """A YAML file holding a mapping, or a one-line error."""
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ModnetBatchError(f"{what} {path} does not exist") from None
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModnetBatchError(f"{what} {path} is not valid YAML: {first}") from None
    if not isinstance(loaded, dict):
        raise ModnetBatchError(f"{what} {path} must be a mapping of keys to values")
    return loaded


def plain(obj: Any) -> dict[str, Any]:
    """The options as YAML/JSON-safe values (enums as their value, tuples as lists)."""

    def conv(v: Any) -> Any:
        if isinstance(v, enum.Enum):
            return v.value
        if isinstance(v, tuple):
            return list(v)
        return v

    return {f.name: conv(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
