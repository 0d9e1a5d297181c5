"""Clustering quality of embeddings: NMI and pairwise F1 of a k-means clustering.

The protocol (Song et al., CVPR 2016; Zheng et al., CVPR 2019): cluster the L2-normalised
test embeddings with k-means, k = the number of classes *in the evaluated set* (counted
from the labels, never hard-coded: the official HDML code fixed it at 98), and compare the
clusters with the classes.

* NMI is exactly scikit-learn's ``normalized_mutual_info_score`` (arithmetic mean of the
  two entropies as normaliser, natural log; 1.0 when both partitions are a single block;
  0.0 when the mutual information is 0), computed here from the same sparse contingency
  table as F1 and tested against scikit-learn.
* F1 is the pairwise clustering F1 of the DML literature (Manning et al., "Introduction
  to Information Retrieval", 2008, section 16.3; used by Song et al. 2016): over all
  unordered pairs of points, TP = same cluster and same class, FP = same cluster and
  different class, FN = different cluster and same class; precision P = TP / (TP + FP),
  recall R = TP / (TP + FN), F1 = 2PR / (P + R). With n_ij the contingency counts and
  a_i, b_j its row and column sums, TP = sum C(n_ij, 2), TP + FN = sum C(a_i, 2) and
  TP + FP = sum C(b_j, 2): O(n + table) instead of O(n^2) pairs. F1 is 0 when TP = 0
  (this covers the undefined case where no pair shares a class or a cluster).

k-means backends: scikit-learn (k-means++ initialisation, Lloyd iterations to
convergence; what most DML code reports with) while n * k <= SKLEARN_MAX_WORK, faiss
beyond, where scikit-learn's k-means++ initialisation alone would take hours (Stanford
Online Products: 60,502 points, 11,316 clusters). faiss uses random initial centroids
drawn from the points (no k-means++), a fixed number of Lloyd iterations (FAISS_NITER by
default) and one run (`nredo`); a random start can leave two centroids in one class, so
faiss NMI/F1 can be slightly below what a k-means++ start would give. Both are seeded.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from hdml_tf.evaluation.retrieval import l2_normalize

try:
    import faiss
except ImportError:  # pragma: no cover
    faiss = None

#: The metrics computed here, from one clustering.
METRICS = ("nmi", "f1")
#: Largest n * k clustered with scikit-learn under backend="auto" (CUB: 5,924 x 100,
#: Cars196: 8,131 x 98, both well below; SOP: 60,502 x 11,316, far above).
SKLEARN_MAX_WORK = 50_000_000
#: Cap on the Lloyd iterations of faiss k-means. Observed with faiss 1.15: it ran
#: fewer once the objective stopped changing (len(Kmeans.obj) == 3 with niter=20 on the
#: benchmark's generated SOP-size data).
#: At SOP size one iteration took about 3 s on two unloaded cores (about 15 to 20 s
#: with the machine shared), so the cap bounds k-means at about a minute unloaded;
#: see benchmarks/evaluation.py.
FAISS_NITER = 20


def kmeans(
    embeddings: np.ndarray,
    n_clusters: int,
    *,
    seed: int = 0,
    backend: str = "auto",
    niter: int = FAISS_NITER,
    nredo: int = 1,
) -> np.ndarray:
    """Seeded k-means of L2-normalised embeddings (Euclidean k-means on the sphere).

    Args:
        embeddings: float array (n, d); normalised here.
        n_clusters: k, 1 <= k <= n.
        seed: random seed of the initialisation.
        backend: "sklearn", "faiss" or "auto" (see the module docstring).
        niter: Lloyd iterations for faiss (scikit-learn iterates to convergence).
        nredo: independent runs (scikit-learn's n_init), the one with the lowest
            k-means objective is kept. A start can seed two centroids in one class and
            none in another (a local optimum Lloyd does not leave), most often with
            faiss's random start; more runs make that less likely at nredo times the
            cost. Default 1 (older DML code used scikit-learn's former default of 10).

    Returns:
        int64 array (n,) of cluster ids in [0, n_clusters).
    """
    x = l2_normalize(embeddings)
    n = x.shape[0]
    if not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters={n_clusters} must be in [1, n={n}]")
    if backend == "auto":
        backend = ("sklearn" if n * n_clusters <= SKLEARN_MAX_WORK or faiss is None
                   else "faiss")
    if n_clusters == 1:
        return np.zeros(n, np.int64)
    if backend == "sklearn":
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=n_clusters, n_init=int(nredo), random_state=seed)
        return km.fit_predict(x.astype(np.float64)).astype(np.int64)
    if backend == "faiss":
        if faiss is None:
            raise ImportError("backend='faiss' needs faiss-cpu")
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        # max_points_per_centroid large: cluster every point, never a subsample;
        # min_points_per_centroid 1: silence the "too few points" warning, since the
        # protocol has ~5 points per class on SOP by design.
        km = faiss.Kmeans(x32.shape[1], int(n_clusters), niter=int(niter), seed=int(seed),
                          nredo=int(nredo), verbose=False, max_points_per_centroid=1 << 30,
                          min_points_per_centroid=1)
        km.train(x32)
        _, assign = km.index.search(x32, 1)
        return assign.ravel().astype(np.int64)
    raise ValueError(f"backend must be 'auto', 'sklearn' or 'faiss', got {backend!r}")


def contingency(labels: np.ndarray, clusters: np.ndarray) -> sp.csr_matrix:
    """Sparse class-by-cluster count table n_ij (int64), any hashable int labels."""
    labels = np.asarray(labels).ravel()
    clusters = np.asarray(clusters).ravel()
    if labels.shape != clusters.shape:
        raise ValueError(f"labels {labels.shape} and clusters {clusters.shape} differ")
    _, li = np.unique(labels, return_inverse=True)
    _, ci = np.unique(clusters, return_inverse=True)
    table = sp.coo_matrix((np.ones(labels.size, np.int64), (li.ravel(), ci.ravel())),
                          shape=(li.max(initial=-1) + 1, ci.max(initial=-1) + 1))
    return table.tocsr()  # sums duplicate entries


def _entropy(counts: np.ndarray) -> float:
    counts = counts[counts > 0].astype(np.float64)
    total = counts.sum()
    p = counts / total
    return float(-(p * (np.log(counts) - np.log(total))).sum())


def nmi_from_clusters(labels: np.ndarray, clusters: np.ndarray) -> float:
    """NMI(labels, clusters) as scikit-learn's normalized_mutual_info_score defines it.

    MI = sum_ij (n_ij / n) log(n n_ij / (a_i b_j)); NMI = MI / ((H(labels) + H(clusters))
    / 2); 1.0 when both are single blocks; 0.0 when MI = 0.
    """
    table = contingency(labels, clusters)
    n_classes, n_clust = table.shape
    if n_classes == n_clust == 1 or n_classes == n_clust == 0:
        return 1.0
    n = float(table.sum())
    a = np.asarray(table.sum(axis=1)).ravel().astype(np.float64)
    b = np.asarray(table.sum(axis=0)).ravel().astype(np.float64)
    coo = table.tocoo()
    nij = coo.data.astype(np.float64)
    mi = float(np.sum(nij / n * (np.log(nij) + np.log(n) - np.log(a[coo.row])
                                 - np.log(b[coo.col]))))
    mi = max(mi, 0.0)  # round-off can make an independent pair slightly negative
    if mi == 0.0:
        return 0.0
    return float(mi / ((_entropy(a) + _entropy(b)) / 2.0))


def _pairs(x: np.ndarray) -> float:
    x = x.astype(np.float64)  # float: C(n, 2) sums overflow nothing up to 1e15 pairs
    return float(np.sum(x * (x - 1) / 2.0))


def pairwise_f1_from_clusters(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Pairwise clustering F1 (see the module docstring), from the contingency table."""
    table = contingency(labels, clusters)
    tp = _pairs(table.data)
    if tp == 0:
        return 0.0
    tp_fn = _pairs(np.asarray(table.sum(axis=1)).ravel())  # same class
    tp_fp = _pairs(np.asarray(table.sum(axis=0)).ravel())  # same cluster
    precision, recall = tp / tp_fp, tp / tp_fn
    return float(2 * precision * recall / (precision + recall))


def clustering_metrics(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    n_clusters: int | None = None,
    seed: int = 0,
    backend: str = "auto",
    niter: int = FAISS_NITER,
    nredo: int = 1,
) -> dict[str, float]:
    """NMI and pairwise F1 of one k-means clustering.

    Args:
        embeddings: float array (n, d).
        labels: int array (n,).
        n_clusters: k; default (and the protocol): the number of distinct labels.
        seed, backend, niter, nredo: see `kmeans`.

    Returns:
        {"nmi": ..., "f1": ...}.
    """
    labels = np.asarray(labels).ravel()
    if labels.shape[0] != np.asarray(embeddings).shape[0]:
        raise ValueError("embeddings and labels have different lengths")
    k = int(np.unique(labels).size) if n_clusters is None else int(n_clusters)
    clusters = kmeans(embeddings, k, seed=seed, backend=backend, niter=niter,
                      nredo=nredo)
    return {"nmi": nmi_from_clusters(labels, clusters),
            "f1": pairwise_f1_from_clusters(labels, clusters)}
