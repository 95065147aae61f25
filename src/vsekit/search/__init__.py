"""Search over a trained run's embeddings with FAISS: image indexes for text queries, caption
indexes for image queries (exact inner product, or IVF-Flat / HNSW)."""

from vsekit.search.index import IndexSpec, SearchIndex, approx_recall, recall_at_k
from vsekit.search.run import build_run_index, search_run_index

__all__ = ["IndexSpec", "SearchIndex", "approx_recall", "build_run_index", "recall_at_k",
           "search_run_index"]
