"""Shared pieces of the reliability tests: miniature valid datasets of every format (the
hostile corpus swaps one file of them), the tiny training settings, CLI and file-tree helpers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vsekit.cli import main
from vsekit.config import load_config
from vsekit.train.trainer import Trainer

DEMO = Path(__file__).resolve().parents[2] / "src" / "vsekit" / "configs" / "demo.yaml"

#: ``--set`` values that make a run of the ``demo`` recipe tiny: 40 synthetic train images × 2
#: captions, batches of 8 (10 steps an epoch), 3 epochs, a checkpoint every 3 steps.
TINY_SETS = ["seed=3", "data.n_train=40", "data.n_dev=8", "data.n_test=8",
             "data.captions_per_image=2", "model.embed_dim=16", "model.image.width=4",
             "model.text.word_dim=8", "train.epochs=3", "train.batch_size=8", "train.log_every=1",
             "train.checkpoint_every=3", "train.warmup_steps=2", "train.progress=false",
             "train.keep_last=2"]
def tiny_trainer(run_dir: Path, *values: str, resume: bool = False) -> Trainer:
    """An in-process trainer of the tiny demo run (``values``: more ``--set`` overrides)."""
    return Trainer(load_config(DEMO, [*TINY_SETS, *values]), run_dir, resume=resume,
                   progress=False)


def log_rows(run_dir: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl."""
    text = (run_dir / "metrics.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


#: The same without the synthetic data and the image encoder (for the other formats).
TINY_TRAIN = [s for s in TINY_SETS if not s.startswith(("data.", "model.image."))]


def sets(values: list[str]) -> list[str]:
    """``["a=1", "b=2"]`` → ``["--set", "a=1", "--set", "b=2"]``."""
    return [arg for value in values for arg in ("--set", value)]


def write_png(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade, 255 - shade, 40)).save(path)


def features(rows: int, dim: int, dtype: type = np.float32) -> np.ndarray:
    return np.linspace(-1, 1, rows * dim).reshape(rows, dim).astype(dtype)


def write_precomp(root: Path) -> dict:
    """Splits train/dev/test, each 4 feature rows [4, 8] and 2 captions per image."""
    root.mkdir(parents=True)
    for split in ("train", "dev", "test"):
        np.save(root / f"{split}_ims.npy", features(4, 8))
        (root / f"{split}_caps.txt").write_text("".join(f"c{j}\n" for j in range(8)))
    return {"format": "precomp", "root": str(root)}


def write_flickr8k_csv(root: Path) -> dict:
    """captions.txt (image,caption; 4 images × 2 captions) + Images/p0..p3.png."""
    root.mkdir(parents=True)
    rows = "".join(f"p{i}.png,a picture {i} {c}\n" for i in range(4) for c in range(2))
    (root / "captions.txt").write_text("image,caption\n" + rows)
    for i in range(4):
        write_png(root / "Images" / f"p{i}.png", 60 * i)
    return {"format": "flickr8k_csv", "root": str(root), "dev_size": 1, "test_size": 1}


def write_karpathy(root: Path) -> dict:
    """dataset_tiny.json (4 train, 2 val, 2 test images; 2 captions each) + images/k*.png."""
    root.mkdir(parents=True)
    splits = ["train"] * 4 + ["val"] * 2 + ["test"] * 2
    entries = [{"filename": f"k{i}.png", "split": split, "cocoid": 100 + i,
                "sentences": [{"raw": f"karpathy image {i} caption {c}"} for c in range(2)]}
               for i, split in enumerate(splits)]
    (root / "dataset_tiny.json").write_text(json.dumps({"images": entries}))
    for i in range(len(splits)):
        write_png(root / "images" / f"k{i}.png", 30 * i)
    return {"format": "karpathy", "root": str(root), "image_root": str(root / "images")}


def write_albef(root: Path) -> dict:
    """train.json (a0..a3), val.json (a4, a5), test.json (a6, a7); 2 captions an image."""
    root.mkdir(parents=True)
    for split, images in (("train", range(4)), ("val", range(4, 6)), ("test", range(6, 8))):
        records = [{"image": f"a{i}.png", "caption": f"albef {i} {c}", "image_id": str(i)}
                   for i in images for c in range(2)]
        (root / f"{split}.json").write_text(json.dumps(records))
    for i in range(8):
        write_png(root / f"a{i}.png", 30 * i)
    return {"format": "karpathy", "root": str(root)}


def write_flickr8k(root: Path) -> dict:
    """A miniature real-data pack: f0..f3.jpg, 2 captions each, features [4, 8] / [8, 4]."""
    (root / "features").mkdir(parents=True)
    (root / "images.txt").write_text("".join(f"f{i}.jpg\n" for i in range(4)))
    rows = "".join(f"f{i}.jpg\t{c}\tpack {i} {c}\n" for i in range(4) for c in range(2))
    (root / "captions.tsv").write_text("image\tcaption_index\tcaption\n" + rows)
    (root / "splits.json").write_text(json.dumps({"train": [0, 1], "dev": [2], "test": [3]}))
    np.save(root / "features" / "image_effl0_1280.f16.npy", features(4, 8, np.float16))
    np.save(root / "features" / "caption_minilm_384.f16.npy", features(8, 4, np.float16))
    return {"format": "flickr8k", "root": str(root)}


#: corpus folder → (template writer, extra ``--set`` values the format needs).
_FILES = ["model.image={type: cnn, width: 4, image_size: 24}", *TINY_TRAIN]
_FEATURES = ["model.image={type: projection}", *TINY_TRAIN]
TEMPLATES = {"precomp": (write_precomp, _FEATURES), "flickr8k_csv": (write_flickr8k_csv, _FILES),
             "karpathy": (write_karpathy, _FILES), "albef": (write_albef, _FILES),
             "flickr8k": (write_flickr8k, _FEATURES)}


def flow(data: dict) -> str:
    """A data section as one ``--set data=...`` YAML flow mapping."""
    return "data=" + json.dumps(data)


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, fragment: str) -> str:
    """Exit code 2, exactly one ``error: ...`` line on stderr holding ``fragment``, and no
    traceback; returns the line."""
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def tree(root: Path) -> dict[str, str]:
    """Relative path → SHA-256 of every file under ``root`` (folders as "dir")."""
    return {str(p.relative_to(root)): ("dir" if p.is_dir() else
                                        hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*"))}


def _raw_bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def assert_bitwise_equal(a: object, b: object, where: str = "") -> None:
    """Nested dicts / lists of tensors and plain values are identical, tensors bit for bit
    (dtype, shape and every value; NaN payloads included)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(_raw_bytes(a), _raw_bytes(b)), where
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, where
        assert a.tobytes() == b.tobytes(), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), (where, list(a), list(b))
        for key in a:
            assert_bitwise_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_bitwise_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), (where, a, b)  # NaN equals NaN here
