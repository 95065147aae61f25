"""Exact resume of the metrics log: no row lost or doubled by a Ctrl-C, a kill during an
epoch end, or a mid-epoch resume (the false-negative monitor's counts are checkpointed).
Weights, loss state and final metrics resume bit for bit (test_kill_resume.py).
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.helpers import log_rows, tiny_trainer


class Killed(BaseException):
    """The simulated end of the process."""


@pytest.fixture(scope="module")
def full_rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    run = tmp_path_factory.mktemp("full") / "run"
    tiny_trainer(run).fit()
    return log_rows(run)


@pytest.fixture(scope="module")
def ctrl_c_rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The log of a tiny run Ctrl-C'd during step 5 (mid-epoch 0), then resumed."""
    run = tmp_path_factory.mktemp("ctrl_c") / "run"
    trainer = tiny_trainer(run)
    real_step = trainer.train_step

    def step_then_ctrl_c(batch: Any, epoch: int) -> dict:
        out = real_step(batch, epoch)
        if trainer.state.step == 4:
            signal.raise_signal(signal.SIGINT)
        return out

    trainer.train_step = step_then_ctrl_c
    with pytest.raises(KeyboardInterrupt, match="saved at step 5"):
        trainer.fit()
    tiny_trainer(run, resume=True).fit()
    return log_rows(run)


def keys(rows: list[dict]) -> list[tuple[str, int]]:
    return [(row["kind"], row["step"]) for row in rows]


def test_ctrl_c_loses_no_log_row(full_rows: list[dict], ctrl_c_rows: list[dict]) -> None:
    assert keys(ctrl_c_rows) == keys(full_rows)


def test_mid_epoch_resume_keeps_the_false_negative_monitor(full_rows: list[dict],
                                                           ctrl_c_rows: list[dict]) -> None:
    def epochs(rows: list[dict]) -> list[dict]:
        return [row for row in rows if row["kind"] == "epoch"]

    assert epochs(ctrl_c_rows) == epochs(full_rows)


def test_kill_during_the_epoch_end_duplicates_no_row(tmp_path: Path,
                                                     full_rows: list[dict]) -> None:
    """Killed during the last dev evaluation, after the step-30 checkpoint (taken before the
    epoch ended) and the epoch row: the resumed run must not log that epoch row twice."""
    run = tmp_path / "run"
    trainer = tiny_trainer(run)
    real_evaluate = trainer._evaluate_dev

    def evaluate_or_die(epoch: int) -> None:
        if trainer.state.step == 30:
            raise Killed
        real_evaluate(epoch)

    trainer._evaluate_dev = evaluate_or_die
    with pytest.raises(Killed):
        trainer.fit()
    tiny_trainer(run, resume=True).fit()
    assert keys(log_rows(run)) == keys(full_rows)
