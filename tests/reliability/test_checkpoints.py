"""Atomic, verified checkpoints under kills, full disks and damage, in process.

A kill is simulated by letting every disk operation of :mod:`vsekit.train.checkpoint` from the
k-th on raise (so nothing after it reaches the disk, and no cleanup runs either), for every k;
a full disk by one operation failing with ENOSPC. The subprocess tests in
``test_kill_resume.py`` do the same with real signals and a real file-size limit.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.reliability.helpers import (
    TINY_SETS,
    assert_bitwise_equal,
    assert_one_line_error,
    run_cli,
    sets,
    tiny_trainer,
    tree,
)
from vsekit.errors import VsekitError
from vsekit.train import checkpoint as ckpt


class Killed(BaseException):
    """The simulated end of the process."""


class DiskFaults:
    """Wraps the disk operations checkpoint.py uses (open for writing, write, fsync, replace,
    unlink) and fails the ``fail_at``-th one and, for a kill, every later one.

    ``fault="kill"``: raise :class:`Killed`; an fsync that is killed first cuts its file to
    half (data not yet synced is lost); a write that is killed writes half its bytes.
    ``fault="enospc"``: that one operation raises ``OSError(ENOSPC)`` (a write writes half
    first), later ones succeed; ``fault="ctrl-c"``: the same with ``KeyboardInterrupt``.
    """

    def __init__(self, fail_at: float, fault: str = "kill") -> None:
        self.fail_at, self.fault, self.count = fail_at, fault, 0
        self.real_open, self.real_fsync = open, os.fsync
        self.real_replace, self.real_unlink = os.replace, Path.unlink

    def _fails(self) -> bool:
        self.count += 1
        if self.fault == "kill":
            return self.count > self.fail_at
        return self.count == self.fail_at + 1

    def _raise(self) -> None:
        if self.fault == "kill":
            raise Killed
        if self.fault == "ctrl-c":
            raise KeyboardInterrupt
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def open(self, file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "w" not in mode:
            return self.real_open(file, mode, *args, **kwargs)
        if self._fails():
            self._raise()
        return _Handle(self.real_open(file, mode, *args, **kwargs), self)

    def fsync(self, fd: int) -> None:
        if self._fails():
            if self.fault == "kill" and stat.S_ISREG(os.fstat(fd).st_mode):
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
            self._raise()
        self.real_fsync(fd)

    def replace(self, src: Any, dst: Any) -> None:
        if self._fails():
            self._raise()
        self.real_replace(src, dst)

    def unlink(self, path: Path, missing_ok: bool = False) -> None:
        if self._fails():
            self._raise()
        self.real_unlink(path, missing_ok=missing_ok)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(ckpt, "open", self.open, raising=False)
        monkeypatch.setattr(ckpt.os, "fsync", self.fsync)
        monkeypatch.setattr(ckpt.os, "replace", self.replace)
        monkeypatch.setattr(Path, "unlink", lambda path, missing_ok=False: self.unlink(
            path, missing_ok))


class _Handle:
    """A writable file whose ``write`` is one of the counted operations."""

    def __init__(self, handle: Any, faults: DiskFaults) -> None:
        self.handle, self.faults = handle, faults

    def write(self, data: bytes) -> int:
        if self.faults._fails():
            self.handle.write(data[: len(data) // 2])
            self.handle.flush()
            self.faults._raise()
        return self.handle.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)

    def __enter__(self) -> _Handle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


def state(value: float, size: int = 64) -> dict:
    return {"model": {"w": torch.full((size,), value)}, "step": int(value)}


def count_operations(folder: Path, save: Any, monkeypatch: pytest.MonkeyPatch) -> int:
    """How many disk operations ``save()`` performs (run on a scratch copy of ``folder``)."""
    scratch = folder.parent / "scratch"
    shutil.copytree(folder, scratch)
    faults = DiskFaults(float("inf"))
    with monkeypatch.context() as patch:
        faults.install(patch)
        save(scratch)
    shutil.rmtree(scratch)
    return faults.count


@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "overwrite"])
def test_kill_at_every_point_of_a_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       existing: bool) -> None:
    """Whenever the process dies while saving, the file on disk verifies and is the old or
    the new checkpoint, and the next save clears what the killed one left behind."""
    base = tmp_path / "base"
    base.mkdir()
    if existing:
        ckpt.save_checkpoint(state(1.0), base / "best.pt")
    total = count_operations(base, lambda f: ckpt.save_checkpoint(state(2.0), f / "best.pt"),
                             monkeypatch)
    assert total >= 6
    outcomes = set()
    for kill_at in range(total + 1):
        folder = tmp_path / f"kill-{kill_at}"
        shutil.copytree(base, folder)
        with monkeypatch.context() as patch:
            DiskFaults(kill_at).install(patch)
            with contextlib.suppress(Killed):
                ckpt.save_checkpoint(state(2.0), folder / "best.pt")
        if (folder / "best.pt").exists():
            value = ckpt.load_checkpoint(folder / "best.pt")["step"]  # verified, never damaged
            outcomes.add(value)
            assert value == 2 or (existing and value == 1), kill_at
        else:
            assert not existing, kill_at  # an existing checkpoint never disappears
            outcomes.add(None)
        if kill_at == total:
            assert ckpt.load_checkpoint(folder / "best.pt")["step"] == 2
        ckpt.save_checkpoint(state(3.0), folder / "best.pt")
        ckpt.remove_stale_files(folder)
        assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "best.pt.sha256"]
    assert outcomes == ({1, 2} if existing else {None, 2})


def test_kill_during_step_saves_then_resume(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed while writing step-3 (at every point): the newest good checkpoint is step-3 or
    step-2, and pruning after the next save leaves exactly the last k and nothing else."""
    base = tmp_path / "base"
    for step in (1, 2):
        ckpt.save_checkpoint(state(float(step)), base / f"step-{step}.pt")
    total = count_operations(base, lambda f: ckpt.save_checkpoint(state(3.0), f / "step-3.pt"),
                             monkeypatch)
    for kill_at in range(total + 1):
        folder = tmp_path / f"kill-{kill_at}"
        shutil.copytree(base, folder)
        with monkeypatch.context() as patch:
            DiskFaults(kill_at).install(patch)
            with contextlib.suppress(Killed):
                ckpt.save_checkpoint(state(3.0), folder / "step-3.pt")
        path, loaded = ckpt.latest_good_checkpoint(folder)
        assert (path.name, loaded["step"]) in (("step-3.pt", 3), ("step-2.pt", 2)), kill_at
        if kill_at == total:
            assert path.name == "step-3.pt"
        ckpt.save_checkpoint(state(4.0), folder / "step-4.pt")
        ckpt.prune_checkpoints(folder, keep=2)
        names = sorted(p.name for p in folder.iterdir())
        assert names == sorted([f"{path.name}", f"{path.name}.sha256", "step-4.pt",
                                "step-4.pt.sha256"]), kill_at


@pytest.mark.parametrize("fault", ["enospc", "ctrl-c"])
@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "overwrite"])
def test_full_disk_or_ctrl_c_at_every_write_keeps_the_previous_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool, fault: str) -> None:
    """ENOSPC (or a second Ctrl-C) at any operation of a save: an OSError naming the file (or
    the KeyboardInterrupt), the previous checkpoint and its checksum byte for byte as before,
    no temporary file left."""
    path = tmp_path / "best.pt"
    if existing:
        ckpt.save_checkpoint(state(1.0, size=4096), path)
    before = tree(tmp_path)
    total = count_operations(tmp_path, lambda f: ckpt.save_checkpoint(
        state(2.0, size=4096), f / "best.pt"), monkeypatch)
    failed = 0
    for fail_at in range(total):
        with monkeypatch.context() as patch:
            DiskFaults(fail_at, fault).install(patch)
            try:
                ckpt.save_checkpoint(state(2.0, size=4096), path)
            except OSError as exc:
                failed += 1
                assert exc.errno == errno.ENOSPC and exc.filename in (str(path),
                                                                       str(path) + ".sha256")
            except KeyboardInterrupt:
                failed += 1
        after = tree(tmp_path)
        if after != before:  # the failure came after the commit: the new checkpoint is whole
            assert ckpt.load_checkpoint(path)["step"] == 2, fail_at
            if existing:  # back to the old one for the next round
                ckpt.save_checkpoint(state(1.0, size=4096), path)
            else:
                path.unlink()
                ckpt.checksum_path(path).unlink()
            assert tree(tmp_path) == before
        assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert failed == total  # every fault surfaces as an error, none is swallowed


def test_oserror_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.os, "fsync", no_space)
    with pytest.raises(OSError) as info:
        ckpt.atomic_write_bytes(tmp_path / "x.json", b"{}")
    assert info.value.filename == str(tmp_path / "x.json") and info.value.errno == errno.ENOSPC


# ---- damage is detected, one line naming the file -----------------------------------------


def test_every_truncation_and_byte_flip_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "step-7.pt"
    ckpt.save_checkpoint(state(7.0, size=256), path)
    good = path.read_bytes()
    cuts = range(0, len(good), max(1, len(good) // 97))
    flips = range(0, len(good), max(1, len(good) // 211))
    for data in [good[:n] for n in cuts] + [
            good[:i] + bytes([good[i] ^ 0x01]) + good[i + 1:] for i in flips]:
        path.write_bytes(data)
        with pytest.raises(VsekitError) as info:
            ckpt.load_checkpoint(path)
        message = str(info.value)
        assert "\n" not in message and f"'{path}'" in message and "corrupted" in message


def test_checksum_file_damage(tmp_path: Path) -> None:
    path = tmp_path / "step-1.pt"
    ckpt.save_checkpoint(state(1.0), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    sidecar = ckpt.checksum_path(path)
    sidecar.write_text(f"{digest}  step-1.pt\n")  # sha256sum's own format is accepted
    assert ckpt.load_checkpoint(path)["step"] == 1
    for garbage in ("", "not a digest\n", "0" * 64 + "\n", "\xff" * 5000):
        sidecar.write_text(garbage, encoding="utf-8", errors="surrogateescape")
        with pytest.raises(VsekitError, match="does not match step-1.pt.sha256"):
            ckpt.load_checkpoint(path)
    sidecar.unlink()  # without its checksum a checkpoint is read unverified
    assert ckpt.load_checkpoint(path)["step"] == 1


def test_fallback_warns_and_pruning_keeps_the_checkpoint_written_last(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Resume falls back past a damaged step-10 to step-5 with a warning; with keep_last=1,
    the next save (step-6) is never pruned in favour of the damaged step-10."""
    for step in (5, 10):
        ckpt.save_checkpoint(state(float(step)), tmp_path / f"step-{step}.pt")
    (tmp_path / "step-10.pt").write_bytes(b"\0" * 100)
    with caplog.at_level(logging.WARNING, logger="vsekit.train.checkpoint"):
        path, loaded = ckpt.latest_good_checkpoint(tmp_path)
    assert path.name == "step-5.pt" and loaded["step"] == 5
    assert "step-10.pt" in caplog.text and "using step-5.pt instead" in caplog.text
    ckpt.save_checkpoint(state(6.0), tmp_path / "step-6.pt")
    os.utime(tmp_path / "step-10.pt", ns=(1, 1))  # the damaged file is older than step-6
    ckpt.prune_checkpoints(tmp_path, keep=1)
    assert ckpt.latest_good_checkpoint(tmp_path)[1]["step"] == 6


# ---- numeric safety of what is written ------------------------------------------------------


@pytest.mark.parametrize("where", ["model", "loss", "optimizer"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_state_is_never_written(tmp_path: Path, where: str, value: float) -> None:
    bad = {"model": {"w": torch.ones(4)}, "loss": {"queue": torch.zeros(2, 3)},
           "optimizer": {"state": {0: {"exp_avg": torch.ones(4)}}}, "rng": torch.ones(3)}
    target = {"model": bad["model"]["w"], "loss": bad["loss"]["queue"],
              "optimizer": bad["optimizer"]["state"][0]["exp_avg"]}[where]
    target.view(-1)[1] = value
    with pytest.raises(VsekitError, match=f"not writing checkpoint .* {where}"):
        ckpt.save_checkpoint(bad, tmp_path / "step-1.pt")
    assert list(tmp_path.iterdir()) == []


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return ckpt.latest_good_checkpoint(run_dir / "checkpoints")[1]["model"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("full") / "run"
    return run, tiny_trainer(run).fit()


def test_state_going_nonfinite_stops_the_run_before_any_bad_checkpoint(
        tmp_path: Path) -> None:
    """A BatchNorm running mean turns NaN at step 5 while the loss stays finite (training
    uses batch statistics): the save at step 6 is refused with one line naming the buffer."""
    trainer = tiny_trainer(tmp_path / "run")
    real_step = trainer.train_step
    name, buffer = next((n, b) for n, b in trainer.model.named_buffers() if "running_mean" in n)

    def step_then_poison(batch: Any, epoch: int) -> dict:
        out = real_step(batch, epoch)
        if trainer.state.step == 4:  # the 5th step (state.step counts finished steps)
            buffer[0] = float("nan")
        return out

    trainer.train_step = step_then_poison
    with pytest.raises(VsekitError, match=rf"not writing checkpoint .*step-6.pt'?: model\.{name}"):
        trainer.fit()
    steps = ckpt.step_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in steps] == ["step-3.pt"]
    for path in steps:
        assert ckpt.first_nonfinite(ckpt.load_checkpoint(path)) is None


def test_nonfinite_steps_in_a_row_are_counted_then_stop(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two NaN steps, a good one (the count restarts), then three in a row: stop at the third
    with the count and the step in the message; the NaN steps changed no weight."""
    trainer = tiny_trainer(tmp_path / "run", "train.max_nonfinite_steps=3")
    real = trainer.loss_fn.forward
    nan_steps = {2, 3, 5, 6, 7}
    weights: dict[int, dict[str, torch.Tensor]] = {}

    def loss_with_nans(*args: Any, **kwargs: Any) -> Any:
        weights[trainer.state.step] = {k: v.detach().clone()
                                       for k, v in trainer.model.named_parameters()}
        out = real(*args, **kwargs)
        if trainer.state.step + 1 in nan_steps:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(trainer.loss_fn, "forward", loss_with_nans)
    with pytest.raises(VsekitError, match=r"not finite for 3 steps in a row \(up to step 7\)"):
        trainer.fit()
    after = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    for step in (2, 3, 5, 6):  # weights before a NaN step = weights before the next step
        assert_bitwise_equal(weights[step - 1], weights[step])
    assert_bitwise_equal(weights[6], after)
    for path in ckpt.step_checkpoints(tmp_path / "run" / "checkpoints"):
        assert ckpt.first_nonfinite(ckpt.load_checkpoint(path)) is None


def test_resume_falls_back_past_a_damaged_checkpoint_bitwise(
        tmp_path: Path, uninterrupted: tuple[Path, dict]) -> None:
    full_run, full_result = uninterrupted
    run = tmp_path / "run"
    tiny_trainer(run, "train.max_steps=8").fit()  # checkpoints at 3, 6 and 8 (kept: 6, 8)
    (run / "checkpoints" / "step-8.pt").write_bytes(b"\0" * 1000)
    resumed = tiny_trainer(run, resume=True)
    assert resumed.resumed_from.name == "step-6.pt" and resumed.state.step == 6
    result = resumed.fit()
    assert_bitwise_equal(final_weights(full_run), final_weights(run))
    assert result["metrics"] == full_result["metrics"]


def test_full_disk_during_training_via_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture,
                                           uninterrupted: tuple[Path, dict]) -> None:
    """The disk fills up while step-12 is written: one line naming the file, exit 2; the
    earlier checkpoints are byte for byte intact; resuming later finishes bitwise identical."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    real_open = open

    def full_disk_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "w" in mode and Path(file).name.startswith(".step-12.pt.tmp-"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(file, mode, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(ckpt, "open", full_disk_open, raising=False)
        before = {}
        real_save = ckpt.save_checkpoint

        def record_then_save(state: dict, path: Path) -> None:
            if path.name == "step-12.pt":
                before.update(tree(run / "checkpoints"))
            real_save(state, path)

        patch.setattr(ckpt, "save_checkpoint", record_then_save)
        args = ["train", "demo", *sets(TINY_SETS), "--run-dir", str(run), "--no-progress"]
        code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, f"No space left on device ({run}/checkpoints/step-12.pt)")
    assert tree(run / "checkpoints") == before and "step-10.pt" in before
    code, _, _ = run_cli(["train", "--resume", str(run), "--no-progress"], capsys)
    assert code == 0
    assert_bitwise_equal(final_weights(uninterrupted[0]), final_weights(run))
