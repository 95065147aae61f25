"""Every built-in recipe parses and validates, and `vsekit recipes` lists it."""

from __future__ import annotations

import pytest

from vsekit.cli import RECIPES, main, recipe_path
from vsekit.config import load_config

NAMES = sorted(p.stem for p in RECIPES.glob("*.yaml"))


def test_recipes_exist() -> None:
    assert {"demo", "flickr8k_vsepp", "flickr8k_minilm_finetune", "fne_demo", "bcls_demo"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_recipe_validates(name: str, capsys) -> None:
    path = recipe_path(name)
    config = load_config(path)
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# ") and len(first) > 20  # a one-line description for `recipes`
    assert config.run_dir.endswith(name) or name == "demo"
    main(["recipes"])
    assert name in capsys.readouterr().out
