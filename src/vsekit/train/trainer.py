"""The training loop: AdamW, warm-up + schedule, clipping, AMP on GPU, checkpoints, evaluation.

One optimiser step per batch. State that must survive a restart (model, loss state,
optimiser, scheduler, scaler, RNGs, position in the epoch, best dev rsum) is in every
checkpoint, so ``--resume`` continues exactly where the run stopped.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from vsekit.config import Config
from vsekit.data import RetrievalSplit, load_splits
from vsekit.data.loader import train_loader
from vsekit.errors import VsekitError
from vsekit.eval.encode import evaluate
from vsekit.losses import LOSSES
from vsekit.models.vse import build_model, context_from_split
from vsekit.train import checkpoint as ckpt
from vsekit.train.logging import MetricLogger
from vsekit.train.monitor import FalseNegativeMonitor
from vsekit.train.run_dir import (
    BEST,
    CHECKPOINTS,
    FINAL_METRICS,
    check_new_run_dir,
    prepare_run_dir,
    write_json,
)
from vsekit.train.schedule import lr_factor


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise VsekitError(f"train.device {name!r} is not a torch device (use auto, cpu or cuda)"
                          ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VsekitError("train.device is cuda but no GPU is available; use train.device=auto")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Progress:
    """Where the run is: epochs done, batch within the epoch, optimiser steps, best dev rsum."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best_rsum: float = float("-inf")
    best_epoch: int = -1
    train_seconds: float = 0.0


class Trainer:
    """Trains one run described by a :class:`Config` into ``run_dir``."""

    def __init__(self, config: Config, run_dir: Path, *, resume: bool = False,
                 progress: bool | None = None) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.show_progress = config.train.progress if progress is None else progress
        if not resume:
            check_new_run_dir(self.run_dir)  # before minutes of data loading, not after
        self.device = resolve_device(config.train.device)
        seed_everything(config.seed)
        splits = load_splits(config.data)
        self.train_split = self._split(splits, "train")
        self.dev_split = splits.get("dev")
        self.test_split = self._split(splits, config.eval.split)
        self.model = build_model(config.model, context_from_split(config.model, self.train_split))
        self.model.to(self.device)
        name, params = LOSSES.parse(config.loss, "loss")
        self.loss_fn = LOSSES.build(name, params).to(self.device)
        if hasattr(self.loss_fn, "bind"):  # stateful losses: momentum copies, label caches
            self.loss_fn.bind(model=self.model, train_split=self.train_split, config=config)
            self.loss_fn.to(self.device)
        self.optimizer = torch.optim.AdamW(self._param_groups(), lr=config.train.lr,
                                           weight_decay=config.train.weight_decay)
        self.steps_per_epoch = self.train_split.n_captions // config.train.batch_size
        if not config.train.drop_last and self.train_split.n_captions % config.train.batch_size:
            self.steps_per_epoch += 1
        # The schedule spans all epochs; max_steps only stops early (so a capped run and
        # its resumption follow the same learning-rate curve).
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(config.train, self.steps_per_epoch,
                                      self.steps_per_epoch * config.train.epochs))
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.state = Progress()
        self.nonfinite_in_a_row = 0
        self.stop_requested = False
        if resume:
            self._restore()
        else:
            prepare_run_dir(config, self.run_dir)
        self.logger = MetricLogger(self.run_dir)
        self.monitor = (FalseNegativeMonitor(self.train_split.relevance, self.device)
                        if self.train_split.relevance is not None else None)

    def _param_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters in groups: pretrained backbones get ``train.backbone_lr`` when
        set; biases, norms and scalars (e.g. a learned temperature) get no weight decay."""
        cfg = self.config.train
        named = [*self.model.named_parameters(), *self.loss_fn.named_parameters()]
        groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
        for name, param in named:
            if param.requires_grad:
                key = (".backbone." in f".{name}", param.ndim >= 2)
                groups.setdefault(key, []).append(param)
        return [{"params": params,
                 "lr": (cfg.backbone_lr or cfg.lr) if backbone else cfg.lr,
                 "weight_decay": cfg.weight_decay if decay else 0.0}
                for (backbone, decay), params in sorted(groups.items())]

    @staticmethod
    def _split(splits: dict[str, RetrievalSplit], name: str) -> RetrievalSplit:
        if name not in splits:
            raise VsekitError(f"the dataset has no {name!r} split (found: {', '.join(splits)})")
        return splits[name]

    def _amp_dtype(self) -> torch.dtype | None:
        choice = self.config.train.amp
        if self.device.type != "cuda" or choice == "off":
            return None
        if choice == "fp16":
            return torch.float16
        if choice == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16

    # ----------------------------------------------------------------- checkpoints
    def _checkpoint_state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "loss": self.loss_fn.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "progress": vars(self.state).copy(),
            "rng": rng_state(),
            "config": self.config.to_dict(),
        }

    def save(self) -> Path:
        now = time.perf_counter()
        self.state.train_seconds += now - self._clock
        self._clock = now
        folder = self.run_dir / CHECKPOINTS
        path = folder / f"step-{self.state.step}.pt"
        ckpt.save_checkpoint(self._checkpoint_state(), path)
        ckpt.prune_checkpoints(folder, self.config.train.keep_last)
        return path

    def _restore(self) -> None:
        path, state = ckpt.latest_good_checkpoint(self.run_dir / CHECKPOINTS, self.device)
        ckpt.load_weights(self.model, state["model"], path)
        ckpt.load_weights(self.loss_fn, state["loss"], path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.state = Progress(**state["progress"])
        set_rng_state(state["rng"])
        self._truncate_log(self.state.step)
        self.resumed_from = path

    def _truncate_log(self, step: int) -> None:
        """Drop log rows written after the checkpoint we resume from (they will be redone)."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return

        rows = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    rows.append(line)
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by the interruption
        ckpt.atomic_write_bytes(path, ("".join(r + "\n" for r in rows)).encode())

    # ----------------------------------------------------------------- training
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_step(self, batch, epoch: int) -> dict[str, torch.Tensor]:
        """One optimiser step on ``batch``; returns detached diagnostics (no host sync)."""
        batch = batch.to(self.device)
        with self._autocast():
            image_emb, text_emb = self.model(batch)
            out = self.loss_fn(image_emb, text_emb, batch.image_ids, epoch=epoch,
                               step=self.state.step, batch=batch, model=self.model)
        if self.monitor is not None:
            self.monitor.update(batch, image_emb, text_emb, getattr(self.loss_fn, "last_picks", None))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for g in self.optimizer.param_groups for p in g["params"]],
            self.config.train.grad_clip if self.config.train.grad_clip > 0 else float("inf"))
        finite = bool(torch.isfinite(out.loss.detach())
                      & (torch.isfinite(grad_norm) | self.scaler.is_enabled()))
        self.nonfinite_in_a_row = 0 if finite else self.nonfinite_in_a_row + 1
        if finite:  # (the fp16 scaler itself skips steps whose scaled gradients overflow)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
        else:  # the schedule still advances; torch warns when no optimiser step came first
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler")
                self.scheduler.step()
        return {"loss": out.loss.detach(), "grad_norm": grad_norm.detach(), **out.diagnostics}

    def _finished(self) -> bool:
        max_steps = self.config.train.max_steps
        return (self.state.epoch >= self.config.train.epochs
                or (max_steps is not None and self.state.step >= max_steps))

    def fit(self) -> dict[str, Any]:
        """Train until done (resuming where the state says), then evaluate the best model.

        Ctrl-C lets the current step finish, saves a checkpoint and raises KeyboardInterrupt,
        so ``--resume`` loses nothing.
        """
        self._clock = time.perf_counter()
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, self._request_stop)
        try:
            self._train_epochs()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        return self._final()

    def _stop(self) -> None:
        path = self.save()
        self.logger.close()
        raise KeyboardInterrupt(f"checkpoint {path} saved at step {self.state.step}; continue "
                                f"with: vsekit train --resume {self.run_dir}")

    def _request_stop(self, signum: int, frame: Any) -> None:
        """First Ctrl-C: finish the current step, checkpoint, stop. Second: stop at once."""
        if self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested = True

    def _train_epochs(self) -> None:
        cfg = self.config.train
        while not self._finished():
            if self.stop_requested:
                self._stop()
            epoch = self.state.epoch
            if self.state.batch == 0 and hasattr(self.loss_fn, "on_epoch_start"):
                self.loss_fn.on_epoch_start(epoch)
            loader = train_loader(self.train_split, self.model, batch_size=cfg.batch_size,
                                  seed=self.config.seed, epoch=epoch, start_batch=self.state.batch,
                                  drop_last=cfg.drop_last, num_workers=cfg.num_workers)
            self.model.train()
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                       disable=not self.show_progress, leave=False)
            for batch in bar:
                diagnostics = self.train_step(batch, epoch)
                self.state.step += 1
                self.state.batch += 1
                if self.nonfinite_in_a_row >= cfg.max_nonfinite_steps:
                    raise VsekitError(
                        f"the loss or gradient was not finite for {self.nonfinite_in_a_row} "
                        f"steps in a row (up to step {self.state.step}); those steps were "
                        "skipped and the last good checkpoint kept; lower train.lr or check "
                        "the inputs for NaN")
                if self.stop_requested:
                    self._stop()
                if (cfg.checkpoint_every and self.state.step % cfg.checkpoint_every == 0
                        and not self.nonfinite_in_a_row):
                    self.save()
                if self.state.step % cfg.log_every == 0:
                    values = {k: float(v) for k, v in diagnostics.items()}
                    values["lr"] = self.scheduler.get_last_lr()[0]
                    self.logger.log("train", self.state.step, epoch, values)
                    bar.set_postfix(loss=f"{values['loss']:.4f}")
                if self._finished():
                    break
            bar.close()
            if self.state.batch >= len(loader) + loader.batch_sampler.start_batch:
                self._end_of_epoch(epoch)
            if self.dev_split is not None and (self.state.epoch % cfg.eval_every == 0
                                               or self._finished()):
                self._evaluate_dev(epoch)
            self.save()

    def _end_of_epoch(self, epoch: int) -> None:
        self.state.epoch += 1
        self.state.batch = 0
        if self.monitor is not None:
            self.logger.log("epoch", self.state.step, epoch, self.monitor.summary())
            self.monitor.reset()

    def _evaluate_dev(self, epoch: int) -> None:
        metrics = evaluate(self.model, self.dev_split, batch_size=self.config.eval.batch_size,
                           chunk_size=self.config.eval.chunk_size, device=self.device)
        self.logger.log("dev", self.state.step, epoch, metrics)
        if metrics["rsum"] > self.state.best_rsum:
            self.state.best_rsum = metrics["rsum"]
            self.state.best_epoch = epoch
            ckpt.save_checkpoint({"model": self.model.state_dict(), "epoch": epoch,
                                  "step": self.state.step, "dev_metrics": metrics,
                                  "config": self.config.to_dict()},
                                 self.run_dir / CHECKPOINTS / BEST)

    def _final(self) -> dict[str, Any]:
        best = self.run_dir / CHECKPOINTS / BEST
        if best.is_file():
            ckpt.load_weights(self.model, ckpt.load_checkpoint(best, self.device)["model"], best)
        result: dict[str, Any] = {"best_epoch": self.state.best_epoch,
                                  "best_dev_rsum": self.state.best_rsum,
                                  "steps": self.state.step,
                                  "train_seconds": round(self.state.train_seconds, 1)}
        if self.test_split is not None:
            result["split"] = self.test_split.name
            result["metrics"] = evaluate(self.model, self.test_split,
                                         batch_size=self.config.eval.batch_size,
                                         chunk_size=self.config.eval.chunk_size,
                                         device=self.device, progress=self.show_progress)
            self.logger.log("test", self.state.step, self.state.epoch, result["metrics"])
        write_json(self.run_dir / FINAL_METRICS, result)
        self.logger.close()
        return result


def train(config: Config, run_dir: Path, *, resume: bool = False,
          progress: bool | None = None) -> dict[str, Any]:
    """Train a run (or resume it) and return the final metrics written to the run dir."""
    return Trainer(config, run_dir, resume=resume, progress=progress).fit()
