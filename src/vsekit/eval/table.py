"""Metrics tables in the layout retrieval papers use."""

from __future__ import annotations

from collections.abc import Mapping

GRADED_SECTIONS = (
    ("graded_", "true graded relevance (model similarity vs fraction of facts satisfied)"),
    ("pseudo_", "pseudo-label relevance (model similarity vs sentence-encoder labels; a proxy)"),
    ("labels_", "pseudo labels vs true graded relevance (quality of the labels themselves)"),
)


def format_metrics(metrics: Mapping[str, float], title: str = "") -> str:
    """R@1/5/10, medr, meanr per direction and rsum; complete-relevance recall when present."""
    lines = [title] if title else []
    header = f"{'':<12}{'R@1':>7}{'R@5':>7}{'R@10':>7}{'medr':>7}{'meanr':>8}"
    lines.append(header)
    for key, label in (("i2t", "image→text"), ("t2i", "text→image")):
        lines.append(f"{label:<12}{metrics[f'{key}_r1']:7.1f}{metrics[f'{key}_r5']:7.1f}"
                     f"{metrics[f'{key}_r10']:7.1f}{metrics[f'{key}_medr']:7.0f}"
                     f"{metrics[f'{key}_meanr']:8.1f}")
    lines.append(f"rsum {metrics['rsum']:.1f}")
    return "\n".join(lines + _relevance_sections(metrics))


def _relevance_sections(metrics: Mapping[str, float]) -> list[str]:
    """Complete-relevance recall and graded-relevance lines, where the metrics have them."""
    lines = []
    if "rel_rsum" in metrics:
        lines.append("complete relevance (any truly matching item counts):")
        for key, label in (("i2t", "image→text"), ("t2i", "text→image")):
            lines.append(f"{label:<12}{metrics[f'{key}_rel_r1']:7.1f}{metrics[f'{key}_rel_r5']:7.1f}"
                         f"{metrics[f'{key}_rel_r10']:7.1f}")
        lines.append(f"rsum (complete relevance) {metrics['rel_rsum']:.1f}")
    for prefix, label in GRADED_SECTIONS:
        if f"{prefix}i2t_kendall_tau" in metrics:
            lines.append(f"{label}:")
            lines.append(f"{'':<12}{'tau-b':>7}{'nDCG@10':>9}{'nDCG@50':>9}")
            for key, name in (("i2t", "image→text"), ("t2i", "text→image")):
                lines.append(f"{name:<12}{metrics[f'{prefix}{key}_kendall_tau']:7.3f}"
                             f"{metrics[f'{prefix}{key}_ndcg10']:9.1f}"
                             f"{metrics[f'{prefix}{key}_ndcg50']:9.1f}")
    return lines


def format_protocol(metrics: Mapping[str, float], title: str = "") -> str:
    """The row retrieval papers print (R@1/5/10 image→text and text→image, rsum), then medr /
    meanr, and the ECCV Caption, CxC, bfloat16-check and relevance sections where present."""
    lines = [title] if title else []
    lines.append(f"{'':<4}{'image→text':^21}   {'text→image':^21}".rstrip())
    lines.append(f"{'':<4}{'R@1':>7}{'R@5':>7}{'R@10':>7}   {'R@1':>7}{'R@5':>7}{'R@10':>7}"
                 f"{'rsum':>9}")
    lines.append(f"{'':<4}" + "".join(f"{metrics[f'i2t_r{k}']:7.1f}" for k in (1, 5, 10))
                 + "   " + "".join(f"{metrics[f't2i_r{k}']:7.1f}" for k in (1, 5, 10))
                 + f"{metrics['rsum']:9.1f}")
    lines.append(f"medr / meanr: image→text {metrics['i2t_medr']:.1f} / "
                 f"{metrics['i2t_meanr']:.1f}, text→image {metrics['t2i_medr']:.1f} / "
                 f"{metrics['t2i_meanr']:.1f}")
    if "eccv_map_at_r" in metrics:
        lines.append(f"ECCV Caption{'mAP@R':>12}{'R-P':>7}{'R@1':>7}")
        for key, label in (("i2t_", "image→text"), ("t2i_", "text→image"), ("", "mean")):
            lines.append(f"  {label:<16}{metrics[f'eccv_{key}map_at_r']:7.1f}"
                         f"{metrics[f'eccv_{key}r_precision']:7.1f}{metrics[f'eccv_{key}r1']:7.1f}")
    if "cxc_rsum" in metrics:
        lines.append(f"CxC{'R@1':>21}{'R@5':>7}{'R@10':>7}")
        for key, label in (("i2t", "image→text"), ("t2i", "text→image")):
            lines.append(f"  {label:<16}" + "".join(f"{metrics[f'cxc_{key}_r{k}']:7.1f}"
                                                    for k in (1, 5, 10)))
        lines.append(f"  rsum {metrics['cxc_rsum']:.1f}")
    if "half_recall_agreement" in metrics:
        lines.append(f"bfloat16 check: {metrics['half_recall_agreement']:.2f}% of "
                     f"{metrics['half_sample_queries']:.0f} sampled queries keep their "
                     f"R@1/5/10 outcome ({metrics['half_rank_agreement']:.1f}% keep their "
                     f"exact rank)")
    return "\n".join(lines + _relevance_sections(metrics))


COLUMNS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{mean:.1f} ± {std:.1f}"


def runs_table(groups: Mapping[str, list[Mapping[str, float]]]) -> str:
    """Markdown table, one row per group of runs (mean ± sample std over its runs).

    ``groups`` maps a label to the runs' metric dicts (each with :data:`COLUMNS` and
    ``train_minutes``).
    """
    head = ["run", "runs", "i2t R@1", "R@5", "R@10", "t2i R@1", "R@5", "R@10", "rsum",
            "train min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, runs in groups.items():
        cells = [_cell([r[c] for r in runs]) for c in (*COLUMNS, "train_minutes")]
        lines.append(f"| {label} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
