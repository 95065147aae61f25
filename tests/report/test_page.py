"""``vsekit report`` and ``vsekit eval --gallery`` on tiny finished runs; one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.report.conftest import TINY
from tests.test_cli import assert_one_line_error, run_cli
from vsekit.report.plots import png_text
from vsekit.report.run_plots import (
    BCLS_LABELS,
    FALSE_NEGATIVES,
    FNE_SIMILARITIES,
    TRAINING_CURVES,
    write_run_plots,
)

pytestmark = pytest.mark.slow


def metrics_of(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "final_metrics.json").read_text())["metrics"]


def test_run_plots_per_loss(tiny_runs: dict[str, Path]) -> None:
    expected = {"vsepp": set(), "fne": {FNE_SIMILARITIES}, "bcls": {BCLS_LABELS}}
    for name, run_dir in tiny_runs.items():
        plots = write_run_plots(run_dir, missing_only=True)  # another test may have drawn them
        names = {p.name for p in plots.files}
        assert names == {TRAINING_CURVES, FALSE_NEGATIVES} | expected[name], name
        assert plots.notes == []
        for path in plots.files:
            title, alt = png_text(path)
            assert title and len(alt) > 40, path
    title, alt = png_text(tiny_runs["fne"] / FNE_SIMILARITIES)
    assert "Fitted Gaussians" in alt and "each of" in alt  # statistics filled in this run
    kept = tiny_runs["vsepp"] / TRAINING_CURVES
    before = kept.stat().st_mtime_ns
    (tiny_runs["vsepp"] / FALSE_NEGATIVES).unlink()
    plots = write_run_plots(tiny_runs["vsepp"], missing_only=True)
    assert (tiny_runs["vsepp"] / FALSE_NEGATIVES) in plots.files
    assert kept.stat().st_mtime_ns == before


def test_report_shows_every_runs_numbers(tiny_runs: dict[str, Path], tmp_path: Path,
                                         capsys) -> None:
    out = tmp_path / "all.html"
    code, stdout, _ = run_cli(["report", *map(str, tiny_runs.values()), "--out", str(out),
                               "--queries", "2", "--top-k", "3"], capsys)
    assert code == 0 and stdout.strip() == f"report: {out}"
    page = out.read_text(encoding="utf-8")
    table = page[page.index("<h2>Test metrics</h2>"):page.index("<h2>Runs</h2>")]
    for name, run_dir in tiny_runs.items():
        row = re.search(rf"<tr><td class=\"label\">{name}</td>(.*?)</tr>", table).group(1)
        metrics = metrics_of(run_dir)
        cells = re.findall(r"<td>([^<]*)</td>", row)
        assert cells[:7] == [f"{metrics[k]:.1f}" for k in
                             ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10",
                              "rsum")]
    assert page.count("<h3>Retrieval gallery") == 3
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert all(alt.strip() for alt in re.findall(r'<img [^>]*alt="([^"]*)"', page))


def test_eval_gallery_and_errors(tiny_runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "gallery.html"
    code, stdout, _ = run_cli(["eval", str(tiny_runs["vsepp"]), "--no-progress", "--gallery",
                               str(out)], capsys)
    assert code == 0 and f"gallery: {out}" in stdout
    assert out.read_text(encoding="utf-8").count('<div class="query">') == 8
    code, _, err = run_cli(["report", str(tiny_runs["vsepp"]), "--top-k", "0"], capsys)
    assert_one_line_error(code, err, "at least one query")
    code, _, err = run_cli(["report", str(tmp_path / "nothing")], capsys)
    assert_one_line_error(code, err, "not a vsekit run directory")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text((tiny_runs["vsepp"] / "config.yaml").read_text())
    (broken / "final_metrics.json").write_text("{not json")
    code, _, err = run_cli(["report", str(broken)], capsys)
    assert_one_line_error(code, err, "is damaged")


def test_demo_ends_with_its_report(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "demo"
    args = ["demo", "--run-dir", str(run_dir), "--no-progress"]
    for override in TINY:
        args += ["--set", override]
    code, stdout, _ = run_cli(args, capsys)
    assert code == 0
    assert stdout.strip().splitlines()[-1] == f"report: {run_dir / 'report.html'}"
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert f"{metrics_of(run_dir)['rsum']:.1f}" in page and "Retrieval gallery" in page
