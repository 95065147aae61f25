"""Kendall rank loss speed: SW-HS vs (label sort + Triplet-SN) and vs all pairs, Q = N = 1024.

On one seeded [Q, N] score matrix (requires grad) and continuous labels (1 on the diagonal,
like a batch's pseudo labels), forward + backward of:

- ``swhs``: ``kendall_rank_loss(mode="swhs")`` (suffix window, and a window of 16);
- ``sort + triplet_sn``: one ``torch.sort`` of the label matrix plus ``triplet_sn_loss`` —
  the sort is the one thing SW-HS must add to the triplet loss (target: SW-HS ≤ 1.5×);
- ``all``: ``kendall_rank_loss(mode="all")``, every eligible pair, chunked (target: SW-HS
  ≥ 20× faster), run once; its peak resident-memory growth is printed too. On glibc the
  script fixes malloc's mmap threshold first, so freed blocks go back to the OS and the peak
  RSS reflects live tensors rather than heap fragmentation.

Timings are medians over interleaved repeats, all in one process, so ratios compare like
with like. Ops run on 2 threads by default: if another process keeps a core busy, every
parallel op waits for a scheduler slice and the timings say little — run on an idle machine.

    python benchmarks/kendall_loss.py            # Q = N = 1024
    python benchmarks/kendall_loss.py --quick    # Q = N = 128 smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import platform
import resource
import statistics
import time
from collections.abc import Callable

import torch

from vsekit.losses.bcls import kendall_rank_loss, triplet_sn_loss


def inputs(size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores [size, size] in [-1, 1] (leaf, requires grad) and labels with a diagonal of 1."""
    gen = torch.Generator().manual_seed(seed)
    scores = (torch.rand(size, size, generator=gen) * 2 - 1).requires_grad_()
    labels = torch.rand(size, size, generator=gen) * 0.8
    labels.fill_diagonal_(1.0)
    return scores, labels


def forward_backward(loss_fn: Callable[[], torch.Tensor], scores: torch.Tensor) -> None:
    scores.grad = None
    loss_fn().backward()


def median_seconds(fn: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def release_freed_memory() -> None:
    """glibc: serve blocks ≥ 128 KiB by mmap, so freeing returns them to the OS at once."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Q = N = 128 smoke run")
    parser.add_argument("--size", type=int, default=None, help="Q = N (default 1024)")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    release_freed_memory()
    size = args.size or (128 if args.quick else 1024)
    scores, labels = inputs(size)
    positive = torch.arange(size)
    mask = torch.eye(size, dtype=torch.bool)

    def baseline() -> torch.Tensor:
        torch.sort(labels, dim=1, descending=True, stable=True)
        return triplet_sn_loss(scores, positive, mask)

    cases = {
        "sort + triplet_sn": baseline,
        "swhs (window None)": lambda: kendall_rank_loss(scores, labels),
        "swhs (window 16)": lambda: kendall_rank_loss(scores, labels, window=16),
    }
    runs = {name: (lambda f=f: forward_backward(f, scores)) for name, f in cases.items()}
    for run in runs.values():  # warm-up
        run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved, so machine noise hits every case alike
        for name, run in runs.items():
            samples[name].append(median_seconds(run, 1))
    times = {name: statistics.median(values) for name, values in samples.items()}

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times["all pairs"] = median_seconds(
        lambda: forward_backward(lambda: kendall_rank_loss(scores, labels, mode="all"), scores),
        1)
    rss_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024

    print(f"Q = N = {size}, float32, forward + backward, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    for name, seconds in times.items():
        print(f"  {name:<20} {seconds * 1e3:9.1f} ms")
    swhs = times["swhs (window None)"]
    print(f"  SW-HS / (sort + triplet_sn)      = {swhs / times['sort + triplet_sn']:.2f}"
          "  (target <= 1.5)")
    print(f"  SW-HS window 16 / (sort + triplet_sn) = "
          f"{times['swhs (window 16)'] / times['sort + triplet_sn']:.2f}")
    print(f"  all pairs / SW-HS                = {times['all pairs'] / swhs:.1f}"
          "  (target >= 20)")
    print(f"  peak RSS growth during all pairs = {rss_growth_mb:.0f} MB "
          f"(a dense Q×N×N float32 tensor would be {size ** 3 * 4 / 2 ** 20:.0f} MB)")


if __name__ == "__main__":
    main()
