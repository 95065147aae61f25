"""What a report reads from a run directory: config, environment, metric log, final metrics."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vsekit.config import Config
from vsekit.errors import VsekitError
from vsekit.train.run_dir import CONFIG_FILE, FINAL_METRICS, load_run_config

LOG_FILE = "metrics.jsonl"
ENVIRONMENT_FILE = "environment.json"


def read_log(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``metrics.jsonl`` file (a missing file is empty; a cut-off line is skipped)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # the last line of an interrupted run may be cut short
        if isinstance(row, dict) and "kind" in row:
            rows.append(row)
    return rows


def _read_json(path: Path, what: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise VsekitError(f"{str(path)!r} is damaged ({what}); delete it or rerun the run's "
                          "last step") from None
    if not isinstance(value, dict):
        raise VsekitError(f"{str(path)!r} does not hold a JSON object ({what}); delete it")
    return value


@dataclass
class RunRecord:
    """One run directory as the report sees it.

    Attributes:
        path: the run directory; name: its folder name (the label in tables and legends).
        config: the resolved config; environment: versions and hardware (may be empty).
        rows: every ``metrics.jsonl`` row (``kind`` train / epoch / dev / test).
        final: ``final_metrics.json`` (None while the run is unfinished).
        started, finished: POSIX times the config and the final metrics were written.
    """

    path: Path
    name: str
    config: Config
    environment: dict[str, Any]
    rows: list[dict[str, Any]]
    final: dict[str, Any] | None
    started: float | None
    finished: float | None

    def kind(self, kind: str) -> list[dict[str, Any]]:
        """The log rows of one kind, in file order."""
        return [row for row in self.rows if row["kind"] == kind]

    @property
    def metrics(self) -> dict[str, float] | None:
        """Test metrics of the best checkpoint, if the run finished."""
        return None if self.final is None else self.final.get("metrics")


def load_run(run_dir: Path) -> RunRecord:
    """Read a run directory (finished or not); raises :class:`VsekitError` if it is none."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    final_path = run_dir / FINAL_METRICS
    final = _read_json(final_path, "the final metrics")
    if final is not None and not isinstance(final.get("metrics", {}), dict):
        raise VsekitError(f"{str(final_path)!r} holds no metrics table; run vsekit eval "
                          f"{run_dir} --json to check the run")
    return RunRecord(
        path=run_dir, name=run_dir.resolve().name, config=config,
        environment=_read_json(run_dir / ENVIRONMENT_FILE, "the run environment") or {},
        rows=read_log(run_dir / LOG_FILE), final=final,
        started=(run_dir / CONFIG_FILE).stat().st_mtime,
        finished=final_path.stat().st_mtime if final is not None else None)
