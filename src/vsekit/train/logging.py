"""Metric logging: a JSONL file and TensorBoard scalars in the run directory."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter


class MetricLogger:
    """Appends ``{"kind", "step", "epoch", ...metrics}`` rows to ``metrics.jsonl`` and TensorBoard."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self._writer = SummaryWriter(str(run_dir / "tensorboard")) if enabled else None

    def log(self, kind: str, step: int, epoch: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"kind": kind, "step": step, "epoch": epoch}
        row.update({k: float(v) for k, v in values.items()})
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        for key, value in values.items():
            if math.isfinite(float(value)):
                self._writer.add_scalar(f"{kind}/{key}", float(value), step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

