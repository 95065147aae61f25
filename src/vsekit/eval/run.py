"""Evaluate a finished (or interrupted) run directory on one of its dataset's splits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vsekit.config import Config
from vsekit.data import RetrievalSplit, load_splits
from vsekit.errors import VsekitError
from vsekit.eval.cache import EMBEDDINGS, cached_embeddings, file_digest, split_digest
from vsekit.eval.encode import ProtocolResult, encode_split, evaluate_protocol, protocol_request
from vsekit.models.vse import VSEModel, build_model, context_from_split
from vsekit.train import checkpoint as ckpt
from vsekit.train.run_dir import BEST, CHECKPOINTS, load_run_config, write_json
from vsekit.train.trainer import resolve_device


def load_run_checkpoint(run_dir: Path, checkpoint: str = "best") -> tuple[Path, dict[str, Any]]:
    """(path, state) of a run's best or last (newest readable) checkpoint."""
    folder = run_dir / CHECKPOINTS
    if checkpoint == "best":
        if not (folder / BEST).is_file():
            raise VsekitError(f"{str(run_dir)!r} has no best checkpoint yet (it is written after "
                              "the first dev evaluation); use --checkpoint last")
        return folder / BEST, ckpt.load_checkpoint(folder / BEST)
    if checkpoint == "last":
        return ckpt.latest_good_checkpoint(folder)
    raise VsekitError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")


def model_from_state(run_dir: Path, config: Config, split: RetrievalSplit,
                     state: dict[str, Any]) -> VSEModel:
    """Rebuild a run's model (input sizes from ``split``) with a checkpoint's weights."""
    model = build_model(config.model, context_from_split(config.model, split, with_captions=False))
    ckpt.load_weights(model, state["model"], run_dir / CHECKPOINTS)
    return model.to(resolve_device(config.train.device))


def load_run_model(run_dir: Path, config: Config, split: RetrievalSplit,
                   checkpoint: str = "best") -> VSEModel:
    """Rebuild a run's model (input sizes from ``split``) and load its best or last weights."""
    return model_from_state(run_dir, config, split, load_run_checkpoint(run_dir, checkpoint)[1])


def evaluate_run(run_dir: Path, *, split: str = "test", checkpoint: str = "best",
                 protocol: str = "any", eccv: bool = False, half: bool = False,
                 stream: bool | None = None, cache: bool = True, progress: bool = True,
                 pseudo_labels: str | None = None, label_cache_dir: str | None = None
                 ) -> ProtocolResult:
    """Metrics of a run's checkpoint on ``split`` of the dataset in its config, by protocol.

    The split is encoded once in batches; with ``cache`` the embeddings are kept in
    ``RUN_DIR/embeddings/<split>-<checkpoint>.npz`` and reused while the checkpoint and the
    split are unchanged (:mod:`vsekit.eval.cache`). ``protocol``, ``eccv``, ``half`` and
    ``stream`` are those of :func:`vsekit.eval.encode.evaluate_protocol`. ``pseudo_labels``
    ("minilm" or "split_features") adds nDCG / Kendall τ against pseudo-label relevance from
    that sentence encoder's caption embeddings (a proxy for semantic relevance; the MiniLM
    embeddings are cached like the BCLS labels).
    """
    config = load_run_config(run_dir)
    splits = load_splits(config.data)
    if split not in splits:
        raise VsekitError(f"the run's dataset has no split {split!r} (found: {', '.join(splits)})")
    data = splits[split]
    protocol_request(data, protocol, eccv)  # a wrong size or ECCV request fails before encoding
    path, state = load_run_checkpoint(run_dir, checkpoint)

    def encode() -> tuple:
        model = model_from_state(run_dir, config, data, state)
        return encode_split(model, data, batch_size=config.eval.batch_size,
                            device=next(model.parameters()).device, progress=progress)

    if cache:
        key = f"{file_digest(path)}:{split_digest(data)}"
        image_emb, text_emb, _ = cached_embeddings(run_dir / EMBEDDINGS, f"{split}-{checkpoint}",
                                                   key, encode)
    else:
        image_emb, text_emb = encode()
    pseudo = None
    if pseudo_labels is not None:
        from vsekit.labels import load_or_build_cache

        pseudo = load_or_build_cache(data, label_cache_dir, pseudo_labels, progress=progress)
    return evaluate_protocol(image_emb, text_emb, data, protocol, stream=stream, half=half,
                             eccv=eccv, chunk_size=config.eval.chunk_size,
                             pseudo_caption_emb=pseudo,
                             device=resolve_device(config.train.device), progress=progress)


def eval_document(result: ProtocolResult, *, split: str, checkpoint: str, half: bool
                  ) -> dict[str, Any]:
    """The JSON document of an evaluation: every metric at the top level, then ``protocol``,
    ``split``, ``checkpoint``, ``half``, ``streamed`` and, for several folds, ``folds`` (the
    per-fold metrics)."""
    document = {**result.metrics, "protocol": result.protocol, "split": split,
                "checkpoint": checkpoint, "half": half, "streamed": result.streamed}
    if len(result.folds) > 1:
        document["folds"] = result.folds
    return document


def write_eval_json(run_dir: Path, document: dict[str, Any]) -> Path:
    """Write ``document`` to ``RUN_DIR/eval_<split>_<protocol>.json`` (atomically)."""
    path = run_dir / f"eval_{document['split']}_{document['protocol']}.json"
    write_json(path, document)
    return path
