"""Run directories for the search tests: a tiny trained synthetic run, and untrained runs
(random weights, enough to check that indexes and queries embed like the model does)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vsekit.cli import main
from vsekit.config import config_from_dict
from vsekit.data import load_splits
from vsekit.models.vse import build_model, context_from_split
from vsekit.train import checkpoint as ckpt
from vsekit.train.run_dir import BEST, CHECKPOINTS, prepare_run_dir

TINY_DATA = {"format": "synthetic", "n_train": 48, "n_dev": 12, "n_test": 12}
TINY_TRAIN = ["data.n_train=48", "data.n_dev=12", "data.n_test=12", "train.epochs=1",
              "train.batch_size=16", "model.embed_dim=16", "model.image.width=4",
              "model.image.image_size=32", "model.text.word_dim=8", "train.progress=false"]


def make_untrained_run(run_dir: Path, raw: dict) -> Path:
    """A run directory whose best checkpoint holds a freshly built model of ``raw``."""
    config = config_from_dict(raw)
    split = next(iter(load_splits(config.data).values()))
    model = build_model(config.model, context_from_split(config.model, split))
    prepare_run_dir(config, run_dir)
    ckpt.save_checkpoint({"model": model.state_dict()}, run_dir / CHECKPOINTS / BEST)
    return run_dir


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic run (CNN + BiGRU, 16-d) trained for one epoch by `vsekit train`."""
    run_dir = tmp_path_factory.mktemp("search") / "tiny-run"
    args = ["train", "demo", "--run-dir", str(run_dir), "--no-progress"]
    assert main(args + sum((["--set", s] for s in TINY_TRAIN), [])) == 0
    return run_dir
