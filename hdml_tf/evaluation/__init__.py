"""Evaluation of embedders: Recall@K, MAP@R, R-precision, NMI and pairwise F1.

One way to evaluate a model, one to evaluate embeddings::

    from hdml_tf.evaluation import evaluate, evaluate_embeddings
    evaluate(model.embedder, dataset)      # {"recall@1": ..., "map@r": ..., "nmi": ...}
    evaluate_embeddings(embeddings, labels)

This package only re-exports. Where things are:

* ``protocol.py``: `evaluate`, `evaluate_embeddings`, `embed` (every metric from one
  neighbour table and one clustering);
* ``retrieval.py``: the neighbour table, Recall@K, MAP@R, R-precision and their rules
  (leave-one-out, ties, singletons, the K rule);
* ``clustering.py``: k-means, NMI and pairwise F1;
* ``callbacks.py``: `EvaluationCallback` (evaluation during training, best weights);
* ``plots.py``: embedding map, retrieval grid, training curves.

``plots`` imports matplotlib and is imported on its own
(``from hdml_tf.evaluation import plots``).
"""

from hdml_tf.evaluation.callbacks import EvaluationCallback
from hdml_tf.evaluation.protocol import (
    ALL_METRICS,
    KS_SMALL,
    KS_SOP,
    embed,
    evaluate,
    evaluate_embeddings,
)

__all__ = ["ALL_METRICS", "KS_SMALL", "KS_SOP", "EvaluationCallback", "embed",
           "evaluate", "evaluate_embeddings"]
