"""Exact resume of real training processes: SIGKILL at random steps (twice a run), Ctrl-C,
and a file-size limit that makes a checkpoint write fail, for vsepp, fne and bcls.

Every run is ``python -m vsekit train`` on the tiny synthetic config (30 steps, a checkpoint
every 3), started with this checkout's ``src`` first on PYTHONPATH. The interrupted runs are
resumed with ``vsekit train --resume RUN`` and compared with an uninterrupted run of the same
config: final checkpoint (weights, loss state, optimiser, scheduler, scaler, RNG states,
position), best checkpoint, final metrics and the metrics log, bit for bit.

Kill steps are drawn from ``VSEKIT_KILL_SEED`` (random when unset; the seed is in every
failure message). All runs of a phase run at once to keep the module near 30 s.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

import vsekit
from tests.reliability.helpers import DEMO, TINY_SETS, assert_bitwise_equal, log_rows, sets
from vsekit.config import load_config
from vsekit.data import load_splits
from vsekit.errors import VsekitError
from vsekit.labels import cache_path, minilm_encoder
from vsekit.train import checkpoint as ckpt

pytestmark = pytest.mark.slow

SRC = Path(vsekit.__file__).resolve().parents[1]
TOTAL_STEPS = 30  # TINY_SETS: 3 epochs of 10 steps
SEED = int(os.environ.get("VSEKIT_KILL_SEED") or random.SystemRandom().randrange(2**32))
LOSSES = {
    "vsepp": [],
    # FNE sampling from epoch 1 (step 11 on), statistics ready after 4 positives.
    "fne": ["loss={name: fne, queue_size: 24, warmup_epochs: 1, min_count: 4}"],
    "bcls": ["loss={name: bcls, label_cache_dir: CACHE}"],
}
FILE_LIMIT = 64 * 1024  # above best.pt (34 KB), metrics and TensorBoard; below step-N.pt


@dataclass
class Stage:
    """One process of a run: how it is interrupted (None: it runs to the end) and what it
    left behind."""

    interrupt: str | None = None  # kill (SIGKILL) | sigint | fsize (RLIMIT_FSIZE, then a save)
    upto: int = TOTAL_STEPS  # the interrupt step is drawn in [earliest, upto]
    at: int = 0
    sent: bool = False
    code: int | None = None
    stderr: str = ""
    logged: int = 0  # the last step in the log when the process ended
    finished: bool = False
    damaged: list[str] = field(default_factory=list)  # checkpoints that did not verify
    temp_files: list[str] = field(default_factory=list)


@dataclass
class Run:
    """A run directory trained by a chain of processes: the first starts the run, the others
    resume it."""

    name: str
    loss: str
    folder: Path
    stages: list[Stage]

    @property
    def interrupted(self) -> list[Stage]:
        return [stage for stage in self.stages if stage.interrupt]


def environment() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("VSEKIT_KILL_SEED", None)
    return env


def command(run: Run, cache: Path, resume: bool) -> list[str]:
    base = [sys.executable, "-m", "vsekit", "train"]
    if resume:
        return [*base, "--resume", str(run.folder), "--no-progress"]
    values = [v.replace("CACHE", str(cache)) for v in [*TINY_SETS, *LOSSES[run.loss]]]
    return [*base, "demo", *sets(values), "--run-dir", str(run.folder), "--no-progress"]


def last_logged_step(folder: Path) -> int:
    """The largest step in the run's metrics log (lines cut short are ignored)."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return 0
    steps = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (ValueError, KeyError):
            continue
    return max(steps, default=0)


def lower_priority() -> None:
    os.nice(10)  # the test process polls at normal priority, so interrupts land on time


def interrupt(proc: subprocess.Popen, how: str) -> None:
    if how == "kill":
        proc.send_signal(signal.SIGKILL)
    elif how == "sigint":
        proc.send_signal(signal.SIGINT)
    else:
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


def drive(runs: list[Run], cache: Path, rng: random.Random, log_dir: Path) -> None:
    """Run every chain at once: start each stage when the previous one ended, interrupt it
    when its log shows its drawn step (after every step the run logged before)."""
    env = environment()
    live: dict[str, tuple[subprocess.Popen, Stage, Path]] = {}
    position = dict.fromkeys((run.name for run in runs), 0)
    by_name = {run.name: run for run in runs}
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        for name, index in position.items():
            run = by_name[name]
            if name in live or index == len(run.stages):
                continue
            stage = run.stages[index]
            if stage.interrupt:
                earliest = max(4, last_logged_step(run.folder) + 3)  # a checkpoint exists at 3
                stage.at = rng.randint(earliest, max(earliest, stage.upto))
            err = log_dir / f"{name}-{index}.err"
            with open(err, "w") as handle:
                proc = subprocess.Popen(command(run, cache, index > 0), env=env,
                                        stdout=subprocess.DEVNULL, stderr=handle,
                                        preexec_fn=lower_priority)
            live[name] = (proc, stage, err)
        if not live:
            return
        for name, (proc, stage, err) in list(live.items()):
            run = by_name[name]
            if proc.poll() is None:
                if (stage.interrupt and not stage.sent
                        and last_logged_step(run.folder) >= stage.at):
                    interrupt(proc, stage.interrupt)
                    stage.sent = True
                continue
            stage.code, stage.stderr = proc.returncode, err.read_text()
            stage.logged = last_logged_step(run.folder)
            stage.finished = (run.folder / "final_metrics.json").exists()
            stage.damaged = damaged_checkpoints(run.folder)
            stage.temp_files = [p.name for p in (run.folder / "checkpoints").iterdir()
                                if ".tmp-" in p.name]
            del live[name]
            position[name] += 1
        time.sleep(0.002)
    raise AssertionError(f"training processes still running after 600 s: {sorted(live)}")


def damaged_checkpoints(folder: Path) -> list[str]:
    """Names of the checkpoints in ``folder`` that do not load and verify."""
    damaged = []
    for path in [*ckpt.step_checkpoints(folder / "checkpoints"), folder / "checkpoints/best.pt"]:
        try:
            if path.exists():
                ckpt.load_checkpoint(path)
        except VsekitError:
            damaged.append(path.name)
    return damaged


def write_label_cache(cache: Path) -> None:
    """Random unit caption embeddings where bcls looks for its MiniLM cache (the resume is
    what is tested here, not the labels; this spares loading the sentence encoder)."""
    captions = load_splits(load_config(DEMO, TINY_SETS).data)["train"].captions
    path = cache_path(captions, cache, minilm_encoder())
    path.parent.mkdir(parents=True)
    emb = np.random.default_rng(0).standard_normal((len(captions), 32)).astype(np.float32)
    np.save(path, emb / np.linalg.norm(emb, axis=1, keepdims=True))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Uninterrupted runs of vsepp, fne and bcls, and three interrupted ones: vsepp killed,
    then Ctrl-C'd, then failing a checkpoint write; fne killed twice; bcls killed once."""
    root = tmp_path_factory.mktemp("kills")
    cache = root / "cache"
    write_label_cache(cache)
    chains = {"vsepp": [Stage("kill", 10), Stage("sigint", 17), Stage("fsize", 24), Stage()],
              "fne": [Stage("kill", 14), Stage("kill", 23), Stage()],
              "bcls": [Stage("kill", 20), Stage()]}
    runs = [Run(f"full-{loss}", loss, root / f"full-{loss}", [Stage()]) for loss in LOSSES]
    runs += [Run(loss, loss, root / loss, stages) for loss, stages in chains.items()]
    drive(runs, cache, random.Random(SEED), root)
    return {run.name: run for run in runs}


def final_state(folder: Path) -> tuple[str, dict]:
    path, state = ckpt.latest_good_checkpoint(folder / "checkpoints")
    state["progress"].pop("train_seconds")  # wall time, the only thing allowed to differ
    return path.name, state


def context(run: Run) -> str:
    cuts = [(stage.interrupt, stage.at, stage.logged) for stage in run.interrupted]
    return f"VSEKIT_KILL_SEED={SEED}, {run.name}: (interrupt, at step, last logged) {cuts}"


def assert_same_as_uninterrupted(run: Run, full: Run, cut_at: list[int]) -> None:
    """Final and best checkpoints, final metrics and the log of ``run`` equal ``full``'s;
    ``cut_at``: the steps around which the run was interrupted."""
    where = context(run)
    assert full.stages[0].code == 0, (where, full.stages[0].stderr)
    assert run.stages[-1].code == 0, (where, run.stages[-1].stderr)
    for stage in run.interrupted:
        assert not stage.finished and stage.logged < TOTAL_STEPS, where  # cut mid-run
        assert stage.damaged == [], where  # every checkpoint left on disk verifies
    name_a, a = final_state(full.folder)
    name_b, b = final_state(run.folder)
    assert name_a == name_b == f"step-{TOTAL_STEPS}.pt", where
    assert_bitwise_equal(a, b, where)  # model, loss state, optimiser, scheduler, scaler, RNGs
    best = [ckpt.load_checkpoint(f / "checkpoints" / "best.pt") for f in (full.folder, run.folder)]
    assert_bitwise_equal(best[0], best[1], where)
    metrics = [json.loads((f / "final_metrics.json").read_text())
               for f in (full.folder, run.folder)]
    for m in metrics:
        m.pop("train_seconds")
    assert metrics[0] == metrics[1], where
    # The log: every row equal to the uninterrupted run's, none lost, none twice.
    rows_a, rows_b = log_rows(full.folder), log_rows(run.folder)
    assert rows_b == rows_a, (where, [r for r in rows_a if r not in rows_b],
                              [r for r in rows_b if r not in rows_a])
    assert not [p for p in (run.folder / "checkpoints").iterdir() if ".tmp-" in p.name], where


@pytest.mark.parametrize("loss", list(LOSSES))
def test_killed_runs_resume_bitwise_identical(runs: dict[str, Run], loss: str) -> None:
    """SIGKILL at random steps (vsepp once, fne twice, bcls once), then ``--resume``."""
    run = runs[loss]
    kills = [stage for stage in run.interrupted if stage.interrupt == "kill"]
    assert kills and all(stage.code == -signal.SIGKILL for stage in kills), context(run)
    assert_same_as_uninterrupted(run, runs[f"full-{loss}"],
                                 [stage.logged for stage in run.interrupted])


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(runs: dict[str, Run]) -> None:
    run = runs["vsepp"]
    stage = next(stage for stage in run.stages if stage.interrupt == "sigint")
    assert stage.code == 130, (context(run), stage.stderr)
    lines = stage.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stage.stderr, (context(run), stage.stderr)
    assert lines[0].startswith("interrupted: checkpoint ") and lines[0].endswith(
        f"continue with: vsekit train --resume {run.folder}"), lines[0]
    saved = int(lines[0].split(" saved at step ")[1].split(";")[0])
    assert stage.at <= saved < TOTAL_STEPS, context(run)


def test_failed_checkpoint_write_keeps_the_previous_one(runs: dict[str, Run]) -> None:
    """A file-size limit set on the live process makes its next step checkpoint write fail
    (EFBIG, as a full disk would): one line naming that file, exit 2, no temporary file left,
    every checkpoint on disk verified; the resumed run loses nothing (bitwise test above)."""
    run = runs["vsepp"]
    stage = next(stage for stage in run.stages if stage.interrupt == "fsize")
    assert stage.code == 2 and stage.temp_files == [], (context(run), stage.stderr)
    lines = stage.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: File too large ("), (context(run),
                                                                                lines)
    failed = Path(lines[0].split("(")[1].split(")")[0])
    assert failed.parent == run.folder / "checkpoints" and failed.name.startswith("step-")
    assert int(failed.stem.removeprefix("step-")) > stage.at - 1, context(run)
