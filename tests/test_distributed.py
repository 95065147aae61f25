"""DDP on CPU (gloo, 2 processes) against one process with the global batch.

One ``torch.multiprocessing.spawn`` runs every job (losses, FNE steps, sharded evaluation) on
two ranks; the same job functions run here, without a process group, as the reference. A
rank sees half of every batch of 8 pairs; the reference sees all 8.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
import yaml
from torch import distributed as dist
from torch import nn

from vsekit import distributed
from vsekit.config import Config, ModelConfig
from vsekit.data import load_splits
from vsekit.data.dataset import Batch, ImageStore, RetrievalSplit
from vsekit.eval.encode import encode_split, evaluate_embeddings
from vsekit.losses import LOSSES
from vsekit.models.vse import build_model, context_from_split
from vsekit.train import checkpoint as ckpt

WORLD = 2
BATCH = 8  # global batch; 4 pairs per rank
FEATURES, DIM = 10, 6
# Image ids with repeats inside a rank's half (1, 1) and across the halves (3 | 3, 5 | 5).
CAPTION_IMAGES = [0, 1, 1, 3, 3, 5, 2, 5]

LOSS_CASES: dict[str, dict[str, Any]] = {
    "vse0": {"name": "vse0"},
    "vse0_sum_diagonal": {"name": "vse0", "reduction": "sum", "mask_same_image": False},
    "vsepp": {"name": "vsepp", "margin": 0.5},
    "infonce": {"name": "infonce", "temperature": 0.2},
    "triplet_sn": {"name": "triplet_sn", "tau": 0.2, "margin": 0.5},
    "triplet_sn_lse": {"name": "triplet_sn", "form": "lse", "tau": 0.1, "margin": 0.5},
    "kendall_swhs": {"name": "bcls", "lam": 2.0, "kendall_mode": "swhs",
                     "label_encoder": "split_features"},
    # label gap 1.5: some rows have no pair, 2 of a rank's 4 t2i rows vs 3 of the other's,
    # so the mean over rows needs the all-reduced row count
    "kendall_all": {"name": "bcls", "lam": 2.0, "kendall_mode": "all", "label_gap": 1.5,
                    "label_encoder": "split_features"},
    "kendall_swhs_gap": {"name": "bcls", "lam": 2.0, "kendall_mode": "swhs", "label_gap": 1.5,
                         "label_encoder": "split_features"},
    "bcls_on_infonce": {"name": "bcls", "base": "infonce", "label_encoder": "split_features"},
}


# --------------------------------------------------------------------------- jobs (both sides)


class Toy(nn.Module):
    """Two linear encoders (float64) with the VSEModel interface."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image_encoder = nn.Linear(FEATURES, DIM).double()
        self.text_encoder = nn.Linear(FEATURES, DIM).double()

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return (F.normalize(self.image_encoder(batch.images), dim=-1),
                F.normalize(self.text_encoder(batch.text["x"]), dim=-1))


def label_split() -> RetrievalSplit:
    """6 images, caption j belongs to image CAPTION_IMAGES[j]; caption features for labels."""
    rng = np.random.default_rng(0)
    return RetrievalSplit(
        name="train", images=ImageStore("features", features=np.zeros((6, 2), np.float32)),
        captions=[f"c{j}" for j in range(BATCH)], caption_to_image=np.array(CAPTION_IMAGES),
        image_ids=[f"i{k}" for k in range(6)],
        caption_features=rng.normal(size=(BATCH, 5)).astype(np.float32))


def global_batch(step: int) -> Batch:
    """The step's batch of 8 pairs (a fresh caption order per step)."""
    gen = torch.Generator().manual_seed(100 + step)
    captions = torch.randperm(BATCH, generator=gen)
    images = torch.tensor(CAPTION_IMAGES)[captions]
    latent = torch.randn(6, FEATURES, generator=gen, dtype=torch.float64)
    noise = 0.3 * torch.randn(BATCH, FEATURES, generator=gen, dtype=torch.float64)
    return Batch(images=latent[images] + noise, text={"x": latent[images] - noise},
                 image_index=images, caption_index=captions, image_ids=images)


def local_batch(batch: Batch) -> Batch:
    """This rank's consecutive share of a global batch (all of it on one process)."""
    size = BATCH // distributed.world_size()
    rows = slice(distributed.rank() * size, (distributed.rank() + 1) * size)
    return Batch(images=batch.images[rows], text={"x": batch.text["x"][rows]},
                 image_index=batch.image_index[rows], caption_index=batch.caption_index[rows],
                 image_ids=batch.image_ids[rows])


def build_loss(section: dict[str, Any], model: nn.Module) -> nn.Module:
    name, params = LOSSES.parse(section, "loss")
    loss = LOSSES.build(name, params).double()
    if hasattr(loss, "bind"):
        loss.bind(model=model, train_split=label_split(),
                  config=Config(seed=5, model=ModelConfig(embed_dim=DIM)))
    return loss


def gradients(model: nn.Module, loss: nn.Module) -> dict[str, torch.Tensor]:
    named = [*model.named_parameters(), *(("loss." + k, p) for k, p in loss.named_parameters())]
    return {k: p.grad.clone() for k, p in named if p.grad is not None}


def loss_job(section: dict[str, Any]) -> dict[str, Any]:
    """One step of a loss: the global loss (mean of the ranks' shares), averaged gradients."""
    model = Toy()
    loss = build_loss(section, model)
    wrapped = distributed.wrap_model(model, torch.device("cpu"))
    batch = local_batch(global_batch(0))
    image_emb, text_emb = wrapped(batch)
    out = loss(image_emb, text_emb, batch.image_ids, batch=batch, epoch=0, step=0, model=model)
    out.loss.backward()
    distributed.average_gradients(loss.parameters())
    values = distributed.mean_over_ranks({"loss": out.loss, **out.diagnostics})
    return {"values": values, "grads": gradients(model, loss)}


def fne_job() -> dict[str, Any]:
    """Five FNE steps (one warm-up) with SGD and commits: losses, grads, picks, final state."""
    model = Toy()
    loss = build_loss({"name": "fne", "queue_size": 11, "min_count": 1, "warmup_epochs": 1,
                       "momentum": 0.9}, model)
    wrapped = distributed.wrap_model(model, torch.device("cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    steps = []
    for step in range(5):
        epoch = min(step, 1)
        if step < 2:
            loss.on_epoch_start(epoch)
        batch = local_batch(global_batch(step))
        image_emb, text_emb = wrapped(batch)
        out = loss(image_emb, text_emb, batch.image_ids, epoch=epoch, step=step, batch=batch,
                   model=model)
        optimizer.zero_grad()
        out.loss.backward()
        picks = {k: distributed.gather_rows(p.index) for k, p in loss.last_picks.items()}
        steps.append({"values": distributed.mean_over_ranks({"loss": out.loss}),
                      "grads": gradients(model, loss), "picks": picks})
        optimizer.step()
        loss.commit_step()
    return {"steps": steps, "state": {k: v.clone() for k, v in loss.state_dict().items()}}


def eval_job() -> dict[str, Any]:
    """Sharded encoding of a 12-image test split at two batch sizes (uneven and empty blocks)."""
    splits = load_splits({"format": "synthetic", "n_train": 12, "n_dev": 2, "n_test": 12})
    torch.manual_seed(3)
    model = build_model(ModelConfig(embed_dim=8, image={"type": "cnn", "width": 4},
                                    text={"type": "bigru", "word_dim": 8}),
                        context_from_split(ModelConfig(embed_dim=8), splits["train"]))
    split = splits["test"]
    encode = encode_split if not distributed.is_distributed() else \
        distributed.encode_split_sharded
    return {size: encode(model, split, batch_size=size) for size in (5, 16)}


def all_jobs() -> dict[str, Any]:
    torch.set_num_threads(1)
    return {"losses": {name: loss_job(section) for name, section in LOSS_CASES.items()},
            "fne": fne_job(), "eval": eval_job()}


# --------------------------------------------------------------------------- spawning


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        torch.save(all_jobs(), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """every job's results on each of the 2 ranks."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=WORLD)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def single() -> dict[str, Any]:
    """The same jobs on this process alone (global batch of 8)."""
    assert not distributed.is_distributed()
    threads = torch.get_num_threads()
    try:
        return all_jobs()
    finally:
        torch.set_num_threads(threads)


def assert_close_dicts(got: dict, want: dict, tol: float) -> None:
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(torch.as_tensor(got[key]), torch.as_tensor(want[key]),
                                   rtol=tol, atol=tol, msg=key)


# --------------------------------------------------------------------------- losses


@pytest.mark.parametrize("case", LOSS_CASES)
def test_two_ranks_give_the_loss_and_gradients_of_one_process(
        case: str, ranks: list[dict], single: dict) -> None:
    want = single["losses"][case]
    assert want["grads"] and all(g.abs().sum() > 0 for g in want["grads"].values())
    for result in ranks:
        got = result["losses"][case]
        assert got["values"].keys() == want["values"].keys()
        for key in ("loss", "pos_sim"):  # pos_sim: a mean over equal shards, also exact
            assert got["values"][key] == pytest.approx(want["values"][key], rel=1e-10)
        assert_close_dicts(got["grads"], want["grads"], 1e-10)


def test_kendall_terms_are_present_and_match(ranks: list[dict], single: dict) -> None:
    for case in ("kendall_swhs", "kendall_all", "kendall_swhs_gap"):
        want = single["losses"][case]["values"]
        assert want["kendall_i2t"] > 0 and want["kendall_t2i"] > 0
        for result in ranks:
            got = result["losses"][case]["values"]
            for key in ("kendall_i2t", "kendall_t2i", "base_loss"):
                assert got[key] == pytest.approx(want[key], rel=1e-10)


def test_learned_temperature_gradient_is_averaged(ranks: list[dict], single: dict) -> None:
    want = single["losses"]["infonce"]["grads"]["loss.logit_scale"]
    for result in ranks:
        torch.testing.assert_close(result["losses"]["infonce"]["grads"]["loss.logit_scale"],
                                   want, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- FNE


def test_fne_steps_match_one_process(ranks: list[dict], single: dict) -> None:
    """Same draws (the global uniforms, sliced per rank), losses and gradients per step."""
    for step, want in enumerate(single["fne"]["steps"]):
        for result in ranks:
            got = result["fne"]["steps"][step]
            for direction in ("i2t", "t2i"):
                assert torch.equal(got["picks"][direction], want["picks"][direction]), step
            assert_close_dicts(got["values"], want["values"], 1e-10)
            assert_close_dicts(got["grads"], want["grads"], 1e-10)


def test_fne_state_is_identical_on_ranks_and_equals_one_process(
        ranks: list[dict], single: dict) -> None:
    first, second = (r["fne"]["state"] for r in ranks)
    want = single["fne"]["state"]
    assert float(want["stats.moments"][0, 0]) > 0  # positives were counted
    assert int((want["queue.ids"] >= 0).sum()) == 11  # 4 FNE steps × 8 pairs filled Q = 11
    for key, value in want.items():
        assert torch.equal(first[key], second[key]), key  # bitwise identical across ranks
        torch.testing.assert_close(first[key], value, rtol=1e-12, atol=1e-12, msg=key)


# --------------------------------------------------------------------------- evaluation


def test_sharded_encoding_equals_one_process_exactly(ranks: list[dict], single: dict) -> None:
    split = load_splits({"format": "synthetic", "n_train": 12, "n_dev": 2, "n_test": 12})["test"]
    for size, (image_emb, text_emb) in single["eval"].items():
        metrics = evaluate_embeddings(image_emb, text_emb, split)
        for result in ranks:
            got_image, got_text = result["eval"][size]
            assert torch.equal(got_image, image_emb) and torch.equal(got_text, text_emb), size
            assert evaluate_embeddings(got_image, got_text, split) == metrics


# --------------------------------------------------------------------------- one process


def test_helpers_are_the_identity_without_a_process_group() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.gather_rows(x) is x and distributed.all_reduce_sum(x) is x
    assert distributed.gather_many(x, x) == (x, x)
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    assert distributed.local_shard(4) == distributed.Shard(0, 4, 4)
    total = torch.tensor(6.0, requires_grad=True)
    assert distributed.global_mean(total, torch.tensor(4)).item() == 1.5
    assert distributed.global_mean(total, torch.tensor(0)).item() == 6.0  # no rows: sum / 1
    assert distributed.any_rank([True, False], torch.device("cpu")) == [True, False]
    assert distributed.wrap_model(nn.Linear(2, 2), torch.device("cpu")).__class__ is nn.Linear
    assert distributed.seed_for_rank(7) == 7
    assert distributed.gather_objects({"a": 1}) == [{"a": 1}]


# --------------------------------------------------------------------------- kill -9 and resume


def tiny_run_config(path: Path) -> Path:
    config = {
        "seed": 3,
        "data": {"format": "synthetic", "n_train": 16, "n_dev": 4, "n_test": 4},
        "model": {"embed_dim": 8, "image": {"type": "cnn", "width": 4},
                  "text": {"type": "bigru", "word_dim": 8}},
        "loss": {"name": "fne", "queue_size": 20, "warmup_epochs": 1, "min_count": 2},
        "train": {"epochs": 2, "batch_size": 4, "log_every": 5, "progress": False,
                  "warmup_steps": 2, "checkpoint_every": 3},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def torchrun(*args: str) -> subprocess.Popen:
    """``torchrun --nproc-per-node 2 -m vsekit train ARGS`` with this checkout's sources."""
    env = {**os.environ, "PYTHONPATH": str(Path(distributed.__file__).parents[1]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={WORLD}", "-m", "vsekit", "train", *args, "--no-progress"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    return output


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical_to_an_uninterrupted_run(
        tmp_path: Path) -> None:
    config = tiny_run_config(tmp_path / "tiny.yaml")
    killed_dir = tmp_path / "killed"
    straight = torchrun(str(config), "--run-dir", str(tmp_path / "straight"))
    killed = torchrun(str(config), "--run-dir", str(killed_dir))
    # Kill the launcher and both workers (they run in their own sessions) once step 6 is saved
    # (40 steps in all: 20 global batches of 4 per epoch, 2 epochs).
    deadline = time.monotonic() + 240
    while not (killed_dir / "checkpoints" / "step-6.pt").exists():
        assert killed.poll() is None and time.monotonic() < deadline, killed.communicate()[0]
        time.sleep(0.02)
    workers = children(killed.pid)
    for pid in [killed.pid, *workers]:
        os.kill(pid, signal.SIGKILL)
    killed.communicate()
    assert len(workers) == WORLD and not (killed_dir / "final_metrics.json").exists()
    for pid in workers:  # reaped by init once the launcher is gone
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    path, state = ckpt.latest_good_checkpoint(killed_dir / "checkpoints")
    assert 6 <= state["progress"]["step"] < 40 and len(state["rng_ranks"]) == WORLD
    print(f"killed after step {state['progress']['step']}")
    finish(torchrun("--resume", str(killed_dir)))
    finish(straight)
    _, want = ckpt.latest_good_checkpoint(tmp_path / "straight" / "checkpoints")
    _, got = ckpt.latest_good_checkpoint(killed_dir / "checkpoints")
    assert got["progress"]["step"] == want["progress"]["step"] == 40
    for part in ("model", "loss", "optimizer"):
        flat_want, flat_got = flatten(want[part]), flatten(got[part])
        assert flat_want.keys() == flat_got.keys()
        for key, value in flat_want.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(flat_got[key], value), key
            else:
                assert flat_got[key] == value, key
    finals = [json.loads((d / "final_metrics.json").read_text())
              for d in (killed_dir, tmp_path / "straight")]
    for final in finals:
        final.pop("train_seconds")
    assert finals[0] == finals[1]


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of nested dicts/lists as {"a.b.0": leaf}."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list | tuple):
        items = enumerate(tree)
    else:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out
