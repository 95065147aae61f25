"""Evaluation speed: vsekit's chunked ranks vs one matmul and vs the classic per-query loop.

Random L2-normalised embeddings (seeded), similarity by one matmul (timed cold and warm), then
on that same matrix: ``vsekit.eval.retrieval_metrics`` and a per-query argsort loop like the
classic VSE ``i2t``/``t2i`` evaluation. Ranks must agree: exactly for every query whose GT
score is untied, and within its tie group otherwise (the loop's argsort orders ties
arbitrarily; vsekit counts only strictly higher scores).

    python benchmarks/eval_speed.py            # 5,000 images × 25,000 captions, 256-d
    python benchmarks/eval_speed.py --quick    # small smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from vsekit.eval import retrieval_metrics, retrieval_ranks

FULL = {"images": 5000, "captions": 25000, "dim": 256}
QUICK = {"images": 100, "captions": 500, "dim": 32}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn(), wall seconds)."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def embeddings(n_images: int, n_captions: int, dim: int, seed: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random unit vectors: images [n_images, dim], captions [n_captions, dim]."""
    gen = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(n_images, dim, generator=gen), dim=1)
    cap = torch.nn.functional.normalize(torch.randn(n_captions, dim, generator=gen), dim=1)
    return img, cap


def loop_ranks(sims: np.ndarray, caption_to_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Classic per-query evaluation: argsort every query, position of its GT (min for i2t)."""
    n_images, n_captions = sims.shape
    captions_of = [[] for _ in range(n_images)]
    for j, i in enumerate(caption_to_image):
        captions_of[i].append(j)
    i2t = np.full(n_images, -1, dtype=np.int64)
    for i in range(n_images):
        order = np.argsort(sims[i])[::-1]
        for j in captions_of[i]:
            position = np.where(order == j)[0][0]
            i2t[i] = position if i2t[i] < 0 else min(i2t[i], position)
    t2i = np.empty(n_captions, dtype=np.int64)
    columns = sims.T
    for j in range(n_captions):
        order = np.argsort(columns[j])[::-1]
        t2i[j] = np.where(order == caption_to_image[j])[0][0]
    return i2t, t2i


def check_against_loop(sims: np.ndarray, caption_to_image: np.ndarray, ours: np.ndarray,
                       loop: np.ndarray, direction: str) -> int:
    """Assert loop ranks equal ours where the GT score is untied; return #tied queries.

    With ties, the loop's position lies in [#greater, #greater-or-equal - 1] of the GT score
    (for i2t: of the best GT caption's score), while ours is #greater.
    """
    rows = np.arange(len(caption_to_image))
    gt = sims[caption_to_image, rows]
    if direction == "t2i":
        at_least = (sims >= gt[None, :]).sum(0)
    else:
        best = np.full(sims.shape[0], -np.inf, dtype=sims.dtype)
        np.maximum.at(best, caption_to_image, gt)
        at_least = (sims >= best[:, None]).sum(1)
    valid = ours >= 0
    tied = valid & (at_least - 1 > ours)
    assert np.array_equal(loop[~tied], ours[~tied]), f"{direction}: ranks differ on untied queries"
    assert np.all((loop[tied] >= ours[tied]) & (loop[tied] <= at_least[tied] - 1)), \
        f"{direction}: a tied rank falls outside its tie group"
    return int(tied.sum())


def run(images: int, captions: int, dim: int) -> dict[str, float]:
    """Time everything on one problem size; return the timings (seconds) and ratios."""
    img, cap = embeddings(images, captions, dim)
    caption_to_image = np.arange(captions) * images // captions  # captions spread evenly
    _, matmul_cold = timed(lambda: img @ cap.T)
    sims, matmul_warm = timed(lambda: img @ cap.T)
    _, metrics_cold = timed(lambda: retrieval_metrics(sims, caption_to_image))
    _, metrics_warm = timed(lambda: retrieval_metrics(sims, caption_to_image))
    (loop_i2t, loop_t2i), loop = timed(lambda: loop_ranks(sims.numpy(), caption_to_image))
    i2t, t2i = retrieval_ranks(sims, caption_to_image)
    tied_i2t = check_against_loop(sims.numpy(), caption_to_image, i2t, loop_i2t, "i2t")
    tied_t2i = check_against_loop(sims.numpy(), caption_to_image, t2i, loop_t2i, "t2i")
    return {"matmul_cold": matmul_cold, "matmul_warm": matmul_warm,
            "metrics_cold": metrics_cold, "metrics_warm": metrics_warm, "loop": loop,
            "metrics_over_matmul": metrics_warm / matmul_warm,
            "loop_over_metrics": loop / metrics_warm,
            "tied_queries": float(tied_i2t + tied_t2i)}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, help=f"number of images (default {FULL['images']})")
    parser.add_argument("--captions", type=int,
                        help=f"number of captions (default {FULL['captions']})")
    parser.add_argument("--dim", type=int, help=f"embedding size (default {FULL['dim']})")
    parser.add_argument("--quick", action="store_true",
                        help=f"small smoke run ({QUICK['images']} × {QUICK['captions']}, "
                             f"{QUICK['dim']}-d) unless sizes are given")
    args = parser.parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    sizes.update({k: getattr(args, k) for k in sizes if getattr(args, k) is not None})
    if sizes["captions"] < sizes["images"]:
        parser.error("--captions must be at least --images (every image gets a caption)")
    load = os.getloadavg()[0]  # other processes on the CPUs slow every row of the table
    result = run(**sizes)
    print(f"{sizes['images']} images × {sizes['captions']} captions, {sizes['dim']}-d, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average before the run {load:.2f}")
    print("| step | seconds |\n|---|---|")
    for label, key in (("matmul (cold, first call)", "matmul_cold"),
                       ("matmul (warm, second call)", "matmul_warm"),
                       ("retrieval_metrics (first call)", "metrics_cold"),
                       ("retrieval_metrics (second call)", "metrics_warm"),
                       ("per-query argsort loop", "loop")):
        print(f"| {label} | {result[key]:.3f} |")
    print(f"\nmetrics / warm matmul: {result['metrics_over_matmul']:.2f}× (target ≤ 1×)")
    print(f"loop / metrics: {result['loop_over_metrics']:.0f}× (target ≥ 30×)")
    print(f"ranks identical to the loop on every untied query; "
          f"{int(result['tied_queries'])} tied queries within their tie group")
    return result


if __name__ == "__main__":
    main()
