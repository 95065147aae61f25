"""Kendall rank loss speed: SW-HS vs (label sort + Triplet-SN) and vs all pairs, Q = N = 1024.

On one seeded [Q, N] score matrix (requires grad) and continuous labels (1 on the diagonal,
like a batch's pseudo labels), forward + backward of:

- ``swhs``: ``kendall_rank_loss(mode="swhs")`` (suffix window, and a window of 16);
- ``sort + triplet_sn``: one ``torch.sort`` of the label matrix plus ``triplet_sn_loss`` —
  the sort is the one thing SW-HS must add to the triplet loss (target: SW-HS ≤ 1.5×);
- ``all``: ``kendall_rank_loss(mode="all")``, every eligible pair, chunked (target: SW-HS
  ≥ 20× faster), timed once; then run once more in a fresh process for its peak
  resident-memory growth, after fixing glibc malloc's mmap threshold there so that freed
  blocks go back to the OS and the peak RSS reflects live tensors, not heap fragmentation.

``--full-step CONFIG`` instead times whole training steps of a recipe with ``loss: vsepp``
and with ``loss: bcls`` (target: ≤ 1.5×; pseudo labels from the cache, no sentence encoder
in the loop).

Timings are medians over interleaved repeats, all in one process, so ratios compare like
with like. Ops use every torch thread by default: if another process keeps a core busy, every
parallel op waits for a scheduler slice and the timings say little — run on an idle
machine, or pass ``--threads 1``.

    python benchmarks/kendall_loss.py            # Q = N = 1024
    python benchmarks/kendall_loss.py --quick    # Q = N = 128 smoke run
    python benchmarks/kendall_loss.py --full-step configs/flickr8k_vsepp.yaml \
        --label-encoder split_features --threads 1     # whole steps, VSE++ vs BCLS
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

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


def all_pairs(scores: torch.Tensor, labels: torch.Tensor) -> None:
    forward_backward(lambda: kendall_rank_loss(scores, labels, mode="all"), scores)


def current_rss_mib() -> float:
    """Resident memory of this process now (Linux: /proc/self/statm)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def all_pairs_rss_growth_mib(size: int) -> float:
    """Peak minus starting RSS (MiB) of one all-pairs forward + backward, sampled every 2 ms
    by a thread (torch ops release the GIL). Meant for a fresh process."""
    release_freed_memory()
    all_pairs(*inputs(8))  # load lazily initialised code first
    scores, labels = inputs(size)
    start = peak = current_rss_mib()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.002):
            peak = max(peak, current_rss_mib())

    sampler = threading.Thread(target=sample)
    sampler.start()
    all_pairs(scores, labels)
    done.set()
    sampler.join()
    return max(peak, current_rss_mib()) - start


def loss_benchmark(size: int, repeats: int) -> None:
    """The loss-function comparison at Q = N = ``size`` (module docstring)."""
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
    for _ in range(repeats):  # interleaved, so machine noise hits every case alike
        for name, run in runs.items():
            samples[name].append(median_seconds(run, 1))
    times = {name: statistics.median(values) for name, values in samples.items()}

    times["all pairs"] = median_seconds(lambda: all_pairs(scores, labels), 1)
    memory = subprocess.run([sys.executable, __file__, "--memory-only", "--size", str(size)],
                            capture_output=True, text=True, check=True)
    rss_growth_mib = float(memory.stdout)

    print(f"Q = N = {size}, float32, forward + backward, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}")
    for name, seconds in times.items():
        print(f"  {name:<20} {seconds * 1e3:9.1f} ms")
    swhs = times["swhs (window None)"]
    print(f"  SW-HS / (sort + triplet_sn)      = {swhs / times['sort + triplet_sn']:.2f}"
          "  (target <= 1.5)")
    print(f"  SW-HS window 16 / (sort + triplet_sn) = "
          f"{times['swhs (window 16)'] / times['sort + triplet_sn']:.2f}")
    print(f"  all pairs / SW-HS                = {times['all pairs'] / swhs:.1f}"
          "  (target >= 20)")
    print(f"  peak RSS growth during all pairs = {rss_growth_mib:.0f} MiB "
          f"(one dense Q×N×N float32 tensor: {size ** 3 * 4 / 2 ** 20:.0f} MiB)")


def full_step_benchmark(config_path: str, overrides: list[str], steps: int,
                        label_encoder: str) -> None:
    """Whole training steps (forward, loss, backward, clip, optimiser) of one recipe's model
    and batches with ``loss: vsepp`` and with ``loss: bcls`` (labels from the cache, bound
    before timing); the two trainers alternate step by step on the same batches."""
    from vsekit.config import load_config
    from vsekit.data.loader import train_loader
    from vsekit.train.trainer import Trainer

    sections = {"vsepp": {"name": "vsepp", "margin": 0.2},
                "bcls": {"name": "bcls", "label_encoder": label_encoder}}
    trainers = {}
    with tempfile.TemporaryDirectory(prefix="bcls-bench-") as root:
        for name, section in sections.items():
            config = load_config(config_path, overrides)
            config.loss = section
            config.validate()
            trainers[name] = Trainer(config, Path(root) / name, progress=False)
        first = trainers["vsepp"]
        loader = train_loader(first.train_split, first.model,
                              batch_size=config.train.batch_size, seed=config.seed, epoch=0)
        times: dict[str, list[float]] = {name: [] for name in trainers}
        for k, batch in zip(range(steps + 2), loader, strict=False):
            for name, trainer in trainers.items():
                start = time.perf_counter()
                trainer.train_step(batch, epoch=0)
                if trainer.device.type == "cuda":
                    torch.cuda.synchronize()
                if k >= 2:  # the first two warm the allocator
                    times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    for name, seconds in median.items():
        print(f"{name:6s} step: {seconds * 1e3:9.2f} ms (median of {len(times[name])}, device "
              f"{first.device}, batch {config.train.batch_size}, "
              f"{torch.get_num_threads()} thread(s))")
    print(f"BCLS / VSE++ step time: {median['bcls'] / median['vsepp']:.2f}x  (target <= 1.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Q = N = 128 smoke run")
    parser.add_argument("--size", type=int, default=None, help="Q = N (default 1024)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--full-step", metavar="CONFIG",
                        help="instead, time whole training steps of this recipe, VSE++ vs BCLS")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for --full-step (repeatable)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps for --full-step")
    parser.add_argument("--label-encoder", choices=["minilm", "split_features"],
                        default="minilm", help="bcls label_encoder for --full-step")
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.size or (128 if args.quick else 1024)
    if args.memory_only:
        print(all_pairs_rss_growth_mib(size))
    elif args.full_step:
        full_step_benchmark(args.full_step, args.set, args.steps, args.label_encoder)
    else:
        loss_benchmark(size, args.repeats)


if __name__ == "__main__":
    main()
