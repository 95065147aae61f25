"""Helpers shared by the sub-commands."""

from __future__ import annotations

from pathlib import Path

from vsekit.errors import VsekitError

RECIPES = Path(__file__).resolve().parent.parent / "configs"


def recipe_path(name_or_path: str) -> Path:
    """A YAML path as given, or the name of a built-in recipe (``demo``, ``flickr8k_vsepp``)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return path
    builtin = RECIPES / f"{name_or_path}.yaml"
    if builtin.is_file():
        return builtin
    known = ", ".join(sorted(p.stem for p in RECIPES.glob("*.yaml")))
    raise VsekitError(f"no config file or built-in recipe named {name_or_path!r} "
                      f"(built-in recipes: {known})")
