"""The run directory: everything a run produced, plus what is needed to reproduce it.

Layout::

    RUN_DIR/
      config.yaml        the resolved config (after --set overrides)
      environment.json   versions, git commit, hardware, seed
      metrics.jsonl      one JSON row per logged step / evaluation
      tensorboard/       TensorBoard event files
      checkpoints/       step-N.pt (+ .sha256), the last k kept; best.pt (best dev rsum)
      final_metrics.json test metrics of the best checkpoint
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from vsekit.config import Config, config_from_dict, load_yaml
from vsekit.errors import VsekitError
from vsekit.train.checkpoint import atomic_write_bytes

CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"
BEST = "best.pt"
FINAL_METRICS = "final_metrics.json"


def git_commit() -> str | None:
    """The current git commit of the vsekit source tree, if it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(seed: int) -> dict[str, Any]:
    """Versions and hardware, recorded next to the checkpoints."""
    from vsekit import __version__

    return {
        "vsekit": __version__,
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "seed": seed,
        "command": sys.argv,
    }


def write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def prepare_run_dir(config: Config, run_dir: Path) -> None:
    """Create a fresh run directory and record its config and environment.

    Callers check :func:`check_new_run_dir` first (the trainer does, before loading data).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_dir / CONFIG_FILE,
                       yaml.safe_dump(with_absolute_data_paths(config.to_dict()),
                                      sort_keys=False).encode())
    write_json(run_dir / "environment.json", environment(config.seed))


DATA_PATH_KEYS = ("root", "image_root")


def with_absolute_data_paths(config: dict) -> dict:
    """``config`` with relative ``data.root`` / ``data.image_root`` made absolute (against the
    working folder of the run), so ``vsekit eval``, ``report`` and ``--resume`` find the data
    from any folder."""
    data = dict(config.get("data") or {})
    for key in DATA_PATH_KEYS:
        value = data.get(key)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            data[key] = str(Path(value).expanduser().resolve())
    return {**config, "data": data}


def load_run_config(run_dir: Path) -> Config:
    """The config a run was started with."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise VsekitError(f"{str(run_dir)!r} is not a vsekit run directory (no {CONFIG_FILE})")
    return config_from_dict(load_yaml(path), where=str(path))


def check_new_run_dir(run_dir: Path) -> None:
    """Refuse a directory that already holds a run (nothing is ever overwritten)."""
    folder = run_dir / CHECKPOINTS
    if (folder.is_dir() and any(folder.iterdir())) or (run_dir / "metrics.jsonl").exists():
        raise VsekitError(f"run directory {str(run_dir)!r} already holds a run; resume it with "
                          f"--resume {run_dir} or choose another --run-dir")
