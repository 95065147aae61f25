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
                 progress: bool = True, pseudo_labels: str | None = None,
                 label_cache_dir: str | None = None) -> dict[str, float]:
    """Metrics of a run's checkpoint on ``split`` of the dataset in its config.

    ``pseudo_labels`` ("minilm" or "split_features") adds nDCG / Kendall τ against
    pseudo-label relevance from that sentence encoder's caption embeddings (a proxy for
    semantic relevance; the MiniLM embeddings are cached like the BCLS labels).
    """
    config = load_run_config(run_dir)
    splits = load_splits(config.data)
    if split not in splits:
        raise VsekitError(f"the run's dataset has no split {split!r} (found: {', '.join(splits)})")
    model = load_run_model(run_dir, config, splits[split], checkpoint)
    device = next(model.parameters()).device
    pseudo = None
    if pseudo_labels is not None:
        from vsekit.labels import load_or_build_cache

        pseudo = load_or_build_cache(splits[split], label_cache_dir, pseudo_labels,
                                     progress=progress)
    return evaluate(model, splits[split], batch_size=config.eval.batch_size,
                    chunk_size=config.eval.chunk_size, device=device, progress=progress,
                    pseudo_caption_emb=pseudo)
