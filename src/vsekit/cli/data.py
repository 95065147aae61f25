"""``vsekit features`` and ``vsekit labels build``."""

from __future__ import annotations

import argparse
from pathlib import Path

from vsekit.cli.common import recipe_path
from vsekit.errors import VsekitError


def _features(args: argparse.Namespace) -> int:
    from vsekit.models.features import extract_features, list_images

    images = list_images(Path(args.images))
    out = Path(args.out)
    array = extract_features(images, out, batch_size=args.batch_size, progress=not args.no_progress)
    print(f"wrote {out} {tuple(array.shape)} and its image list {out.with_suffix('.txt')}")
    return 0


def _labels(args: argparse.Namespace) -> int:
    from vsekit.config import load_config
    from vsekit.data import load_splits
    from vsekit.labels import cache_path, load_or_build_cache, resolve_encoder

    config = load_config(recipe_path(args.config), args.set)
    loss = config.loss
    encoder = args.encoder or loss.get("label_encoder", "minilm")
    if encoder == "graded":
        raise VsekitError("loss.label_encoder graded reads the data's own graded relevance; "
                          "there are no caption embeddings to build")
    cache_dir = args.cache_dir or loss.get("label_cache_dir")
    split = load_splits(config.data).get("train")
    if split is None:
        raise VsekitError("the config's dataset has no 'train' split to build labels for")
    emb = load_or_build_cache(split, cache_dir, encoder, progress=not args.no_progress)
    where = ("the split's own caption features" if encoder == "split_features"
             else cache_path(split.captions, cache_dir, resolve_encoder(encoder)))
    print(f"caption embeddings {tuple(emb.shape)} for {split.n_captions} training captions: "
          f"{where}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the features and labels sub-commands."""
    p = sub.add_parser("features", help="extract EfficientNet-Lite0 features of an image folder")
    p.add_argument("images", help="folder of JPEG/PNG images")
    p.add_argument("--out", required=True, help="output .npy ([N, 1280]); a .txt lists the images")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_features)

    p = sub.add_parser("labels", help="continuous pseudo labels (BCLS): caption embeddings")
    labels = p.add_subparsers(dest="labels_command", required=True, metavar="ACTION")
    p = labels.add_parser("build", help="embed the training captions once and cache them")
    p.add_argument("config", help="YAML file or built-in recipe name")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--encoder", choices=["minilm", "split_features"],
                   help="sentence encoder (default: the config's loss.label_encoder or minilm)")
    p.add_argument("--cache-dir", help="cache folder (default ~/.cache/vsekit/labels)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_labels)
