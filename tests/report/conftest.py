"""Tiny finished runs (VSE++, FNE, BCLS on the built-in dataset), trained once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from vsekit.cli import main

TINY = ["data.n_train=24", "data.n_dev=8", "data.n_test=8", "train.epochs=4",
        "train.batch_size=12", "train.log_every=1", "train.lr=3e-3", "train.warmup_steps=0",
        "model.embed_dim=32", "model.image.width=8", "model.text.word_dim=16",
        "train.progress=false"]
RECIPES = {
    "vsepp": ("demo", []),
    "fne": ("fne_demo", ["loss.queue_size=24", "loss.min_count=1"]),
    "bcls": ("bcls_demo", ["loss.label_cache_dir=CACHE"]),
}


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run directories of three tiny finished runs (a few seconds each), keyed by loss."""
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for name, (recipe, extra) in RECIPES.items():
        overrides = [o.replace("CACHE", str(root / "labels")) for o in [*TINY, *extra]]
        args = ["train", recipe, "--run-dir", str(root / name), "--no-progress"]
        for override in overrides:
            args += ["--set", override]
        assert main(args) == 0
        runs[name] = root / name
    return runs
