"""Evaluation: retrieval ranks and metrics from similarity matrices or streamed embeddings,
standard protocols (F30K 1K, COCO 1K / 5K) and ECCV Caption / CxC metrics."""

from vsekit.eval.eccv import eccv_from_rankings, eccv_metrics
from vsekit.eval.graded import graded_metrics, kendall_tau_b, ndcg_at_k, pseudo_relevance
from vsekit.eval.metrics import (
    metrics_from_ranks,
    recall_at_k,
    relevance_ranks,
    relevance_recall,
    retrieval_metrics,
    retrieval_ranks,
)
from vsekit.eval.protocols import PROTOCOLS, Fold, average_metrics, protocol_folds
from vsekit.eval.streaming import (
    StreamResult,
    half_agreement,
    streaming_metrics,
    streaming_ranks,
    top_k_lists,
)

__all__ = [
    "PROTOCOLS",
    "Fold",
    "StreamResult",
    "average_metrics",
    "eccv_from_rankings",
    "eccv_metrics",
    "graded_metrics",
    "half_agreement",
    "kendall_tau_b",
    "ndcg_at_k",
    "pseudo_relevance",
    "metrics_from_ranks",
    "protocol_folds",
    "recall_at_k",
    "relevance_ranks",
    "relevance_recall",
    "retrieval_metrics",
    "retrieval_ranks",
    "streaming_metrics",
    "streaming_ranks",
    "top_k_lists",
]
