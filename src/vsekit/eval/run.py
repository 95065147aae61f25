"""Evaluate a finished (or interrupted) run directory on one of its dataset's splits."""

from __future__ import annotations

from pathlib import Path

from vsekit.config import Config
from vsekit.data import RetrievalSplit, load_splits
from vsekit.errors import VsekitError
from vsekit.eval.encode import evaluate
from vsekit.models.vse import VSEModel, build_model, context_from_split
from vsekit.train import checkpoint as ckpt
from vsekit.train.run_dir import BEST, CHECKPOINTS, load_run_config
from vsekit.train.trainer import resolve_device


def load_run_model(run_dir: Path, config: Config, split: RetrievalSplit,
                   checkpoint: str = "best") -> VSEModel:
    """Rebuild a run's model (input sizes from ``split``) and load its best or last weights."""
    folder = run_dir / CHECKPOINTS
    if checkpoint == "best":
        if not (folder / BEST).is_file():
            raise VsekitError(f"{str(run_dir)!r} has no best checkpoint yet (it is written after "
                              "the first dev evaluation); use --checkpoint last")
        state = ckpt.load_checkpoint(folder / BEST)
    elif checkpoint == "last":
        _, state = ckpt.latest_good_checkpoint(folder)
    else:
        raise VsekitError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    model = build_model(config.model, context_from_split(config.model, split, with_captions=False))
    ckpt.load_weights(model, state["model"], run_dir / CHECKPOINTS)
    return model.to(resolve_device(config.train.device))


def evaluate_run(run_dir: Path, *, split: str = "test", checkpoint: str = "best",
                 progress: bool = True) -> dict[str, float]:
    """Metrics of a run's checkpoint on ``split`` of the dataset in its config."""
    config = load_run_config(run_dir)
    splits = load_splits(config.data)
    if split not in splits:
        raise VsekitError(f"the run's dataset has no split {split!r} (found: {', '.join(splits)})")
    model = load_run_model(run_dir, config, splits[split], checkpoint)
    device = next(model.parameters()).device
    return evaluate(model, splits[split], batch_size=config.eval.batch_size,
                    chunk_size=config.eval.chunk_size, device=device, progress=progress)
