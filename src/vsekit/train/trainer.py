"""The training loop: AdamW, warm-up + schedule, clipping, AMP on GPU, checkpoints, evaluation.

One optimiser step per batch. State that must survive a restart (model, loss state,
optimiser, scheduler, scaler, RNGs, position in the epoch, best dev rsum) is in every
checkpoint, so ``--resume`` continues exactly where the run stopped.

Under torchrun (several processes, :mod:`vsekit.distributed`) the same loop runs on every
rank: the model is wrapped in DDP, each rank trains on its shard of every global batch, the
ranks agree on skipping non-finite steps and on stopping, and only rank 0 logs, writes
checkpoints and shows progress bars (each checkpoint holds every rank's RNG states).
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

from vsekit import distributed
from vsekit.config import Config
from vsekit.data import RetrievalSplit, load_splits
from vsekit.data.loader import check_batch_size, train_loader
from vsekit.errors import VsekitError
from vsekit.eval.encode import evaluate_embeddings
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
    """Where the run is: epochs done, batch within the epoch, optimiser steps, best dev rsum,
    and the number of processes it runs on (a resume needs the same)."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best_rsum: float = float("-inf")
    best_epoch: int = -1
    train_seconds: float = 0.0
    world_size: int = 1


class Trainer:
    """Trains one run described by a :class:`Config` into ``run_dir``."""

    def __init__(self, config: Config, run_dir: Path, *, resume: bool = False,
                 progress: bool | None = None) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.world, self.rank = distributed.world_size(), distributed.rank()
        self.is_main = self.rank == 0
        self.show_progress = (config.train.progress if progress is None else progress
                              ) and self.is_main
        if not resume:
            check_new_run_dir(self.run_dir)  # before minutes of data loading, not after
        self.device = distributed.local_device(resolve_device(config.train.device))
        seed_everything(config.seed)  # the same on every rank: same model, copies, queue
        splits = load_splits(config.data)
        self.train_split = self._split(splits, "train")
        self.dev_split = splits.get("dev")
        self.test_split = self._split(splits, config.eval.split)
        check_batch_size(config.train.batch_size, self.train_split)  # before the run dir
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
        self.train_model = distributed.wrap_model(self.model, self.device)  # DDP: a collective
        if self.rank > 0:  # independent dropout noise per rank
            seed_everything(distributed.seed_for_rank(config.seed))
        self.state = Progress(world_size=self.world)
        self.nonfinite_in_a_row = 0
        self.stop_requested = False  # set by a signal on this rank
        self.stop_agreed = False  # some rank got one: every rank stops after the same step
        self.monitor = (FalseNegativeMonitor(self.train_split.relevance, self.device)
                        if self.train_split.relevance is not None else None)
        if resume:
            self._restore()
        elif self.is_main:
            prepare_run_dir(config, self.run_dir)
        self.logger = MetricLogger(self.run_dir, enabled=self.is_main)

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
    def _checkpoint_state(self, rngs: list[dict[str, Any]]) -> dict[str, Any]:
        """The checkpoint; ``rngs`` are the RNG states of every rank (rank 0's is ``rng``;
        with several processes all of them are also in ``rng_ranks``)."""
        state = {
            "model": self.model.state_dict(),
            "loss": self.loss_fn.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "progress": vars(self.state).copy(),
            "rng": rngs[0],
            "config": self.config.to_dict(),
        }
        if len(rngs) > 1:
            state["rng_ranks"] = rngs
        if self.monitor is not None:  # this rank's counts of the epoch so far
            state["monitor"] = self.monitor.state_dict()
        return state

    def save(self) -> Path:
        """Write a step checkpoint (rank 0; every rank must call it: RNG states are gathered)."""
        now = time.perf_counter()
        self.state.train_seconds += now - self._clock
        self._clock = now
        folder = self.run_dir / CHECKPOINTS
        path = folder / f"step-{self.state.step}.pt"
        rngs = distributed.gather_objects(rng_state())
        if self.is_main:
            ckpt.save_checkpoint(self._checkpoint_state(rngs), path)
            ckpt.prune_checkpoints(folder, self.config.train.keep_last)
        return path

    def _restore(self) -> None:
        path, state = ckpt.latest_good_checkpoint(self.run_dir / CHECKPOINTS, self.device)
        progress = Progress(**state["progress"])
        if progress.world_size != self.world:
            raise VsekitError(f"run {str(self.run_dir)!r} was trained on "
                              f"{progress.world_size} process(es) but is resumed on "
                              f"{self.world}; resume it with --nproc {progress.world_size} (or "
                              f"torchrun with {progress.world_size} processes in all)")
        ckpt.load_weights(self.model, state["model"], path)
        ckpt.load_weights(self.loss_fn, state["loss"], path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.state = progress
        set_rng_state(state["rng_ranks"][self.rank] if "rng_ranks" in state else state["rng"])
        if self.monitor is not None and "monitor" in state:
            self.monitor.load_state_dict(state["monitor"])
        if self.is_main:  # a checkpoint at an epoch's last batch: its epoch end is redone
            self._truncate_log(self.state.step,
                               epoch_end_redone=self.state.batch >= self.steps_per_epoch)
        self.resumed_from = path

    def _truncate_log(self, step: int, epoch_end_redone: bool = False) -> None:
        """Drop log rows written after the checkpoint we resume from (they will be redone),
        and with ``epoch_end_redone`` also the epoch and dev rows of its own step."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return

        rows = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
                if row["step"] < step or (row["step"] == step and (
                        row["kind"] == "train" or not epoch_end_redone)):
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
        """One optimiser step on ``batch``; returns detached diagnostics.

        A step whose loss or gradient is not finite (on any rank) is skipped: no optimiser
        update and no change to the loss's state (``commit_step`` is not called). Host syncs:
        the finiteness check (with several processes, one all-reduce that also agrees on
        stopping).
        """
        batch = batch.to(self.device)
        with self._autocast():
            image_emb, text_emb = self.train_model(batch)
            out = self.loss_fn(image_emb, text_emb, batch.image_ids, epoch=epoch,
                               step=self.state.step, batch=batch, model=self.model)
        if self.monitor is not None:
            self.monitor.update(batch, image_emb, text_emb, getattr(self.loss_fn, "last_picks", None))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss).backward()
        distributed.average_gradients(self.loss_fn.parameters())  # DDP averages the model's
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for g in self.optimizer.param_groups for p in g["params"]],
            self.config.train.grad_clip if self.config.train.grad_clip > 0 else float("inf"))
        finite = bool(torch.isfinite(out.loss.detach())
                      & (torch.isfinite(grad_norm) | self.scaler.is_enabled()))
        skip, self.stop_agreed = distributed.any_rank([not finite, self.stop_requested],
                                                      self.device)
        self.nonfinite_in_a_row = self.nonfinite_in_a_row + 1 if skip else 0
        if not skip:
            self._apply_step()
        else:  # the schedule still advances; torch warns when no optimiser step came first
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler")
                self.scheduler.step()
        return {"loss": out.loss.detach(), "grad_norm": grad_norm.detach(), **out.diagnostics}

    def _apply_step(self) -> None:
        """Optimiser and schedule step, then commit the loss's state update of this step,
        unless the fp16 scaler skipped the update (its scaled gradients overflowed)."""
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        applied = scale is None or self.scaler.get_scale() >= scale  # a skip lowers the scale
        if applied and hasattr(self.loss_fn, "commit_step"):
            self.loss_fn.commit_step()

    def _finished(self) -> bool:
        max_steps = self.config.train.max_steps
        return (self.state.epoch >= self.config.train.epochs
                or (max_steps is not None and self.state.step >= max_steps))

    def fit(self) -> dict[str, Any]:
        """Train until done (resuming where the state says), then evaluate the best model.

        Ctrl-C (SIGINT) or SIGTERM (torchrun forwards either to its workers; schedulers send
        SIGTERM before they preempt a job) lets the current step finish, saves a checkpoint
        and raises KeyboardInterrupt, so ``--resume`` loses nothing; a second Ctrl-C stops at
        once.
        """
        self._clock = time.perf_counter()
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {sig: signal.signal(sig, self._request_stop)
                        for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._train_epochs()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self._final()

    def _stop(self) -> None:
        path = self.save()
        self.logger.close()
        nproc = f" --nproc {self.world}" if self.world > 1 else ""
        raise KeyboardInterrupt(f"checkpoint {path} saved at step {self.state.step}; continue "
                                f"with: vsekit train --resume {self.run_dir}{nproc}")

    def _request_stop(self, signum: int, frame: Any) -> None:
        """A signal: finish the current step, checkpoint, stop. A second Ctrl-C: stop at once
        (a repeated SIGTERM, which a scheduler may send to every process, does not)."""
        if self.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop_requested = True

    def _agree_stop(self) -> bool:
        """Whether any rank was asked to stop (one all-reduce with several processes)."""
        (self.stop_agreed,) = distributed.any_rank([self.stop_agreed or self.stop_requested],
                                                   self.device)
        return self.stop_agreed

    def _train_epochs(self) -> None:
        cfg = self.config.train
        while not self._finished():
            if self._agree_stop():
                self._stop()
            epoch = self.state.epoch
            if self.state.batch == 0 and hasattr(self.loss_fn, "on_epoch_start"):
                self.loss_fn.on_epoch_start(epoch)
            loader = train_loader(self.train_split, self.model, batch_size=cfg.batch_size,
                                  seed=self.config.seed, epoch=epoch, start_batch=self.state.batch,
                                  drop_last=cfg.drop_last, num_workers=cfg.num_workers,
                                  num_replicas=self.world, rank=self.rank)
            self.model.train()
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                       disable=not self.show_progress, leave=False)
            for batch in bar:
                diagnostics = self.train_step(batch, epoch)
                self.state.step += 1
                self.state.batch += 1
                if self.state.step % cfg.log_every == 0:  # logged before a stop or save
                    values = distributed.mean_over_ranks(diagnostics)
                    values["lr"] = self.scheduler.get_last_lr()[0]
                    self.logger.log("train", self.state.step, epoch, values)
                    bar.set_postfix(loss=f"{values['loss']:.4f}")
                if self.nonfinite_in_a_row >= cfg.max_nonfinite_steps:
                    raise VsekitError(
                        f"the loss or gradient was not finite for {self.nonfinite_in_a_row} "
                        f"steps in a row (up to step {self.state.step}); those steps were "
                        "skipped and the last good checkpoint kept; lower train.lr or check "
                        "the inputs for NaN")
                if self.stop_agreed if self.world > 1 else self.stop_requested:
                    self._stop()  # several ranks: after the step in which all learned of it
                if (cfg.checkpoint_every and self.state.step % cfg.checkpoint_every == 0
                        and not self.nonfinite_in_a_row):
                    self.save()
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
            for counter in (self.monitor.hits, self.monitor.count):  # every rank's anchors
                for key, value in counter.items():
                    counter[key] = distributed.all_reduce_sum(value)
            self.logger.log("epoch", self.state.step, epoch, self.monitor.summary())
            self.monitor.reset()

    def _evaluate(self, split: RetrievalSplit, progress: bool = False) -> dict[str, float]:
        """Metrics of ``split``; with several processes each encodes a share of it (the
        embeddings, and so the metrics, are those of one process)."""
        image_emb, text_emb = distributed.encode_split_sharded(
            self.model, split, batch_size=self.config.eval.batch_size, device=self.device,
            progress=progress)
        return evaluate_embeddings(image_emb, text_emb, split,
                                   chunk_size=self.config.eval.chunk_size)

    def _evaluate_dev(self, epoch: int) -> None:
        metrics = self._evaluate(self.dev_split)
        self.logger.log("dev", self.state.step, epoch, metrics)
        if metrics["rsum"] > self.state.best_rsum:
            self.state.best_rsum = metrics["rsum"]
            self.state.best_epoch = epoch
            if self.is_main:
                ckpt.save_checkpoint({"model": self.model.state_dict(), "epoch": epoch,
                                      "step": self.state.step, "dev_metrics": metrics,
                                      "config": self.config.to_dict()},
                                     self.run_dir / CHECKPOINTS / BEST)

    def _final(self) -> dict[str, Any]:
        distributed.barrier()  # rank 0 has written best.pt
        best = self.run_dir / CHECKPOINTS / BEST
        if best.is_file():
            ckpt.load_weights(self.model, ckpt.load_checkpoint(best, self.device)["model"], best)
        result: dict[str, Any] = {"best_epoch": self.state.best_epoch,
                                  "best_dev_rsum": self.state.best_rsum,
                                  "steps": self.state.step,
                                  "train_seconds": round(self.state.train_seconds, 1)}
        if self.test_split is not None:
            result["split"] = self.test_split.name
            result["metrics"] = self._evaluate(self.test_split, progress=self.show_progress)
            self.logger.log("test", self.state.step, self.state.epoch, result["metrics"])
        if self.is_main:
            write_json(self.run_dir / FINAL_METRICS, result)
        self.logger.close()
        return result


def train(config: Config, run_dir: Path, *, resume: bool = False,
          progress: bool | None = None) -> dict[str, Any]:
    """Train a run (or resume it) and return the final metrics written to the run dir.

    In a torchrun worker of a multi-process job this joins the process group (env://
    rendezvous) for the duration of the run; every rank returns the same result.
    """
    with distributed.process_group(resolve_device(config.train.device)):
        return Trainer(config, run_dir, resume=resume, progress=progress).fit()
