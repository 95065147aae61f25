"""Metrics tables: the papers' layout and the multi-run comparison."""

from __future__ import annotations

import statistics

from vsekit.eval.table import COLUMNS, format_metrics, runs_table


def metrics(base: float) -> dict[str, float]:
    row = {c: base + i for i, c in enumerate(COLUMNS)}
    row.update({"i2t_medr": 3.0, "i2t_meanr": 9.5, "t2i_medr": 4.0, "t2i_meanr": 12.25})
    return row


def test_format_metrics_layout() -> None:
    text = format_metrics(metrics(10.0), "test split")
    lines = text.splitlines()
    assert lines[0] == "test split"
    assert lines[2].split() == ["image→text", "10.0", "11.0", "12.0", "3", "9.5"]
    assert lines[3].split() == ["text→image", "13.0", "14.0", "15.0", "4", "12.2"]
    assert lines[4] == "rsum 16.0" and "complete relevance" not in text


def test_runs_table_mean_and_sample_std() -> None:
    runs = [dict(metrics(b), train_minutes=m) for b, m in ((10.0, 2.0), (12.0, 4.0), (17.0, 3.0))]
    table = runs_table({"vsepp": runs, "single": runs[:1]})
    rows = table.splitlines()
    cells = [c.strip() for c in rows[2].strip("|").split("|")]
    mean = statistics.mean([10.0, 12.0, 17.0])
    std = statistics.stdev([10.0, 12.0, 17.0])
    assert cells[:3] == ["vsepp", "3", f"{mean:.1f} ± {std:.1f}"]
    assert cells[-1] == f"{3.0:.1f} ± {1.0:.1f}"
    assert rows[3].startswith("| single | 1 | 10.0 | 11.0 |")


def test_graded_sections_are_printed() -> None:
    row = metrics(10.0)
    for key in ("i2t", "t2i"):
        row.update({f"graded_{key}_kendall_tau": 0.25, f"graded_{key}_ndcg10": 61.0,
                    f"graded_{key}_ndcg50": 70.5})
    text = format_metrics(row)
    assert "true graded relevance" in text and "pseudo-label" not in text
    assert text.splitlines()[-1].split() == ["text→image", "0.250", "61.0", "70.5"]
