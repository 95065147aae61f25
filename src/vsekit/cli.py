"""The ``vsekit`` command. Sub-commands call library functions; user errors become one line
on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from vsekit import __version__
from vsekit.errors import VsekitError

RECIPES = Path(__file__).parent / "configs"


def recipe_path(name_or_path: str) -> Path:
    """A YAML path as given, or the name of a built-in recipe (``demo``, ``flickr8k_vsepp``)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    builtin = RECIPES / f"{name_or_path}.yaml"
    if builtin.is_file():
        return builtin
    known = ", ".join(sorted(p.stem for p in RECIPES.glob("*.yaml")))
    raise VsekitError(f"no config file or built-in recipe named {name_or_path!r} "
                      f"(built-in recipes: {known})")


def _train(args: argparse.Namespace) -> int:
    from vsekit.config import load_config
    from vsekit.eval.table import format_metrics
    from vsekit.train.run_dir import load_run_config
    from vsekit.train.trainer import train

    if args.resume:
        run_dir = Path(args.resume)
        config = load_run_config(run_dir)
        if args.config or args.set:
            raise VsekitError("--resume continues a run with its saved config; do not pass a "
                              "config or --set with it")
    else:
        if not args.config:
            raise VsekitError("vsekit train needs a CONFIG (a YAML file or a built-in recipe "
                              "name such as demo) or --resume RUN_DIR")
        config = load_config(recipe_path(args.config), args.set)
        run_dir = Path(args.run_dir or config.run_dir)
    result = train(config, run_dir, resume=bool(args.resume), progress=not args.no_progress)
    if "metrics" in result:
        best = (f", best dev epoch {result['best_epoch'] + 1}" if result["best_epoch"] >= 0
                else " (no dev split: last weights)")
        print(format_metrics(result["metrics"], f"{result['split']} split{best}"))
    print(f"run directory: {run_dir}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from vsekit.eval.run import evaluate_run
    from vsekit.eval.table import format_metrics

    metrics = evaluate_run(Path(args.run_dir), split=args.split, checkpoint=args.checkpoint,
                           progress=not args.no_progress, pseudo_labels=args.pseudo_labels,
                           label_cache_dir=args.label_cache_dir)
    if args.json:
        print(json.dumps(metrics, indent=2, sort_keys=True))
    else:
        print(format_metrics(metrics, f"{args.split} split ({args.checkpoint} checkpoint)"))
    return 0


def _demo(args: argparse.Namespace) -> int:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = args.run_dir or f"runs/demo-{stamp}"
    overrides = [f"run_dir={run_dir}", *args.set]
    ns = argparse.Namespace(config="demo", set=overrides, run_dir=run_dir, resume=None,
                            no_progress=args.no_progress)
    return _train(ns)


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


def _compare(args: argparse.Namespace) -> int:
    from vsekit.eval.table import runs_table
    from vsekit.train.run_dir import FINAL_METRICS

    groups: dict[str, list[dict[str, float]]] = {}
    for name in args.run_dirs:
        run_dir = Path(name)
        path = run_dir / FINAL_METRICS
        if not path.is_file():
            raise VsekitError(f"{name!r} has no {FINAL_METRICS}; is the run finished?")
        try:
            final = json.loads(path.read_text(encoding="utf-8"))
            metrics = final["metrics"]
        except (ValueError, KeyError, TypeError):
            raise VsekitError(f"{str(path)!r} is damaged or holds no test metrics; run "
                              f"vsekit eval {name}") from None
        label = run_dir.name
        if args.group_seeds:
            label = label.rsplit("-seed", 1)[0]
        row = dict(metrics, train_minutes=final.get("train_seconds", 0.0) / 60)
        groups.setdefault(label, []).append(row)
    print(runs_table(groups))
    return 0


def _recipes(args: argparse.Namespace) -> int:
    for path in sorted(RECIPES.glob("*.yaml")):
        lines = path.read_text(encoding="utf-8").splitlines() or [""]
        first = lines[0].lstrip("# ").strip()
        print(f"{path.stem:<28}{first}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vsekit", description="Train and evaluate image-text retrieval models that know "
                                   "their negatives may be false negatives.")
    parser.add_argument("--version", action="version", version=f"vsekit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model from a YAML recipe")
    p.add_argument("config", nargs="?", help="YAML file or built-in recipe name (see `vsekit recipes`)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=1e-3 (repeatable)")
    p.add_argument("--run-dir", help="where to write the run (default: the config's run_dir)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="evaluate a trained run on a split")
    p.add_argument("run_dir", help="a run directory written by `vsekit train`")
    p.add_argument("--split", default="test", help="split to evaluate (default test)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--pseudo-labels", choices=["minilm", "split_features"],
                   help="also nDCG / Kendall tau against pseudo-label relevance from this "
                        "sentence encoder (a proxy for semantic relevance)")
    p.add_argument("--label-cache-dir", help="cache folder for --pseudo-labels minilm")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_eval)

    p = sub.add_parser("demo", help="train + evaluate on the built-in synthetic dataset")
    p.add_argument("--run-dir", help="where to write the run (default runs/demo-TIMESTAMP)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_demo)

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

    p = sub.add_parser("compare", help="markdown table of finished runs' test metrics")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--group-seeds", action="store_true",
                   help="runs named NAME-seedK form one row: mean ± std over seeds")
    p.set_defaults(func=_compare)

    p = sub.add_parser("recipes", help="list the built-in YAML recipes")
    p.set_defaults(func=_recipes)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except VsekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return VsekitError.exit_code
    except OSError as exc:  # full disk, read-only folder, permissions
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}; free space or choose another folder",
              file=sys.stderr)
        return VsekitError.exit_code
    except KeyboardInterrupt as exc:
        print(f"interrupted: {exc}" if str(exc) else "interrupted", file=sys.stderr)
        return 130
