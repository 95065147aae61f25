"""Metrics tables: the papers' layout and the multi-run comparison."""

from __future__ import annotations

import statistics

from vsekit.eval.table import COLUMNS, format_metrics, format_protocol, runs_table


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


def test_format_protocol_layout() -> None:
    row = metrics(10.0)
    text = format_protocol(row, "coco-5k")
    lines = text.splitlines()
    assert lines[0] == "coco-5k" and lines[2].split() == ["R@1", "R@5", "R@10"] * 2 + ["rsum"]
    assert lines[3].split() == ["10.0", "11.0", "12.0", "13.0", "14.0", "15.0", "16.0"]
    assert lines[4] == "medr / meanr: image→text 3.0 / 9.5, text→image 4.0 / 12.2"
    assert len(lines) == 5
    for d in ("i2t", "t2i"):
        row.update({f"eccv_{d}_map_at_r": 20.0, f"eccv_{d}_r_precision": 30.0,
                    f"eccv_{d}_r1": 40.0, **{f"cxc_{d}_r{k}": 50.0 + k for k in (1, 5, 10)}})
    row.update(eccv_map_at_r=21.0, eccv_r_precision=31.0, eccv_r1=41.0, cxc_rsum=348.0,
               half_sample_queries=2000.0, half_rank_agreement=61.25, half_recall_agreement=99.5)
    lines = format_protocol(row).splitlines()
    assert lines[4].split() == ["ECCV", "Caption", "mAP@R", "R-P", "R@1"]
    assert lines[5].split() == ["image→text", "20.0", "30.0", "40.0"]
    assert lines[7].split() == ["mean", "21.0", "31.0", "41.0"]
    assert lines[9].split() == ["image→text", "51.0", "55.0", "60.0"]
    assert lines[11] == "  rsum 348.0"
    assert lines[12].startswith("bfloat16 check: 99.50% of 2000 sampled queries")


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
