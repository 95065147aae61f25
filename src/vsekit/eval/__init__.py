"""Evaluation: retrieval ranks and metrics from similarity matrices."""

from vsekit.eval.graded import graded_metrics, kendall_tau_b, ndcg_at_k, pseudo_relevance
from vsekit.eval.metrics import (
    metrics_from_ranks,
    recall_at_k,
    relevance_ranks,
    relevance_recall,
    retrieval_metrics,
    retrieval_ranks,
)

__all__ = [
    "graded_metrics",
    "kendall_tau_b",
    "ndcg_at_k",
    "pseudo_relevance",
    "metrics_from_ranks",
    "recall_at_k",
    "relevance_ranks",
    "relevance_recall",
    "retrieval_metrics",
    "retrieval_ranks",
]
