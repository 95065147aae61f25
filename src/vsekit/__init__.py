"""vsekit: image-text retrieval (visual-semantic embeddings) that knows its negatives may be
false negatives — FNE, BCLS and the standard baselines, with fast evaluation.

Public API: :func:`vsekit.eval.retrieval_metrics`, :func:`vsekit.config.load_config`,
:func:`vsekit.train.trainer.train`, the registries ``vsekit.losses.LOSSES``,
``vsekit.models.IMAGE_ENCODERS`` / ``TEXT_ENCODERS`` and ``vsekit.data.formats.DATA_FORMATS``.
"""

__version__ = "0.1.0"
