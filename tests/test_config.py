"""Config loading: YAML, overrides, validation with one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from vsekit.config import apply_overrides, load_config, load_yaml
from vsekit.errors import VsekitError


def test_overrides_parse_yaml_values() -> None:
    raw = apply_overrides({"train": {"lr": 1.0}}, ["train.lr=1e-3", "train.epochs=3",
                                                   "loss.name=vse0", "train.amp=off"])
    assert raw == {"train": {"lr": 1e-3, "epochs": 3, "amp": "off"}, "loss": {"name": "vse0"}}


@pytest.mark.parametrize("item", ["train.lr", "train..lr=1", "=3"])
def test_bad_override(item: str) -> None:
    with pytest.raises(VsekitError, match="--set"):
        apply_overrides({}, [item])


def test_override_into_scalar_is_rejected() -> None:
    with pytest.raises(VsekitError, match="not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_load_config_defaults_and_recipe(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\ntrain: {epochs: 2}\nloss: {name: vse0, margin: 0.1}\n")
    config = load_config(path, ["train.batch_size=16"])
    assert (config.seed, config.train.epochs, config.train.batch_size) == (3, 2, 16)
    assert config.loss == {"name": "vse0", "margin": 0.1}


@pytest.mark.parametrize(("text", "overrides", "message"), [
    ("trian: {epochs: 2}\n", [], "unknown key 'trian'.*did you mean 'train'"),
    ("train: {epochs: 0}\n", [], "train.epochs must be at least 1"),
    ("train: {lr: -1}\n", [], "lr must be positive"),
    ("loss: {name: nope}\n", [], "unknown loss 'nope'"),
    ("loss: {name: vsepp, margn: 1}\n", [], "unknown key 'margn'"),
    ("", ["train.batch_size=-4"], "batch_size must be at least 1"),
    ("train: [1, 2]\n", [], "expected a mapping"),
    ("a: [\n", [], "not valid YAML"),
    ("- 1\n", [], "mapping at the top level"),
])
def test_bad_configs(tmp_path: Path, text: str, overrides: list[str], message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(VsekitError, match=message):
        load_config(path, overrides)


def test_missing_and_undecodable_files(tmp_path: Path) -> None:
    with pytest.raises(VsekitError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"seed: \xff\xfe\n")
    with pytest.raises(VsekitError, match="not UTF-8 text"):
        load_yaml(bad)
