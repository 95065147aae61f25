"""Distributed training cost: communication per step for each loss, and CPU step time of 1 vs 2
processes (torch.distributed, gloo, on this machine).

1. **Communication per step**, per rank, of each loss at a global batch B (2 processes, B/2
   each): collectives issued by the loss in the forward pass and by the backward pass
   (counted by wrapping ``torch.distributed``'s functions), plus what the trainer adds every
   step (one 8-byte all-reduce agreeing on skipping/stopping) and DDP's gradient all-reduce
   (the model's trainable parameters, computed for the ``demo`` and
   ``flickr8k_minilm_finetune`` models since DDP runs it in C++).
2. **Step time** of ``Trainer.train_step`` on the demo model (CNN + BiGRU on synthetic
   scenes) at global batch B: 1 process × 1 thread vs 2 processes × 1 thread (B/2 each);
   ratios per global step (< 1: two processes are faster) of the wall time, and of the CPU
   time summed over the processes (the work DDP adds, whatever else runs on the machine);
   the two settings alternate over several rounds.
3. **Expected scaling** on GPUs, from those volumes and round link bandwidths (no multi-GPU
   machine was available to measure it).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/ddp_step.py           # B = 128
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/ddp_step.py --quick   # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import socket
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import distributed as dist

from vsekit import distributed
from vsekit.config import Config, ModelConfig, config_from_dict
from vsekit.data.dataset import Batch, ImageStore, RetrievalSplit
from vsekit.data.loader import train_loader
from vsekit.losses import LOSSES
from vsekit.models.base import ModelContext
from vsekit.models.vse import build_model
from vsekit.train.trainer import Trainer

LOSSES_MEASURED = {
    "vse0": {"name": "vse0"},
    "vsepp": {"name": "vsepp"},
    "infonce": {"name": "infonce"},
    "triplet_sn": {"name": "triplet_sn"},
    "bcls (Triplet-SN + Kendall SW-HS)": {"name": "bcls", "label_encoder": "split_features"},
    "fne (Q = 8224, after warm-up)": {"name": "fne", "warmup_epochs": 0},
    "fne warm-up (in-batch VSE++)": {"name": "fne", "warmup_epochs": 1},
}


# --------------------------------------------------------------------------- counting


class Counter:
    """Collectives seen while active: count and bytes per kind, for one rank."""

    def __init__(self) -> None:
        self.calls: dict[str, list[int]] = {}

    def add(self, kind: str, nbytes: int) -> None:
        entry = self.calls.setdefault(kind, [0, 0])
        entry[0] += 1
        entry[1] += nbytes

    def take(self) -> dict[str, list[int]]:
        calls, self.calls = self.calls, {}
        return calls


@contextlib.contextmanager
def counting(counter: Counter) -> Iterator[None]:
    """Wrap the torch.distributed functions vsekit.distributed calls. Bytes: what a rank
    receives from the others (all-gather), what it sends to them (reduce-scatter: its input
    but its own share), the tensor's size (all-reduce; a ring sends 2 (W−1)/W of it)."""
    names = {"all_gather_single": lambda out, inp, *a, **k: out.nbytes - inp.nbytes,
             "reduce_scatter_single": lambda out, inp, *a, **k: inp.nbytes - out.nbytes,
             "all_reduce": lambda t, *a, **k: t.nbytes}
    originals = {name: getattr(dist, name) for name in names}

    def wrapped(name: str, *args: Any, **kwargs: Any) -> Any:
        counter.add(name, names[name](*args, **kwargs))
        return originals[name](*args, **kwargs)

    for name in names:
        setattr(dist, name, functools.partial(wrapped, name))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)


class Identity(torch.nn.Module):
    """A stand-in model for FNE's momentum copy: the batch's features are the embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return (F.normalize(batch.images * self.weight, dim=1),
                F.normalize(batch.text["x"] * self.weight, dim=1))


def communication_job(batch: int, dim: int) -> dict[str, dict[str, dict[str, list[int]]]]:
    """Per loss: collectives of one step (forward, backward) on this rank."""
    local = batch // distributed.world_size()
    rng = np.random.default_rng(0)
    split = RetrievalSplit(
        name="train", images=ImageStore("features", features=np.zeros((batch, 2), np.float32)),
        captions=[str(j) for j in range(batch)], caption_to_image=np.arange(batch),
        image_ids=[str(j) for j in range(batch)],
        caption_features=rng.normal(size=(batch, 16)).astype(np.float32))
    rows = slice(distributed.rank() * local, (distributed.rank() + 1) * local)
    gen = torch.Generator().manual_seed(1)
    index = torch.arange(batch)[rows]
    step = Batch(images=torch.randn(batch, dim, generator=gen)[rows],
                 text={"x": torch.randn(batch, dim, generator=gen)[rows]},
                 image_index=index, caption_index=index, image_ids=index)
    counter, results = Counter(), {}
    model = Identity()
    for label, section in LOSSES_MEASURED.items():
        name, params = LOSSES.parse(section, "loss")
        loss = LOSSES.build(name, params)
        if hasattr(loss, "bind"):
            loss.bind(model=model, train_split=split,
                      config=Config(model=ModelConfig(embed_dim=dim)))
        image_emb, text_emb = (x.requires_grad_() for x in model(step))
        with counting(counter):
            out = loss(image_emb.detach().requires_grad_(), text_emb.detach().requires_grad_(),
                       step.image_ids, epoch=0, step=0, batch=step, model=model)
            forward = counter.take()
            out.loss.backward()
            backward = counter.take()
            if hasattr(loss, "commit_step"):
                loss.commit_step()
        results[label] = {"forward": forward, "backward": backward}
    return results


# --------------------------------------------------------------------------- step time


def demo_config(loss: dict[str, Any], batch: int, n_train: int) -> Config:
    return config_from_dict({
        "seed": 0, "data": {"format": "synthetic", "n_train": n_train, "n_dev": 4, "n_test": 4},
        "model": {"embed_dim": 256, "image": {"type": "cnn"}, "text": {"type": "bigru"}},
        "loss": loss, "train": {"batch_size": batch, "progress": False, "device": "cpu"}})


def step_time_job(batch: int, steps: int, n_train: int, threads: int
                  ) -> dict[str, dict[str, list[float]]]:
    """Per loss (VSE++, FNE; demo model), per step after 2 warm-up steps: wall seconds and
    CPU seconds summed over all processes (all threads, gloo's included)."""
    torch.set_num_threads(threads)
    times: dict[str, dict[str, list[float]]] = {"wall": {}, "cpu": {}}
    for name, loss in (("vsepp", {"name": "vsepp"}),
                       ("fne (Q = 4096)", {"name": "fne", "queue_size": 4096,
                                           "warmup_epochs": 0})):
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "run"
            if distributed.is_distributed():  # one folder for all ranks: rank 0's
                run_dir = Path(distributed.gather_objects(str(run_dir))[0])
            trainer = Trainer(demo_config(loss, batch, n_train), run_dir)
            loader = train_loader(trainer.train_split, trainer.model, batch_size=batch, seed=0,
                                  epoch=0, num_replicas=trainer.world, rank=trainer.rank)
            wall, cpu = [], []
            for k, item in enumerate(list(loader)[:steps + 2]):
                distributed.barrier()
                start, start_cpu = time.perf_counter(), time.process_time()
                trainer.train_step(item, 0)
                if k >= 2:
                    wall.append(time.perf_counter() - start)
                    cpu.append(time.process_time() - start_cpu)
            times["wall"][name] = wall
            times["cpu"][name] = [sum(c) for c in zip(*distributed.gather_objects(cpu),
                                                      strict=True)]
            trainer.logger.close()
            distributed.barrier()
    return times


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, job: str, kwargs: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        torch.set_num_threads(1)
        result = JOBS[job](**kwargs)
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def on_two_ranks(job: str, **kwargs: Any) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.pt")
        mp.spawn(_worker, args=(2, free_port(), out, job, kwargs), nprocs=2)
        return torch.load(out, weights_only=False)


JOBS = {"communication": communication_job, "step_time": step_time_job}


def trainable_parameters(model: ModelConfig, context: ModelContext) -> int:
    return sum(p.numel() for p in build_model(model, context).parameters() if p.requires_grad)


def recipe_parameters() -> dict[str, tuple[int, int]]:
    """(trainable parameters, D) of the default (demo) and the large recipe's models."""
    from vsekit.data import load_splits
    from vsekit.models.vse import context_from_split

    demo = ModelConfig(embed_dim=256, image={"type": "cnn"}, text={"type": "bigru"})
    split = load_splits({"format": "synthetic", "n_train": 3000, "n_dev": 1, "n_test": 1})
    large = ModelConfig(embed_dim=512, image={"type": "projection", "hidden": None},
                        text={"type": "hf", "model": "minilm", "freeze": False})
    return {"demo (CNN + BiGRU)": (trainable_parameters(demo, context_from_split(
                demo, split["train"])), 256),
            "flickr8k_minilm_finetune (MiniLM fine-tuned)": (trainable_parameters(
                large, ModelContext(512, "features", image_feature_dim=1280)), 512)}


#: Effective per-GPU bus bandwidth of a ring all-reduce, bytes/s (round figures).
LINKS = {"NVLink (~150 GB/s)": 150e9, "PCIe 4 x16 (~20 GB/s)": 20e9,
         "100 Gb/s network (~10 GB/s)": 10e9}


def expected_scaling(recipes: dict[str, tuple[int, int]], batch: int) -> None:
    """Communication time per step from the volumes above: ring all-reduce of the gradients
    (2 (W−1)/W × size per GPU) plus the loss's embedding gather and its backward
    reduce-scatter ((W−1)/W × B × 2 × D × 4 bytes each)."""
    print(f"\n3. Expected communication time per step (global batch {batch}), from volume / "
          "bandwidth; DDP overlaps the gradient all-reduce with the backward pass")
    for name, (count, dim) in recipes.items():
        for world in (2, 8):
            share = (world - 1) / world
            grads = 2 * share * 4 * count
            embeddings = 2 * share * batch * 2 * dim * 4
            cells = ", ".join(f"{link} {1e3 * (grads + embeddings) / bw:.2f} ms"
                              for link, bw in LINKS.items())
            print(f"  {name}, W = {world}: gradients {size(grads)} + embeddings "
                  f"{size(embeddings)} per GPU -> {cells}")


def size(n: float) -> str:
    """Bytes as B / KB / MB (powers of 2)."""
    if n < 2**10:
        return f"{n:.0f} B"
    return f"{n / 2**10:.1f} KB" if n < 2**20 else f"{n / 2**20:.2f} MB"


def step_times(batch: int, steps: int, rounds: int) -> None:
    """Section 2: the demo model's train step on 1 process vs 2, alternated ``rounds`` times
    (so that a change in the machine's load hits both settings alike)."""
    n_train = max(batch * (steps + 2) // 5 + 1, 8)
    print(f"\n2. Train step time, demo model, synthetic scenes, B = {batch} (median of "
          f"{rounds} alternated rounds × {steps} steps, per global step; CPU = process time "
          "summed over the processes)")
    settings: dict[str, dict[str, dict[str, list[float]]]] = {}
    for _ in range(rounds):
        runs = {"1 process × 1 thread": step_time_job(batch, steps, n_train, 1),
                "2 processes × 1 thread": on_two_ranks("step_time", batch=batch, steps=steps,
                                                       n_train=n_train, threads=1)}
        for setting, result in runs.items():
            for clock, per_loss in result.items():
                for loss, seconds in per_loss.items():
                    settings.setdefault(setting, {}).setdefault(clock, {}).setdefault(
                        loss, []).extend(seconds)
    base = settings["1 process × 1 thread"]
    for loss in base["wall"]:
        print(f"  {loss}:")
        for setting, clocks in settings.items():
            cells = []
            for clock in ("wall", "cpu"):
                median = statistics.median(clocks[clock][loss])
                ratio = median / statistics.median(base[clock][loss])
                cells.append(f"{clock} {median * 1e3:7.1f} ms (ratio {ratio:.2f})")
            print(f"    {setting:24s} " + "   ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128, help="global batch B")
    parser.add_argument("--dim", type=int, default=1024, help="embedding size D")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=4, help="alternated timing rounds")
    parser.add_argument("--quick", action="store_true", help="B = 16, D = 64, 3 steps")
    parser.add_argument("--skip-timing", action="store_true", help="sections 1 and 3 only")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.dim, args.steps, args.rounds = 16, 64, 3, 1
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, gloo; no GPU. Global batch B = {args.batch}, 2 processes of "
          f"B/2 = {args.batch // 2}.")

    print(f"\n1. Communication per step and rank, D = {args.dim} (fp32 embeddings): "
          "count × size (all-gather: received; reduce-scatter: sent; all-reduce: tensor size)")
    comm = on_two_ranks("communication", batch=args.batch, dim=args.dim)
    print(f"  {'loss':36s} {'forward':44s} backward")
    for label, phases in comm.items():
        cells = [", ".join(f"{n}× {kind} {size(b)}" for kind, (n, b) in
                           sorted(phase.items())) or "none" for phase in phases.values()]
        print(f"  {label:36s} {cells[0]:44s} {cells[1]}")
    print("  trainer, every step: 1× all_reduce of 8 bytes (skip / stop flags); a loss with "
          "parameters (learned temperature) adds 1× all_reduce of their gradients")
    recipes = recipe_parameters()
    for name, (count, _) in recipes.items():
        print(f"  DDP gradient all-reduce, {name}: {count / 1e6:.2f} M parameters = "
              f"{size(4 * count)} per step (fp32, in 25 MB buckets)")

    if not args.skip_timing:
        step_times(args.batch, args.steps, args.rounds)
    expected_scaling(recipes, args.batch)


if __name__ == "__main__":
    main()
