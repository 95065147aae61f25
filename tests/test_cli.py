"""The CLI: one-line errors with exit code 2, help texts, and an end-to-end tiny run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vsekit.cli import main

TINY = ["data.n_train=64", "data.n_dev=16", "data.n_test=16", "train.epochs=2",
        "train.batch_size=32", "train.log_every=1", "model.embed_dim=32",
        "model.image.width=8", "model.text.word_dim=16", "train.progress=false"]


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, pattern: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert pattern in lines[0], lines[0]


def write_precomp(root: Path, n_img: int, caps: list[str], feats: np.ndarray | None = None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev", "test"):
        data = feats if feats is not None else np.random.rand(n_img, 8).astype(np.float32)
        np.save(root / f"{split}_ims.npy", data)
        (root / f"{split}_caps.txt").write_text("\n".join(caps) + "\n", encoding="utf-8")


@pytest.mark.parametrize(("args", "pattern"), [
    (["train", "missing.yaml"], "not found"),
    (["train", "no_such_recipe"], "no config file or built-in recipe"),
    (["train", "demo", "--set", "loss.name=nope"], "unknown loss 'nope'"),
    (["train", "demo", "--set", "trian.epochs=1"], "unknown key 'trian'"),
    (["train", "demo", "--set", "train.batch_size=-1"], "batch_size must be at least 1"),
    (["train", "demo", "--set", "model.image.type=resnet"], "unknown image encoder 'resnet'"),
    (["train"], "needs a CONFIG"),
    (["eval", "not_a_run"], "not a vsekit run directory"),
    (["train", "--resume", "not_a_run"], "not a vsekit run directory"),
    (["compare", "not_a_run"], "has no final_metrics.json"),
])
def test_bad_input_is_one_line(tmp_path: Path, monkeypatch, capsys, args, pattern) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, pattern)


def test_bad_data_files(tmp_path: Path, capsys) -> None:
    caps = [f"caption {i}" for i in range(7)]
    write_precomp(tmp_path / "odd", 2, caps)
    code, _, err = run_cli(["train", "demo", "--set", "data={format: precomp, root: "
                            f"{tmp_path / 'odd'}}}", "--set", "model.image.type=projection",
                            "--run-dir", str(tmp_path / "r1")], capsys)
    assert_one_line_error(code, err, "7")
    feats = np.random.rand(2, 8).astype(np.float32)
    feats[1, 3] = np.nan
    write_precomp(tmp_path / "nan", 2, caps[:4], feats)
    code, _, err = run_cli(["train", "demo", "--set", "data={format: precomp, root: "
                            f"{tmp_path / 'nan'}}}", "--set", "model.image.type=projection",
                            "--run-dir", str(tmp_path / "r2")], capsys)
    assert_one_line_error(code, err, "NaN")


def test_features_errors(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(["features", str(empty), "--out", str(tmp_path / "f.npy")], capsys)
    assert_one_line_error(code, err, "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"not a jpeg")
    code, _, err = run_cli(["features", str(broken), "--out", str(tmp_path / "f.npy"),
                           "--no-progress"], capsys)
    assert_one_line_error(code, err, "a.jpg")


def test_help_and_version(capsys) -> None:
    for command in ([], ["train"], ["eval"], ["demo"], ["features"], ["recipes"]):
        with pytest.raises(SystemExit) as info:
            main([*command, "--help"])
        assert info.value.code == 0
        assert "usage: vsekit" in capsys.readouterr().out
    assert run_cli(["recipes"], capsys)[1].count("demo") >= 1


@pytest.mark.slow
def test_train_eval_resume_end_to_end(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    code, out, err = run_cli(["train", "demo", "--run-dir", str(run_dir),
                              *sum((["--set", s] for s in TINY), [])], capsys)
    assert code == 0, err
    assert "rsum" in out and str(run_dir) in out
    final = json.loads((run_dir / "final_metrics.json").read_text())
    assert set(final["metrics"]) >= {"i2t_r1", "t2i_r10", "rsum", "rel_rsum"}
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in rows} == {"train", "dev", "test", "epoch"}
    assert all("true_fn_rate_i2t" in r for r in rows if r["kind"] == "epoch")
    assert list((run_dir / "tensorboard").iterdir())
    code, out, _ = run_cli(["eval", str(run_dir), "--json"], capsys)
    assert code == 0
    assert json.loads(out)["rsum"] == pytest.approx(final["metrics"]["rsum"], abs=1e-6)
    assert set(final["metrics"]) >= {"graded_i2t_kendall_tau", "graded_t2i_ndcg10"}
    code, out, _ = run_cli(["eval", str(run_dir), "--json", "--pseudo-labels", "minilm",
                            "--label-cache-dir", str(tmp_path / "cache"), "--no-progress"], capsys)
    assert code == 0
    graded = json.loads(out)
    assert -1 <= graded["labels_t2i_kendall_tau"] <= 1 and 0 <= graded["pseudo_i2t_ndcg50"] <= 100
    code, out, _ = run_cli(["compare", str(run_dir)], capsys)
    assert code == 0 and out.splitlines()[0].startswith("| run | runs | i2t R@1")
    assert f"| {run_dir.name} | 1 | {final['metrics']['i2t_r1']:.1f} |" in out
    # A finished run resumed does nothing more and gives the same final metrics.
    code, _, err = run_cli(["train", "--resume", str(run_dir)], capsys)
    assert code == 0, err
    again = json.loads((run_dir / "final_metrics.json").read_text())
    assert again["metrics"] == final["metrics"]
    # Refuses to overwrite an existing run.
    code, _, err = run_cli(["train", "demo", "--run-dir", str(run_dir)], capsys)
    assert_one_line_error(code, err, "already holds a run")


def test_no_traceback_in_a_real_process(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "vsekit", "train", str(tmp_path / "x.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr


def test_labels_build_caches_once(tmp_path: Path, capsys) -> None:
    args = ["labels", "build", "demo", "--cache-dir", str(tmp_path / "cache"), "--no-progress",
            "--set", "data.n_train=6", "--set", "data.n_dev=2", "--set", "data.n_test=2"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    files = list((tmp_path / "cache").glob("minilm-*.npy"))
    assert len(files) == 1 and str(files[0]) in out and "(30, 384)" in out
    stamp = files[0].stat().st_mtime_ns
    assert run_cli(args, capsys)[0] == 0
    assert files[0].stat().st_mtime_ns == stamp  # reused, not rebuilt


@pytest.mark.parametrize(("extra", "pattern"), [
    (["--nproc", "3", "--set", "train.device=cpu"],
     "train.batch_size 32 is the global batch and must be divisible by --nproc 3"),
    (["--nproc", "2", "--set", "train.device=cuda"], "one GPU per process"),
])
def test_nproc_errors_before_starting_torchrun(tmp_path: Path, monkeypatch, capsys, extra,
                                               pattern) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    monkeypatch.setattr("torch.distributed.run.run", None)  # nothing may be started
    args = ["train", "demo", "--run-dir", "run", *[f"--set={s}" for s in TINY], *extra]
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, pattern)


def test_nproc_on_an_existing_run_dir_is_one_error(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    monkeypatch.setattr("torch.distributed.run.run", None)
    code, _, err = run_cli(["train", "demo", "--run-dir", "run", "--nproc", "2"], capsys)
    assert_one_line_error(code, err, "already holds a run")


def test_nproc_runs_torchrun_with_the_same_run(tmp_path: Path, monkeypatch, capsys) -> None:
    """This process becomes torchrun's agent, with the worker arguments."""
    from torch.distributed import run as torchrun

    started = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torchrun, "run", started.append)
    code = main(["train", "demo", "--run-dir", "run", "--set", "train.epochs=1", "--nproc", "4",
                 "--no-progress"])
    assert code == 0 and len(started) == 1
    args = started[0]
    assert (args.standalone, args.nproc_per_node, args.module, args.training_script) == (
        True, "4", True, "vsekit")
    assert args.training_script_args == ["train", "demo", "--run-dir", "run", "--set",
                                         "train.epochs=1", "--no-progress"]
    assert main(["train", "--resume", "old", "--nproc", "2"]) == 2  # no such run: checked first
    assert len(started) == 1


@pytest.mark.parametrize(("codes", "expected"), [([2, 2], 2), ([130], 130), ([1, 2], None)])
def test_nproc_worker_failures_become_exit_codes(tmp_path: Path, monkeypatch, capsys, codes,
                                                 expected) -> None:
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    def failing(args) -> None:
        raise ChildFailedError("vsekit", {rank: ProcessFailure(rank, 100 + rank, code, "")
                                          for rank, code in enumerate(codes)})

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torchrun, "run", failing)
    code, _, err = run_cli(["train", "demo", "--run-dir", "run", "--nproc", "2"], capsys)
    if expected is None:
        assert_one_line_error(code, err, "2 of 2 worker processes failed (exit codes 1, 2)")
    else:
        assert code == expected and err == ""
