"""Run-directory helpers: the saved config finds its data from any working folder."""

from __future__ import annotations

from vsekit.config import config_from_dict
from vsekit.train.run_dir import load_run_config, prepare_run_dir, with_absolute_data_paths


def test_relative_data_paths_become_absolute_against_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = {"data": {"format": "karpathy", "root": "json", "image_root": "~/images",
                    "file": "dataset_coco.json"}, "seed": 3}
    out = with_absolute_data_paths(raw)
    assert out["data"]["root"] == str(tmp_path.resolve() / "json")
    assert out["data"]["image_root"] == "~/images"  # already absolute once expanded
    assert out["data"]["file"] == "dataset_coco.json"  # relative to root by design
    assert out["seed"] == 3 and raw["data"]["root"] == "json"  # the input is not changed


def test_absolute_and_missing_paths_are_kept():
    raw = {"data": {"format": "synthetic", "root": "/data/x"}}
    assert with_absolute_data_paths(raw) == raw
    assert with_absolute_data_paths({"data": {"format": "synthetic"}}) == {
        "data": {"format": "synthetic"}}


def test_prepared_run_dir_config_loads_from_another_folder(tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    monkeypatch.chdir(work)
    config = config_from_dict({"data": {"format": "precomp", "root": "data"}})
    prepare_run_dir(config, work / "run")
    monkeypatch.chdir(tmp_path)
    assert load_run_config(work / "run").data["root"] == str((work / "data").resolve())
