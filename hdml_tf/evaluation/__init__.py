"""Evaluation of embedders: Recall@K, MAP@R, R-precision, NMI and pairwise F1.

`evaluate` embeds a data set once, builds one neighbour table and one clustering, and
returns every requested metric in a flat dict::

    {"recall@1": ..., "recall@2": ..., "map@r": ..., "r_precision": ..., "nmi": ...,
     "f1": ...}

The rules (leave-one-out, tie rule, singletons, K larger than the gallery) are stated in
`hdml_tf.evaluation.retrieval`; the clustering protocol in
`hdml_tf.evaluation.clustering`. The Keras callback (`EvaluationCallback`) and the
plots are loaded lazily because they import Keras / matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Callable, Iterable, Sequence

import numpy as np

from hdml_tf.evaluation.clustering import (
    clustering_metrics,
    f1,
    kmeans,
    nmi,
    nmi_from_clusters,
    pairwise_f1_from_clusters,
)
from hdml_tf.evaluation.retrieval import (
    Neighbours,
    knn,
    l2_normalize,
    map_at_r,
    neighbour_table,
    r_precision,
    recall_at_k,
    required_k,
    retrieval_metrics,
)

ALL_METRICS = ("recall", "map@r", "r_precision", "nmi", "f1")
#: The Recall@K lists of the protocol.
KS_SMALL = (1, 2, 4, 8)  # CUB-200-2011, Cars196
KS_SOP = (1, 10, 100, 1000)  # Stanford Online Products

__all__ = [
    "ALL_METRICS", "KS_SMALL", "KS_SOP", "Neighbours", "clustering_metrics", "embed",
    "evaluate", "evaluate_embeddings", "f1", "kmeans", "knn", "l2_normalize", "map_at_r",
    "neighbour_table", "nmi", "nmi_from_clusters", "pairwise_f1_from_clusters",
    "r_precision", "recall_at_k", "required_k", "retrieval_metrics", "EvaluationCallback",
    "plots",
]

_LAZY = {"EvaluationCallback": "hdml_tf.evaluation.callbacks",
         "plots": "hdml_tf.evaluation.plots", "callbacks": "hdml_tf.evaluation.callbacks"}


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = module if _LAZY[name].endswith(name) else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hdml_tf.evaluation' has no attribute {name!r}")


def _normalise_metrics(metrics: Iterable[str]) -> tuple[str, ...]:
    aliases = {"recall@k": "recall", "map_at_r": "map@r", "mapr": "map@r",
               "r-precision": "r_precision", "rp": "r_precision"}
    out = []
    for m in metrics:
        m = aliases.get(m.lower(), m.lower())
        if m not in ALL_METRICS:
            raise ValueError(f"unknown metric {m!r}; choose from {ALL_METRICS}")
        if m not in out:
            out.append(m)
    return tuple(out)


def evaluate_embeddings(
    embeddings: np.ndarray,
    labels: np.ndarray,
    ks: Sequence[int] = KS_SMALL,
    metrics: Iterable[str] = ALL_METRICS,
    *,
    gallery_embeddings: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
    clip_k: bool = False,
    singleton_queries: str = "exclude",
    backend: str = "auto",
    block_size: int | None = None,
    seed: int = 0,
    kmeans_backend: str = "auto",
    kmeans_niter: int | None = None,
    kmeans_nredo: int = 1,
) -> dict[str, float]:
    """All requested metrics of precomputed embeddings, with one neighbour table.

    Args:
        embeddings: float array (n, d), one row per image (the queries).
        labels: int array (n,), class ids.
        ks: K values of Recall@K.
        metrics: subset of ("recall", "map@r", "r_precision", "nmi", "f1").
        gallery_embeddings, gallery_labels: optional separate gallery (In-Shop style);
            then retrieval is query -> gallery and NMI/F1 cluster the union of both sets
            with k = number of classes in the union.
        clip_k, singleton_queries, backend, block_size: see
            `hdml_tf.evaluation.retrieval`.
        seed, kmeans_backend, kmeans_niter, kmeans_nredo: see
            `hdml_tf.evaluation.clustering.kmeans` (seed, backend, niter, nredo).

    Returns:
        A flat dict: "recall@K" for each K, "map@r", "r_precision", "nmi", "f1" (those
        requested), values in [0, 1] as Python floats.
    """
    metrics = _normalise_metrics(metrics)
    ks = tuple(int(k) for k in ks)
    embeddings = np.asarray(embeddings)
    labels = np.asarray(labels).ravel()
    out: dict[str, float] = {}
    ret = [m for m in metrics if m in ("recall", "map@r", "r_precision")]
    if ret:
        need = required_k(ks, labels, gallery_labels, ret)
        table = neighbour_table(embeddings, labels, gallery_embeddings, gallery_labels, need,
                           clip_k or "recall" not in ret, backend, block_size)
        out.update(retrieval_metrics(table, labels, gallery_labels, ks, ret,
                                     clip_k=clip_k, singleton_queries=singleton_queries))
        del table
    clu = [m for m in metrics if m in ("nmi", "f1")]
    if clu:
        x, y = embeddings, labels
        if gallery_embeddings is not None:
            x = np.concatenate([embeddings, np.asarray(gallery_embeddings)])
            y = np.concatenate([labels, np.asarray(gallery_labels).ravel()])
        kw = {} if kmeans_niter is None else {"niter": kmeans_niter}
        res = clustering_metrics(x, y, seed=seed, backend=kmeans_backend, nredo=kmeans_nredo,
                                 **kw)
        out.update({m: res[m] for m in clu})
    # Report in a stable order: recall@K ascending, then the rest as requested.
    order = [f"recall@{k}" for k in ks] + [m for m in metrics if m != "recall"]
    return {key: out[key] for key in order if key in out}


def embed(
    embedder: Callable,
    data,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Embed a data set once.

    Args:
        embedder: a keras.Model or any callable mapping an image batch to an embedding
            batch (n, d). keras Models are called with training=False.
        data: a tf.data.Dataset yielding (images, labels) batches (used as batched), or
            a tuple (images, labels) of arrays (split into `batch_size` batches).
        batch_size: batch size for array input.

    Returns:
        (embeddings float32 (n, d), labels (n,)).
    """
    import keras

    is_keras = isinstance(embedder, keras.Model)

    def run(x):
        y = embedder(x, training=False) if is_keras else embedder(x)
        # Eager TF tensors have .numpy(); anything else array-like goes through numpy.
        y = y.numpy() if hasattr(y, "numpy") else np.asarray(y)
        return y.astype(np.float32, copy=False)

    embs, labs = [], []
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise ValueError("array data must be a tuple (images, labels)")
        images, labels = data
        labels = np.asarray(labels)
        for start in range(0, len(labels), batch_size):
            embs.append(run(images[start:start + batch_size]))
        labs = [labels]
    else:
        for batch in data:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError("the dataset must yield (images, labels) batches")
            embs.append(run(batch[0]))
            labs.append(np.asarray(batch[1]))
    if not embs:
        raise ValueError("no data to embed")
    emb = np.concatenate(embs)
    lab = np.concatenate([np.asarray(l).reshape(-1) for l in labs])
    if emb.ndim != 2 or emb.shape[0] != lab.shape[0]:
        raise ValueError(f"embedder returned shape {emb.shape} for {lab.shape[0]} labels")
    return emb, lab


def evaluate(
    embedder: Callable,
    data,
    ks: Sequence[int] = KS_SMALL,
    metrics: Iterable[str] = ALL_METRICS,
    batch_size: int = 256,
    *,
    gallery=None,
    **kwargs,
) -> dict[str, float]:
    """Embed `data` once and compute every requested metric from one neighbour table.

    Args:
        embedder: keras.Model or callable, images -> embeddings (see `embed`).
        data: tf.data.Dataset of (images, labels) batches, or a tuple of arrays.
        ks, metrics: see `evaluate_embeddings`.
        batch_size: batch size when `data` is arrays.
        gallery: optional separate gallery data in the same form (In-Shop style).
        **kwargs: forwarded to `evaluate_embeddings` (clip_k, singleton_queries,
            backend, seed, kmeans_backend, kmeans_niter, kmeans_nredo, block_size).

    Returns:
        The dict of `evaluate_embeddings`.
    """
    emb, lab = embed(embedder, data, batch_size)
    g_emb = g_lab = None
    if gallery is not None:
        g_emb, g_lab = embed(embedder, gallery, batch_size)
    return evaluate_embeddings(emb, lab, ks, metrics, gallery_embeddings=g_emb,
                               gallery_labels=g_lab, **kwargs)
