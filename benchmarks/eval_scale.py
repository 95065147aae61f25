"""Streaming evaluation at scale: throughput, peak memory and cost relative to the bare matmul.

For each size N images × 5N captions (seeded random unit embeddings, each caption a noisy
copy of its image), in a fresh process so that peak memory is per size:

- the bare similarity matmul over the same tiles and threads as the streaming pass, with no
  counting (timed on all row blocks, or on an evenly spread share of them above
  ``--matmul-budget`` scores and scaled up: the table says which);
- ``vsekit.eval.streaming_metrics`` (exact ranks, float32), and with ``--half`` the
  bfloat16 agreement check and the bfloat16 pass, timed apart (the pass is timed even where
  ``--half`` would refuse: the table says which);
- where the matrix fits (≤ 2^27 scores), the in-memory path (one matmul +
  ``retrieval_metrics``), and whether its metrics equal the streamed ones.

    python benchmarks/eval_scale.py                                  # 5Kx25K, 20Kx100K
    python benchmarks/eval_scale.py --sizes 100000x500000 --half     # the largest
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from vsekit.eval import (
    half_agreement,
    metrics_from_ranks,
    retrieval_metrics,
    streaming_metrics,
    streaming_ranks,
)
from vsekit.eval.streaming import (
    HALF_MIN_AGREEMENT,
    TILE_COLS,
    TILE_ROWS,
    _EmbeddingTiles,
    _in_threads,
)

IN_MEMORY = 1 << 27


def embeddings(n_images: int, n_captions: int, dim: int, seed: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Unit image embeddings, captions = normalised image + noise (built in chunks so that no
    temporary is larger than a chunk), caption→image map (n_captions / n_images per image)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.normalize(torch.randn(n_images, dim, generator=gen), dim=1)
    c2i = np.arange(n_captions) * n_images // n_captions
    texts = torch.empty(n_captions, dim)
    for start in range(0, n_captions, 1 << 16):
        stop = min(start + (1 << 16), n_captions)
        noisy = images[c2i[start:stop]] + 0.3 * torch.randn(stop - start, dim, generator=gen)
        texts[start:stop] = torch.nn.functional.normalize(noisy, dim=1)
    return images, texts, c2i


def bare_matmul_seconds(images: torch.Tensor, texts: torch.Tensor, budget: float
                        ) -> tuple[float, float]:
    """(seconds for all tiles, share of row blocks timed): the streaming pass's tiles and
    threads, matmul only, timed on an evenly spread share of row blocks within ``budget``
    scores and scaled up."""
    tiles = _EmbeddingTiles(images, texts, half=False)
    n_blocks = -(-len(images) // TILE_ROWS)
    share = min(1.0, budget / (len(images) * len(texts)))
    chosen = np.unique(np.linspace(0, n_blocks - 1, max(1, round(share * n_blocks))).astype(int))

    def work(next_block) -> None:
        size = TILE_ROWS * TILE_COLS
        buffer, widened = tiles.buffer(size), np.empty(size, dtype=np.float32)
        while (index := next_block()) is not None:
            r0 = int(chosen[index]) * TILE_ROWS
            r1 = min(r0 + TILE_ROWS, len(images))
            for c0 in range(0, len(texts), TILE_COLS):
                tiles.tile(r0, r1, c0, min(c0 + TILE_COLS, len(texts)), buffer, widened)

    start = time.perf_counter()
    _in_threads(len(chosen), work)
    timed_rows = sum(min(TILE_ROWS, len(images) - int(b) * TILE_ROWS) for b in chosen)
    return (time.perf_counter() - start) * len(images) / timed_rows, timed_rows / len(images)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(n_images: int, n_captions: int, dim: int, half: bool, budget: float,
            progress: bool) -> dict:
    """One size, in this process."""
    images, texts, c2i = embeddings(n_images, n_captions, dim)
    out = {"images": n_images, "captions": n_captions, "rss_inputs_mib": peak_rss_mib()}
    out["matmul_s"], out["matmul_share"] = bare_matmul_seconds(images, texts, budget)
    start = time.perf_counter()
    metrics = streaming_metrics(images, texts, c2i, progress=progress)
    out["stream_s"] = time.perf_counter() - start
    out["rsum"] = metrics["rsum"]
    out["peak_rss_mib"] = peak_rss_mib()
    if half:  # timed apart: the check, then the bfloat16 pass (run even where --half refuses)
        start = time.perf_counter()
        out.update(half_agreement(images, texts, c2i, progress=progress))
        out["half_check_s"] = time.perf_counter() - start
        start = time.perf_counter()
        ranks = streaming_ranks(images, texts, c2i, half=True, progress=progress)
        out["half_s"] = time.perf_counter() - start
        out["half_rsum"] = metrics_from_ranks(ranks.i2t_ranks, ranks.t2i_ranks)["rsum"]
    if n_images * n_captions <= IN_MEMORY:
        start = time.perf_counter()
        held = retrieval_metrics(images @ texts.T, c2i)
        out["in_memory_s"] = time.perf_counter() - start
        out["in_memory_equal"] = held == {k: metrics[k] for k in held}
    return out


def row(r: dict) -> str:
    sims = r["images"] * r["captions"]
    share = "all" if r["matmul_share"] >= 1 else f"{100 * r['matmul_share']:.0f}% of rows"
    cells = [f"{r['images']:,} × {r['captions']:,}", f"{sims / 1e9:.3g}",
             f"{r['matmul_s']:.1f} ({share})", f"{r['stream_s']:.1f}",
             f"{r['stream_s'] / r['matmul_s']:.2f}", f"{sims / r['stream_s'] / 1e6:.0f}",
             f"{r['peak_rss_mib']:.0f}", f"{r['rsum']:.1f}"]
    if "half_s" in r:
        verdict = "ok" if r["half_recall_agreement"] >= HALF_MIN_AGREEMENT else "refused"
        cells.append(f"{r['half_s']:.1f} + check {r['half_check_s']:.1f} (R@K agree "
                     f"{r['half_recall_agreement']:.2f}%: {verdict}; rsum {r['half_rsum']:.1f})")
    else:
        cells.append("–")
    if "in_memory_s" in r:
        cells.append(f"{r['in_memory_s']:.1f} ({'equal' if r['in_memory_equal'] else 'DIFFER'})")
    else:
        cells.append("– (does not fit)")
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000x25000,20000x100000",
                        help="comma-separated NxM (images x captions)")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--half", action="store_true", help="also time --half (bfloat16)")
    parser.add_argument("--matmul-budget", type=float, default=5e9,
                        help="time the bare matmul on at most this many scores, scaled up")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child process: one size
    args = parser.parse_args()
    if args.one:
        n, m = (int(v) for v in args.one.split("x"))
        print(json.dumps(measure(n, m, args.dim, args.half, args.matmul_budget, args.progress)))
        return
    print(f"{args.dim}-d, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.machine()}, {os.cpu_count()} CPUs, load average before the run "
          f"{os.getloadavg()[0]:.2f}")
    print("| images × captions | 10^9 scores | bare matmul s | streamed s | streamed / matmul "
          "| M scores/s | peak RSS MiB | rsum | --half s | in-memory s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        command = [sys.executable, __file__, "--one", size, "--dim", str(args.dim),
                   "--matmul-budget", str(args.matmul_budget)]
        command += ["--half"] * args.half + ["--progress"] * args.progress
        child = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
        print(row(json.loads(child.stdout.strip().splitlines()[-1])), flush=True)
    print(f"load average after the run {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
