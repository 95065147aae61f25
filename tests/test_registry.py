"""Typed config parsing: unknown keys, wrong types, literals, nested dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from vsekit.errors import VsekitError
from vsekit.registry import Registry, parse_dataclass


@dataclass
class Inner:
    size: int = 3


@dataclass
class Params:
    margin: float = 0.2
    count: int = 1
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    maybe: int | None = None
    items: list[int] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)


def test_defaults_and_coercion() -> None:
    p = parse_dataclass(Params, {"margin": 1, "count": "4", "flag": "true", "items": [1, 2],
                                 "inner": {"size": 5}, "maybe": None}, "x")
    assert p == Params(margin=1.0, count=4, flag=True, items=[1, 2], inner=Inner(5))
    assert isinstance(p.margin, float)


@pytest.mark.parametrize(("raw", "message"), [
    ({"margn": 0.1}, r"unknown key 'margn' \(did you mean 'margin'\?\)"),
    ({"count": 1.5}, "expected an integer"),
    ({"count": True}, "expected an integer"),
    ({"margin": "abc"}, "expected a number"),
    ({"margin": float("nan")}, "finite"),
    ({"flag": 3}, "true or false"),
    ({"mode": "c"}, "not one of"),
    ({"items": 3}, "expected a list"),
    ({"inner": {"size": "x"}}, r"x\.inner\.size"),
    ([1, 2], "expected a mapping"),
])
def test_errors_name_the_problem(raw, message) -> None:
    with pytest.raises(VsekitError, match=message):
        parse_dataclass(Params, raw, "x")


def test_registry_parse_and_build() -> None:
    reg = Registry("widget", key="type")

    @reg.register("square", Params)
    def make(params, **context):
        """A square widget."""
        return ("square", params.count, context)

    name, params = reg.parse({"type": "square", "count": 2}, "w")
    assert reg.build(name, params, k=1) == ("square", 2, {"k": 1})
    assert reg.entry("square").help == "A square widget."
    with pytest.raises(VsekitError, match="unknown widget 'squar'.*did you mean 'square'"):
        reg.parse({"type": "squar"}, "w")
    with pytest.raises(VsekitError, match="needs a 'type' key"):
        reg.parse({"count": 2}, "w")
