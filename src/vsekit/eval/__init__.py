"""Evaluation: retrieval ranks and metrics from similarity matrices."""

from vsekit.eval.metrics import (
    metrics_from_ranks,
    recall_at_k,
    relevance_ranks,
    relevance_recall,
    retrieval_metrics,
    retrieval_ranks,
)

__all__ = [
    "metrics_from_ranks",
    "recall_at_k",
    "relevance_ranks",
    "relevance_recall",
    "retrieval_metrics",
    "retrieval_ranks",
]
