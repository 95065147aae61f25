"""``vsekit index build`` and ``vsekit search``."""

from __future__ import annotations

import argparse
import json


def _build(args: argparse.Namespace) -> int:
    from vsekit.search.index import IndexSpec
    from vsekit.search.run import build_run_index

    spec = IndexSpec(kind=args.kind, nlist=args.nlist, nprobe=args.nprobe, hnsw_m=args.hnsw_m,
                     ef_construction=args.ef_construction, ef_search=args.ef_search)
    index = build_run_index(args.run_dir, args.out, images=args.images, captions=args.captions,
                            spec=spec, checkpoint=args.checkpoint,
                            recall_queries=args.recall_queries, seed=args.seed,
                            progress=not args.no_progress, overwrite=args.force)
    meta = index.meta
    print(f"{meta['kind']} index of {len(index)} {meta['modality']}s ({index.dim}-d) from "
          f"{meta['source']}: {args.out}")
    if meta["recall_at_10"] is not None:
        print(f"recall@10 against exact search: {meta['recall_at_10']:.4f} on "
              f"{meta['recall_queries']}")
    return 0


def _search(args: argparse.Namespace) -> int:
    from vsekit.search.run import format_results, search_run_index

    result = search_run_index(args.index, args.query, args.k, run_dir=args.run,
                              nprobe=args.nprobe, ef_search=args.ef_search,
                              progress=args.progress)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        print(format_results(result))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the index build and search sub-commands."""
    p = sub.add_parser("index", help="FAISS indexes of a trained run's embeddings")
    actions = p.add_subparsers(dest="index_command", required=True, metavar="ACTION")
    p = actions.add_parser(
        "build", help="embed images (for text queries) or captions (for image queries)",
        description="Embed images or captions with a run's model and save a FAISS index.")
    p.add_argument("run_dir", help="a run directory written by `vsekit train`")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", metavar="SOURCE",
                        help="image folder, .npy features file (names in the .txt beside it), "
                             "or a split of the run's dataset (test, all, ...)")
    source.add_argument("--captions", metavar="SOURCE",
                        help="text file with one caption a line, or a split of the run's "
                             "dataset (test, all, ...)")
    p.add_argument("--out", required=True, help="folder to write the index to")
    p.add_argument("--kind", default="flat",
                   help="flat: exact (default); ivf: IVF-Flat; hnsw: HNSW graph")
    p.add_argument("--nlist", type=int, help="ivf: k-means cells (default ~4·sqrt(N))")
    p.add_argument("--nprobe", type=int, default=8, help="ivf: cells visited per query")
    p.add_argument("--hnsw-m", type=int, default=32, help="hnsw: links per node")
    p.add_argument("--ef-construction", type=int, default=40, help="hnsw: build candidate list")
    p.add_argument("--ef-search", type=int, default=64, help="hnsw: search candidate list")
    p.add_argument("--recall-queries", type=int, default=500,
                   help="held-out queries for the recall@10 of ivf/hnsw against exact search")
    p.add_argument("--seed", type=int, default=0, help="seed of k-means and the query sample")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--force", action="store_true", help="replace an index already in --out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_build)

    p = sub.add_parser("search", help="query an index: text → images, or image → captions")
    p.add_argument("index", help="an index folder written by `vsekit index build`")
    p.add_argument("query", help="text (image index), or an image path or dataset image id "
                                 "(caption index)")
    p.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--run", metavar="RUN_DIR",
                   help="embed the query with this run instead of the recorded one (moved run)")
    p.add_argument("--nprobe", type=int, help="ivf: cells visited (default: as built)")
    p.add_argument("--ef-search", type=int, help="hnsw: candidate list (default: as built)")
    p.add_argument("--progress", action="store_true",
                   help="progress bars while the query is embedded (off: one query is quick)")
    p.set_defaults(func=_search)
