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

The callback and the plots are loaded on first use: they import Keras / matplotlib.

Deprecated for this release only (each use warns): the one-metric functions
``recall_at_k``, ``map_at_r``, ``r_precision``, ``nmi`` and ``f1`` (ask
`evaluate_embeddings` for the metric), and the building blocks imported from the
package rather than from their module (``knn``, ``Neighbours``, ``l2_normalize``,
``neighbour_table``, ``required_k``, ``retrieval_metrics`` from ``retrieval``;
``kmeans``, ``clustering_metrics``, ``nmi_from_clusters``,
``pairwise_f1_from_clusters`` from ``clustering``).
"""

from hdml_tf import deprecation
from hdml_tf.evaluation.protocol import (
    ALL_METRICS,
    KS_SMALL,
    KS_SOP,
    embed,
    evaluate,
    evaluate_embeddings,
)

__all__ = ["ALL_METRICS", "KS_SMALL", "KS_SOP", "EvaluationCallback", "embed",
           "evaluate", "evaluate_embeddings", "plots"]

_BUILDING_BLOCKS = {
    **dict.fromkeys(["Neighbours", "knn", "l2_normalize", "neighbour_table", "required_k",
                     "retrieval_metrics"], "retrieval"),
    **dict.fromkeys(["kmeans", "clustering_metrics", "nmi_from_clusters",
                     "pairwise_f1_from_clusters"], "clustering"),
}

__getattr__ = deprecation.module_getattr(
    __name__,
    lazy={"EvaluationCallback": "hdml_tf.evaluation.callbacks:EvaluationCallback",
          "callbacks": "hdml_tf.evaluation.callbacks", "plots": "hdml_tf.evaluation.plots",
          # Deprecated: these functions warn when called.
          **{name: f"hdml_tf.evaluation.protocol:{name}"
             for name in ("recall_at_k", "map_at_r", "r_precision")},
          **{name: f"hdml_tf.evaluation.clustering:{name}" for name in ("nmi", "f1")}},
    deprecated={name: f"hdml_tf.evaluation.{module}:{name}"
                for name, module in _BUILDING_BLOCKS.items()},
)
