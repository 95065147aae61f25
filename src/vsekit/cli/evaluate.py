"""``vsekit eval`` and ``vsekit compare``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vsekit.errors import VsekitError


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
    if args.gallery:
        from vsekit.report.page import write_gallery

        out = write_gallery(Path(args.run_dir), Path(args.gallery), split=args.split,
                            checkpoint=args.checkpoint)
        print(f"gallery: {out}", file=sys.stderr if args.json else sys.stdout)
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


def register(sub: argparse._SubParsersAction) -> None:
    """Add the eval and compare sub-commands."""
    p = sub.add_parser("eval", help="evaluate a trained run on a split")
    p.add_argument("run_dir", help="a run directory written by `vsekit train`")
    p.add_argument("--split", default="test", help="split to evaluate (default test)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--pseudo-labels", choices=["minilm", "split_features"],
                   help="also nDCG / Kendall tau against pseudo-label relevance from this "
                        "sentence encoder (a proxy for semantic relevance)")
    p.add_argument("--label-cache-dir", help="cache folder for --pseudo-labels minilm")
    p.add_argument("--gallery", metavar="HTML",
                   help="also write a retrieval gallery of this split (top results of sampled "
                        "queries, ground truth marked) to this HTML file")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_eval)

    p = sub.add_parser("compare", help="markdown table of finished runs' test metrics")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--group-seeds", action="store_true",
                   help="runs named NAME-seedK form one row: mean ± std over seeds")
    p.set_defaults(func=_compare)
