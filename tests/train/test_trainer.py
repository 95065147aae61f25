"""The training loop: exact resume mid-epoch, parameter groups, run directory contents."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vsekit.config import config_from_dict
from vsekit.data.loader import train_loader
from vsekit.errors import VsekitError
from vsekit.train import checkpoint as ckpt
from vsekit.train.trainer import Trainer


def tiny_config(**train) -> dict:
    return {
        "seed": 1,
        "data": {"format": "synthetic", "n_train": 48, "n_dev": 12, "n_test": 12},
        "model": {"embed_dim": 16, "image": {"type": "cnn", "width": 4},
                  "text": {"type": "bigru", "word_dim": 8}},
        "loss": {"name": "vsepp", "mean_warmup_epochs": 1},
        "train": {"epochs": 2, "batch_size": 32, "log_every": 1, "progress": False,
                  "warmup_steps": 2, **train},
    }


def last_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    _, state = ckpt.latest_good_checkpoint(run_dir / "checkpoints")
    return state["model"]


def test_resume_mid_epoch_is_bitwise_identical(tmp_path: Path) -> None:
    full = Trainer(config_from_dict(tiny_config()), tmp_path / "full")
    full_result = full.fit()
    # Interrupted after 5 of 14 steps (inside epoch 0 of 7 steps each), then resumed.
    part = config_from_dict(tiny_config(max_steps=5))
    Trainer(part, tmp_path / "part").fit()
    resumed = Trainer(config_from_dict(tiny_config()), tmp_path / "part", resume=True)
    assert resumed.state.step == 5 and resumed.state.batch == 5
    resumed_result = resumed.fit()
    a, b = last_weights(tmp_path / "full"), last_weights(tmp_path / "part")
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
    assert resumed_result["steps"] == full_result["steps"] == 14
    # Log rows after the checkpoint were dropped on resume, so steps are not duplicated.
    rows = [json.loads(r) for r in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if r["kind"] == "train"]
    assert train_steps == sorted(set(train_steps)) == list(range(1, 15))


def test_parameter_groups_backbone_lr_and_no_decay(tmp_path: Path) -> None:
    raw = tiny_config(backbone_lr=1e-5, lr=1e-3, weight_decay=0.05)
    raw["model"]["image"] = {"type": "efficientnet_lite0", "freeze": False, "image_size": 32}
    raw["loss"] = {"name": "infonce"}
    trainer = Trainer(config_from_dict(raw), tmp_path / "run")
    groups = trainer.optimizer.param_groups
    backbone = {id(p) for p in trainer.model.image_encoder.backbone.parameters()}
    seen = set()
    for group in groups:
        for p in group["params"]:
            seen.add(id(p))
            assert group["initial_lr"] == (1e-5 if id(p) in backbone else 1e-3)
            assert group["weight_decay"] == (0.05 if p.ndim >= 2 else 0.0)
    trainable = [p for p in (*trainer.model.parameters(), *trainer.loss_fn.parameters())
                 if p.requires_grad]
    assert seen == {id(p) for p in trainable}
    assert id(trainer.loss_fn.logit_scale) in seen  # learned temperature: trained, not decayed


def test_batch_larger_than_split_is_a_clear_error_before_the_run_dir(tmp_path: Path) -> None:
    with pytest.raises(VsekitError, match="batch size 4096 is larger than the 240 training captions"):
        Trainer(config_from_dict(tiny_config(batch_size=4096)), tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("loss", [
    {"name": "vse0"},
    {"name": "infonce"},
    {"name": "triplet_sn"},
    {"name": "fne", "queue_size": 40, "warmup_epochs": 1, "min_count": 2},
    {"name": "bcls", "label_cache_dir": "CACHE"},
    {"name": "bcls", "base": "fne", "base_params": {"queue_size": 40, "warmup_epochs": 1},
     "label_cache_dir": "CACHE"},
])
def test_every_loss_trains_and_resumes(tmp_path: Path, loss: dict) -> None:
    loss = {k: (str(tmp_path / "cache") if v == "CACHE" else v) for k, v in loss.items()}
    raw = tiny_config()
    raw["loss"] = loss
    result = Trainer(config_from_dict(raw), tmp_path / "run").fit()
    assert result["steps"] == 14 and np.isfinite(result["metrics"]["rsum"])
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert len(epochs) == 2 and all(0 <= r["true_fn_rate_i2t"] <= 100 for r in epochs)
    # The loss state (queue, statistics, momentum weights) is in the checkpoint and restores.
    resumed = Trainer(config_from_dict(raw), tmp_path / "run", resume=True)
    saved = resumed.loss_fn.state_dict()
    _, state = ckpt.latest_good_checkpoint(tmp_path / "run" / "checkpoints")
    assert saved.keys() == state["loss"].keys()
    for key, value in state["loss"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(saved[key], value), key


def test_nonfinite_steps_are_skipped_then_stop(tmp_path: Path, monkeypatch) -> None:
    trainer = Trainer(config_from_dict(tiny_config(max_nonfinite_steps=3)), tmp_path / "run")
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    real = trainer.loss_fn.forward

    def nan_loss(*args, **kwargs):
        out = real(*args, **kwargs)
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(trainer.loss_fn, "forward", nan_loss)
    with pytest.raises(VsekitError, match="not finite for 3 steps in a row"):
        trainer.fit()
    after = dict(trainer.model.named_parameters())
    for key, value in before.items():
        assert torch.equal(value, after[key]), key  # no update from a NaN step


def test_ctrl_c_checkpoints_and_resume_finishes(tmp_path: Path) -> None:
    import signal

    trainer = Trainer(config_from_dict(tiny_config()), tmp_path / "run")
    real_step = trainer.train_step
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a background job

    def step_then_interrupt(batch, epoch):
        out = real_step(batch, epoch)
        if trainer.state.step == 2:
            signal.raise_signal(signal.SIGINT)
        return out

    trainer.train_step = step_then_interrupt
    with pytest.raises(KeyboardInterrupt, match="--resume"):
        trainer.fit()
    path, state = ckpt.latest_good_checkpoint(tmp_path / "run" / "checkpoints")
    assert path.name == "step-3.pt" and state["progress"]["batch"] == 3
    assert signal.getsignal(signal.SIGINT) is handler_before  # the trainer put it back
    result = Trainer(config_from_dict(tiny_config()), tmp_path / "run", resume=True).fit()
    assert result["steps"] == 14


def test_skipped_nonfinite_step_leaves_fne_state_untouched(tmp_path: Path, monkeypatch) -> None:
    """Queue, statistics and momentum weights change only with steps the trainer applies
    (tests/losses/test_fne.py checks the statistics with pairs that qualify; at this random
    init none does)."""
    raw = tiny_config()
    raw["loss"] = {"name": "fne", "queue_size": 40, "warmup_epochs": 0, "min_count": 2}
    trainer = Trainer(config_from_dict(raw), tmp_path / "run")
    loss = trainer.loss_fn
    batches = iter(train_loader(trainer.train_split, trainer.model, batch_size=32, seed=1,
                                epoch=0))
    loss.on_epoch_start(0)

    def snapshot() -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in loss.state_dict().items()
                if isinstance(v, torch.Tensor)}  # (the text encoder's vocabulary is a dict)

    trainer.train_step(next(batches), 0)
    before = snapshot()
    assert int(loss.queue.ptr) == 32
    real = loss.forward

    def nan_loss(*args, **kwargs):
        out = real(*args, **kwargs)
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(loss, "forward", nan_loss)
    trainer.train_step(next(batches), 0)
    assert trainer.nonfinite_in_a_row == 1
    for key, value in snapshot().items():
        assert torch.equal(value, before[key]), key  # nothing of the skipped step was kept
    monkeypatch.undo()
    trainer.train_step(next(batches), 0)
    after = snapshot()
    assert trainer.nonfinite_in_a_row == 0 and int(loss.queue.ptr) == (64 % 40)
    assert not torch.equal(after["momentum_model.image_encoder.fc.weight"],
                           before["momentum_model.image_encoder.fc.weight"])


def test_resume_on_another_number_of_processes_is_a_clear_error(tmp_path: Path) -> None:
    Trainer(config_from_dict(tiny_config(max_steps=2)), tmp_path / "run").fit()
    path, state = ckpt.latest_good_checkpoint(tmp_path / "run" / "checkpoints")
    assert state["progress"]["world_size"] == 1 and "rng_ranks" not in state
    state["progress"]["world_size"] = 2
    ckpt.save_checkpoint(state, path)
    with pytest.raises(VsekitError, match="trained on 2 process.* resumed on 1.*--nproc 2"):
        Trainer(config_from_dict(tiny_config()), tmp_path / "run", resume=True)


def test_sigterm_checkpoints_and_stops_even_when_repeated(tmp_path: Path) -> None:
    """What torchrun forwards and a scheduler sends before preempting: a graceful stop."""
    import signal

    trainer = Trainer(config_from_dict(tiny_config()), tmp_path / "run")
    real_step = trainer.train_step

    def step_then_terminate(batch, epoch):
        out = real_step(batch, epoch)
        if trainer.state.step == 1:
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)  # e.g. from the launcher and the scheduler
        return out

    trainer.train_step = step_then_terminate
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="--resume"):
        trainer.fit()
    path, state = ckpt.latest_good_checkpoint(tmp_path / "run" / "checkpoints")
    assert path.name == "step-2.pt" and state["progress"]["batch"] == 2
    assert signal.getsignal(signal.SIGTERM) is previous
