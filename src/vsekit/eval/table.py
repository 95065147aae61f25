"""Metrics tables in the layout retrieval papers use."""

from __future__ import annotations

from collections.abc import Mapping


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
    if "rel_rsum" in metrics:
        lines.append("complete relevance (any truly matching item counts):")
        for key, label in (("i2t", "image→text"), ("t2i", "text→image")):
            lines.append(f"{label:<12}{metrics[f'{key}_rel_r1']:7.1f}{metrics[f'{key}_rel_r5']:7.1f}"
                         f"{metrics[f'{key}_rel_r10']:7.1f}")
        lines.append(f"rsum (complete relevance) {metrics['rel_rsum']:.1f}")
    return "\n".join(lines)
