"""``vsekit eval`` and ``vsekit compare``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vsekit.errors import VsekitError


def _eval(args: argparse.Namespace) -> int:
    from vsekit.eval.run import eval_document, evaluate_run, write_eval_json
    from vsekit.eval.table import format_protocol

    run_dir = Path(args.run_dir)
    result = evaluate_run(run_dir, split=args.split, checkpoint=args.checkpoint,
                          protocol=args.protocol, eccv=args.eccv, half=args.half,
                          stream=args.stream, cache=not args.no_cache,
                          progress=not args.no_progress, pseudo_labels=args.pseudo_labels,
                          label_cache_dir=args.label_cache_dir)
    document = eval_document(result, split=args.split, checkpoint=args.checkpoint,
                             half=args.half)
    path = write_eval_json(run_dir, document)
    if args.json:
        print(json.dumps(document, indent=2, sort_keys=True))
    else:
        folds = len(result.folds)
        what = f", mean of {folds} folds" if folds > 1 else ""
        print(format_protocol(result.metrics, f"{args.split} split, protocol {args.protocol} "
                                              f"({args.checkpoint} checkpoint{what})"))
        print(f"written to {path}")
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
    p = sub.add_parser("eval", help="evaluate a trained run on a split, by protocol",
                       description="Encode a split once (cached in RUN_DIR/embeddings), compute "
                                   "the protocol's metrics, print them as papers do and write "
                                   "them to RUN_DIR/eval_<split>_<protocol>.json.")
    p.add_argument("run_dir", help="a run directory written by `vsekit train`")
    p.add_argument("--split", default="test", help="split to evaluate (default test; the COCO "
                                                   "5K split of VSE/SCAN precomp is testall)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--protocol", default="any", metavar="NAME",
                   help="evaluation protocol: any (the whole split, default), f30k-1k "
                        "(Flickr30K 1K test, 1,000 images x 5 captions), coco-5k (COCO 5K "
                        "test), coco-1k (COCO 5K test as 5 folds of 1,000 images, averaged)")
    p.add_argument("--eccv", action="store_true",
                   help="also ECCV Caption (mAP@R, R-P, R@1) and CxC R@K; needs --protocol "
                        "coco-5k on the COCO 5K test split with COCO ids")
    p.add_argument("--half", action="store_true",
                   help="bfloat16 similarities (streamed, faster on CPUs with AVX512-BF16), "
                        "after checking on sampled queries that R@1/5/10 agree with float32")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="stream the similarities tile by tile (default: when a fold exceeds "
                        "2^27 scores); streaming gives the binary metrics only")
    p.add_argument("--no-cache", action="store_true",
                   help="encode again and do not write RUN_DIR/embeddings")
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
