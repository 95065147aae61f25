"""Name → component registries (data formats, encoders, losses) with typed, validated params.

Each registered component declares a parameter dataclass; a config section such as
``loss: {name: vsepp, margin: 0.2}`` is validated against it, so unknown keys and wrong
types fail with one clear line before anything runs.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar, get_args, get_origin

from vsekit.errors import VsekitError

T = TypeVar("T")


def _suggest(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(options))})"


def _number(value: Any, message: str) -> float:
    """``value`` (a YAML number or numeric string, not a bool) as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise VsekitError(message)
    try:
        return float(value)
    except ValueError:
        raise VsekitError(message) from None


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a type annotation, converting YAML-ish values where safe."""
    origin = get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except VsekitError as exc:
                errors.append(str(exc))
        raise VsekitError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        choices = get_args(annotation)
        if value not in choices:
            raise VsekitError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise VsekitError(f"{where}: expected a list, got {value!r}")
        (item_type, *_) = get_args(annotation) or (Any,)
        items = [coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict or annotation is dict:
        if not isinstance(value, Mapping):
            raise VsekitError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(annotation):
        return parse_dataclass(annotation, value, where)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise VsekitError(f"{where}: expected true or false, got {value!r}")
    if annotation in (int, float):
        what = "an integer" if annotation is int else "a number"
        number = _number(value, f"{where}: expected {what}, got {value!r}")
        if number != number or number in (float("inf"), float("-inf")):
            raise VsekitError(f"{where}: expected a finite number, got {value!r}")
        if annotation is int:
            if not number.is_integer():
                raise VsekitError(f"{where}: expected an integer, got {value!r}")
            return int(number)
        return number
    if annotation is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise VsekitError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def parse_dataclass(cls: type[T], mapping: Any, where: str) -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, Mapping):
        raise VsekitError(f"{where}: expected a mapping of keys, got {mapping!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in mapping:
        if key not in fields:
            raise VsekitError(f"{where}: unknown key {key!r}{_suggest(str(key), list(fields))}")
    values = {}
    for name, f in fields.items():
        if name in mapping:
            values[name] = coerce(mapping[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise VsekitError(f"{where}: missing required key {name!r}")
    obj = cls(**values)
    check = getattr(obj, "validate", None)
    if callable(check):
        check(where)
    return obj


@dataclasses.dataclass
class Entry:
    name: str
    params: type
    factory: Callable[..., Any]
    help: str


class Registry:
    """Components of one kind (``"loss"``, ``"image encoder"``, ...) selectable by name."""

    def __init__(self, kind: str, key: str = "name") -> None:
        self.kind = kind
        self.key = key
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, params: type) -> Callable[[T], T]:
        """Decorator: register a factory (a class or function taking ``params, **context``)."""

        def wrap(factory: T) -> T:
            doc = (getattr(factory, "__doc__", None) or "").strip().splitlines()
            self._entries[name] = Entry(name, params, factory, doc[0] if doc else "")
            return factory

        return wrap

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entry(self, name: str) -> Entry:
        if name not in self._entries:
            raise VsekitError(f"unknown {self.kind} {name!r}{_suggest(name, self.names())}")
        return self._entries[name]

    def parse(self, section: Any, where: str) -> tuple[str, Any]:
        """Split ``{key: NAME, **params}`` into (NAME, validated params dataclass)."""
        if not isinstance(section, Mapping) or self.key not in section:
            raise VsekitError(f"{where}: needs a {self.key!r} key naming the {self.kind} "
                              f"(one of {', '.join(self.names())})")
        name = str(section[self.key])
        entry = self.entry(name)
        params = {k: v for k, v in section.items() if k != self.key}
        return name, parse_dataclass(entry.params, params, where)

    def build(self, name: str, params: Any, **context: Any) -> Any:
        return self.entry(name).factory(params, **context)
