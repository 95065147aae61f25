"""``vsekit report``: a self-contained HTML page for one or more runs."""

from __future__ import annotations

import argparse
from pathlib import Path


def _report(args: argparse.Namespace) -> int:
    from vsekit.report.page import write_report

    out = write_report([Path(d) for d in args.run_dirs], Path(args.out) if args.out else None,
                       gallery=not args.no_gallery, k=args.top_k, n_queries=args.queries)
    print(f"report: {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the report sub-command."""
    p = sub.add_parser("report", help="HTML report of runs: summary, curves, metrics side by "
                                      "side, FNE/BCLS figures, retrieval gallery")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="HTML file to write (default RUN_DIR/report.html for one run, "
                                 "./report.html for several)")
    p.add_argument("--no-gallery", action="store_true", help="leave the retrieval gallery out")
    p.add_argument("--top-k", type=int, default=5, help="results per gallery query (default 5)")
    p.add_argument("--queries", type=int, default=4,
                   help="gallery queries per direction (default 4)")
    p.set_defaults(func=_report)
