"""The evaluation protocol in one call: `evaluate` a model, or `evaluate_embeddings`.

Both embed (or take) the evaluation set once, build one neighbour table and one
clustering, and return every requested metric in a flat dict::

    {"recall@1": ..., "recall@2": ..., "map@r": ..., "r_precision": ..., "nmi": ...,
     "f1": ...}

The rules (leave-one-out, tie rule, singletons, K larger than what a query can retrieve)
are stated in `hdml_tf.evaluation.retrieval`; the clustering protocol in
`hdml_tf.evaluation.clustering`.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np

from hdml_tf.evaluation.clustering import METRICS as CLUSTERING_METRICS
from hdml_tf.evaluation.clustering import clustering_metrics
from hdml_tf.evaluation.retrieval import METRICS as RETRIEVAL_METRICS
from hdml_tf.evaluation.retrieval import neighbour_table, required_k, retrieval_metrics

ALL_METRICS = RETRIEVAL_METRICS + CLUSTERING_METRICS
#: The Recall@K lists of the protocol.
KS_SMALL = (1, 2, 4, 8)  # CUB-200-2011, Cars196
KS_SOP = (1, 10, 100, 1000)  # Stanford Online Products



def normalise_metrics(metrics: Iterable[str]) -> tuple[str, ...]:
    """The requested metric names, lower-cased, in `ALL_METRICS` spelling, without repeats.

    Raises:
        ValueError: on a name that is not a metric.
    """
    out = []
    for m in metrics:
        m = m.lower()
        if m not in ALL_METRICS:
            raise ValueError(f"unknown metric {m!r}; choose from {ALL_METRICS}")
        if m not in out:
            out.append(m)
    return tuple(out)


def _retrieval_part(embeddings, labels, ks, metrics, gallery_embeddings, gallery_labels,
                    clip_k, singleton_queries, backend, block_size):
    """The retrieval metrics of `evaluate_embeddings`, from one neighbour table."""
    need = required_k(ks, labels, gallery_labels, metrics)
    table = neighbour_table(embeddings, labels, gallery_embeddings, gallery_labels, need,
                            clip_k or "recall" not in metrics, backend, block_size)
    return retrieval_metrics(table, labels, gallery_labels, ks, metrics, clip_k=clip_k,
                             singleton_queries=singleton_queries)


def _clustering_part(embeddings, labels, metrics, gallery_embeddings, gallery_labels,
                     seed, backend, niter, nredo):
    """The clustering metrics of `evaluate_embeddings`: with a gallery, of the union."""
    x, y = embeddings, labels
    if gallery_embeddings is not None:
        x = np.concatenate([embeddings, np.asarray(gallery_embeddings)])
        y = np.concatenate([labels, np.asarray(gallery_labels).ravel()])
    kw = {} if niter is None else {"niter": niter}
    res = clustering_metrics(x, y, seed=seed, backend=backend, nredo=nredo, **kw)
    return {m: res[m] for m in metrics}


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
    metrics = normalise_metrics(metrics)
    ks = tuple(int(k) for k in ks)
    embeddings = np.asarray(embeddings)
    labels = np.asarray(labels).ravel()
    gallery = dict(gallery_embeddings=gallery_embeddings, gallery_labels=gallery_labels)
    out: dict[str, float] = {}
    ret = [m for m in metrics if m in RETRIEVAL_METRICS]
    if ret:
        out.update(_retrieval_part(embeddings, labels, ks, ret, **gallery, clip_k=clip_k,
                                   singleton_queries=singleton_queries, backend=backend,
                                   block_size=block_size))
    clu = [m for m in metrics if m in CLUSTERING_METRICS]
    if clu:
        out.update(_clustering_part(embeddings, labels, clu, **gallery, seed=seed,
                                    backend=kmeans_backend, niter=kmeans_niter,
                                    nredo=kmeans_nredo))
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
