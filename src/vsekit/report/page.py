"""``vsekit report``: one self-contained HTML page for one or more runs, side by side."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vsekit import __version__
from vsekit.errors import VsekitError
from vsekit.eval.table import GRADED_SECTIONS
from vsekit.report.gallery import run_gallery
from vsekit.report.html import Cell, esc, figure, page, table
from vsekit.report.plots import false_negative_rates, png_bytes, png_text, training_curves
from vsekit.report.run_plots import FALSE_NEGATIVES, TRAINING_CURVES, write_run_plots
from vsekit.report.runs import RunRecord, load_run

DIRECTIONS = (("i2t", "image → text"), ("t2i", "text → image"))
REPORT_FILE = "report.html"
SHARED_PLOTS = (TRAINING_CURVES, FALSE_NEGATIVES)  # drawn for all runs together when several


def _number(metrics: dict[str, float] | None, key: str, digits: int = 1) -> str:
    value = None if metrics is None else metrics.get(key)
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}"


def _recall_table(runs: Sequence[RunRecord], infix: str, total: str, caption: str) -> str:
    """R@1/5/10 both ways and their sum, one row per run (the papers' layout)."""
    head: list[list[Cell]] = [
        ["run", *[(label, {"colspan": "3", "scope": "colgroup"}) for _, label in DIRECTIONS],
         ("rsum", {"rowspan": "2"})],
        ["", *["R@1", "R@5", "R@10"] * 2]]
    body = [[esc(run.name), *[_number(run.metrics, f"{d}_{infix}r{k}") for d, _ in DIRECTIONS
                              for k in (1, 5, 10)], _number(run.metrics, total)]
            for run in runs]
    return table(head, body, caption=caption)


def metrics_tables(runs: Sequence[RunRecord]) -> str:
    """The test metrics of every run side by side: binary R@K, complete relevance and graded
    relevance where the runs have them."""
    split = next((r.final.get("split") for r in runs if r.final), None) or "test"
    parts = [_recall_table(runs, "", "rsum", f"{split} split, best dev checkpoint: recall@K "
                                             "(%) against the labelled pairs")]
    present = {key for run in runs for key in (run.metrics or {})}
    if "rel_rsum" in present:
        parts.append(_recall_table(runs, "rel_", "rel_rsum", "complete relevance: any truly "
                                                            "matching item counts (%)"))
    for prefix, label in GRADED_SECTIONS:
        if f"{prefix}i2t_kendall_tau" not in present:
            continue
        head: list[list[Cell]] = [
            ["run", *[(name, {"colspan": "3", "scope": "colgroup"}) for _, name in DIRECTIONS]],
            ["", *["τ-b", "nDCG@10", "nDCG@50"] * 2]]
        body = [[esc(run.name), *[_number(run.metrics, f"{prefix}{d}_{m}", digits)
                                  for d, _ in DIRECTIONS
                                  for m, digits in (("kendall_tau", 3), ("ndcg10", 1),
                                                    ("ndcg50", 1))]]
                for run in runs]
        parts.append(table(head, body, caption=label))
    missing = [run.name for run in runs if run.metrics is None]
    if missing:
        parts.append(f'<p class="note">No final test metrics (run unfinished?): '
                     f'{esc(", ".join(missing))}.</p>')
    return "\n".join(parts)


def _params(section: dict[str, Any], key: str) -> str:
    rest = ", ".join(f"{k} {v}" for k, v in section.items() if k != key)
    return f"{section.get(key)}" + (f" ({rest})" if rest else "")


def _when(stamp: float | None) -> str:
    return "–" if stamp is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def summary_table(runs: Sequence[RunRecord]) -> str:
    """Recipe, data, versions, time and hardware of every run, one column per run."""
    def row(label: str, values: list[str]) -> list[Cell]:
        return [esc(label), *[esc(v) for v in values]]

    facts: dict[str, list[str]] = {}
    for run in runs:
        cfg, env, final = run.config, run.environment, run.final or {}
        seconds = final.get("train_seconds")
        best = final.get("best_epoch")
        cuda = env.get("cuda")
        for label, value in (
            ("directory", str(run.path)),
            ("loss", _params(cfg.loss, "name")),
            ("model", f"embedding {cfg.model.embed_dim}-d; image {_params(cfg.model.image, 'type')}"
                      f"; text {_params(cfg.model.text, 'type')}"),
            ("data", _params(cfg.data, "format")),
            ("training", f"{cfg.train.epochs} epochs, batch {cfg.train.batch_size}, lr "
                         f"{cfg.train.lr:g} ({cfg.train.schedule}, {cfg.train.warmup_steps} "
                         f"warm-up steps), seed {cfg.seed}"),
            ("result", "unfinished" if not final else
             f"{final.get('steps', '?')} steps; best dev epoch "
             f"{best + 1 if isinstance(best, int) and best >= 0 else '–'}"),
            ("training time", _duration(seconds)),
            ("started / finished", f"{_when(run.started)} / {_when(run.finished)}"),
            ("versions", f"vsekit {env.get('vsekit', '?')} (commit "
                         f"{(env.get('git_commit') or '?')[:10]}), python {env.get('python', '?')}"
                         f", torch {env.get('torch', '?')}, numpy {env.get('numpy', '?')}"),
            ("hardware", f"{env.get('processor', '?')}, {env.get('cpu_threads', '?')} CPU threads"
                         + (f", GPU {cuda}" if cuda else ", no GPU")
                         + f"; {env.get('platform', '?')}"),
        ):
            facts.setdefault(label, []).append(value)
    rows = [row(label, values) for label, values in facts.items()]
    return table([["", *[esc(run.name) for run in runs]]], rows, css="summary")


def _run_figures(files: Sequence[Path], notes: Sequence[str]) -> str:
    parts = []
    for path in files:
        title, alt = png_text(path)
        parts.append(figure(path.read_bytes(), title or path.stem, alt or path.stem))
    parts += [f'<p class="note">{esc(note)}</p>' for note in notes]
    return "\n".join(parts)


def _comparison_figures(runs: Sequence[RunRecord]) -> str:
    plots = [training_curves(runs), false_negative_rates(runs)]
    return "\n".join(figure(png_bytes(p), p.title, p.alt) for p in plots if p is not None)


def report_html(run_dirs: Sequence[Path], *, gallery: bool = True, k: int = 5,
                n_queries: int = 4) -> str:
    """The report page for ``run_dirs`` (figures missing from a run directory are drawn and
    saved there first)."""
    if not run_dirs:
        raise VsekitError("give at least one run directory to report on")
    runs = [load_run(Path(d)) for d in run_dirs]
    names = ", ".join(run.name for run in runs)
    body = [f"<h1>vsekit report: {esc(names)}</h1>",
            f'<p class="muted">Written {_when(time.time())} by vsekit {esc(__version__)}. '
            "Figures and numbers come from each run directory (config, metrics log, final "
            "metrics, checkpoints).</p>",
            "<h2>Test metrics</h2>", metrics_tables(runs),
            "<h2>Runs</h2>", summary_table(runs)]
    if len(runs) > 1:
        body += ["<h2>Training, side by side</h2>", _comparison_figures(runs)]
    for run in runs:
        plots = write_run_plots(run.path, missing_only=True)
        files = [f for f in plots.files if len(runs) == 1 or f.name not in SHARED_PLOTS]
        body += [f"<h2>{esc(run.name)}</h2>" if len(runs) > 1 else "<h2>Training</h2>",
                 _run_figures(files, plots.notes)]
        if gallery:
            body += [f"<h3>Retrieval gallery ({esc(run.name)})</h3>",
                     run_gallery(run.path, k=k, n_queries=n_queries)]
    return page(f"vsekit report: {names}", "\n".join(body))


def write_report(run_dirs: Sequence[Path], out: Path | None = None, **options: Any) -> Path:
    """Write :func:`report_html` to ``out`` (default ``RUN_DIR/report.html`` for one run,
    ``./report.html`` for several); returns the path."""
    if out is None:
        out = Path(run_dirs[0]) / REPORT_FILE if len(run_dirs) == 1 else Path(REPORT_FILE)
    text = report_html(run_dirs, **options)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out


def write_gallery(run_dir: Path, out: Path, *, split: str | None = None,
                  checkpoint: str = "best", k: int = 5, n_queries: int = 4) -> Path:
    """Write a page holding only the retrieval gallery of one run (``vsekit eval --gallery``)."""
    run = load_run(run_dir)
    body = (f"<h1>Retrieval gallery: {esc(run.name)}</h1>"
            + run_gallery(run.path, split=split, checkpoint=checkpoint, k=k,
                          n_queries=n_queries))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page(f"vsekit gallery: {run.name}", body), encoding="utf-8")
    return out
