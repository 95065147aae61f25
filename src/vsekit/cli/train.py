"""``vsekit train``, ``vsekit demo`` and ``vsekit recipes``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from vsekit.cli.common import RECIPES, recipe_path
from vsekit.errors import VsekitError


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


def _demo(args: argparse.Namespace) -> int:
    from vsekit.report.page import write_report

    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = args.run_dir or f"runs/demo-{stamp}"
    overrides = [f"run_dir={run_dir}", *args.set]
    ns = argparse.Namespace(config="demo", set=overrides, run_dir=run_dir, resume=None,
                            no_progress=args.no_progress)
    code = _train(ns)
    print(f"report: {write_report([Path(run_dir)])}")
    return code


def _recipes(args: argparse.Namespace) -> int:
    for path in sorted(RECIPES.glob("*.yaml")):
        lines = path.read_text(encoding="utf-8").splitlines() or [""]
        first = lines[0].lstrip("# ").strip()
        print(f"{path.stem:<28}{first}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the train, demo and recipes sub-commands."""
    p = sub.add_parser("train", help="train a model from a YAML recipe")
    p.add_argument("config", nargs="?", help="YAML file or built-in recipe name (see `vsekit recipes`)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=1e-3 (repeatable)")
    p.add_argument("--run-dir", help="where to write the run (default: the config's run_dir)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_train)

    p = sub.add_parser("demo", help="train + evaluate on the built-in synthetic dataset")
    p.add_argument("--run-dir", help="where to write the run (default runs/demo-TIMESTAMP)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_demo)

    p = sub.add_parser("recipes", help="list the built-in YAML recipes")
    p.set_defaults(func=_recipes)
