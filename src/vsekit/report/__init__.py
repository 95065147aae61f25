"""Reports: figures of a run, a self-contained HTML page, the retrieval gallery."""
