"""`vsekit eval` on a run directory: protocols, JSON output, the embeddings cache, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vsekit.cli import build_parser, main

WORDS = ["a", "dog", "cat", "runs", "on", "the", "grass", "red", "blue", "small", "big", "man"]


def write_split(root: Path, name: str, n_images: int, rng: np.random.Generator) -> None:
    np.save(root / f"{name}_ims.npy", rng.standard_normal((n_images, 8)).astype(np.float32))
    lines = [" ".join(rng.choice(WORDS, 4)) for _ in range(5 * n_images)]
    (root / f"{name}_caps.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch run on precomp data whose test split is F30K-sized (1,000 × 5)."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for name, n_images in (("train", 40), ("dev", 10), ("test", 1000)):
        write_split(root, name, n_images, rng)
    run = tmp_path_factory.mktemp("runs") / "run"
    overrides = [f"data={{format: precomp, root: {root}}}", "model.image.type=projection",
                 "model.embed_dim=16", "model.text.word_dim=8", "train.epochs=1",
                 "train.batch_size=32", "train.progress=false"]
    code = main(["train", "demo", "--run-dir", str(run), *sum((["--set", o] for o in overrides),
                                                              [])])
    assert code == 0
    return run


def eval_json(run: Path, capsys: pytest.CaptureFixture, *args: str) -> dict:
    capsys.readouterr()
    assert main(["eval", str(run), "--json", "--no-progress", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_protocols_json_and_cache(run_dir: Path, capsys) -> None:
    final = json.loads((run_dir / "final_metrics.json").read_text())["metrics"]
    whole = eval_json(run_dir, capsys)
    assert whole["protocol"] == "any" and whole["rsum"] == pytest.approx(final["rsum"])
    cache = run_dir / "embeddings" / "test-best.npz"
    stamp = cache.stat().st_mtime_ns
    f30k = eval_json(run_dir, capsys, "--protocol", "f30k-1k")
    assert cache.stat().st_mtime_ns == stamp  # embeddings reused, not encoded again
    assert f30k == json.loads((run_dir / "eval_test_f30k-1k.json").read_text())
    assert f30k["rsum"] == whole["rsum"] and f30k["streamed"] is False and "folds" not in f30k
    streamed = eval_json(run_dir, capsys, "--protocol", "f30k-1k", "--stream")
    assert streamed["streamed"] is True
    assert {k: streamed[k] for k in final} == {k: f30k[k] for k in final}
    eval_json(run_dir, capsys, "--checkpoint", "last", "--no-cache")
    assert sorted(p.name for p in cache.parent.iterdir()) == ["test-best.npz"]


def test_paper_table_is_printed(run_dir: Path, capsys) -> None:
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--protocol", "f30k-1k", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "protocol f30k-1k" in out and "rsum" in out and "image→text" in out
    assert f"written to {run_dir / 'eval_test_f30k-1k.json'}" in out


@pytest.mark.parametrize(("args", "pattern"), [
    (["--protocol", "coco-5k"], "needs 5,000 images with 5 captions each"),
    (["--protocol", "coco-1k"], "testall"),
    (["--protocol", "f30k"], "unknown evaluation protocol 'f30k'"),
    (["--eccv"], "use --protocol coco-5k"),
    (["--split", "nope"], "has no split 'nope'"),
])
def test_bad_requests_are_one_line_errors(run_dir: Path, capsys, args, pattern) -> None:
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--no-progress", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0]


def test_help_lists_every_protocol() -> None:
    from vsekit.eval import PROTOCOLS

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    text = sub.choices["eval"].format_help()
    assert all(name in text for name in PROTOCOLS.names())
