"""Tests of hdml_tf.evaluation.clustering: NMI against scikit-learn, pairwise F1 against a
loop over all pairs, golden values, k from the labels, seeding."""

import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from hdml_tf.evaluation import clustering as C
from hdml_tf.evaluation import evaluate_embeddings


def _brute_pairwise_f1(labels, clusters):
    tp = fp = fn = 0
    for i, j in itertools.combinations(range(len(labels)), 2):
        same_class = labels[i] == labels[j]
        same_cluster = clusters[i] == clusters[j]
        tp += same_class and same_cluster
        fp += same_cluster and not same_class
        fn += same_class and not same_cluster
    if tp == 0:
        return 0.0
    p, r = tp / (tp + fp), tp / (tp + fn)
    return 2 * p * r / (p + r)


def test_f1_golden():
    """labels 0,0,0,1,1 and clusters 0,0,1,1,1.
    Same-class pairs: C(3,2) + C(2,2) = 4 = TP + FN. Same-cluster pairs: C(2,2) + C(3,2)
    = 4 = TP + FP. Contingency cells 2,1,2 -> TP = 1 + 0 + 1 = 2.
    P = R = 2/4, F1 = 0.5."""
    assert C.pairwise_f1_from_clusters([0, 0, 0, 1, 1], [0, 0, 1, 1, 1]) == pytest.approx(0.5)


def test_nmi_golden():
    """labels 0,0,1,1 and clusters 0,1,0,1: independent, MI = 0 -> NMI = 0.
    labels 0,0,1,1 and clusters 5,5,9,9: the same partition -> NMI = 1.
    labels 0,0,1,1 and clusters 0,0,0,1: MI = (1/2)ln(4/3)+(1/4)ln(2/3)+(1/4)ln 2
    = 0.2157615543; H(labels) = ln 2, H(clusters) = -(3/4)ln(3/4)-(1/4)ln(1/4) =
    0.5623351446; NMI = MI / ((ln 2 + 0.5623351446)/2) = 0.3437110184."""
    assert C.nmi_from_clusters([0, 0, 1, 1], [0, 1, 0, 1]) == 0.0
    assert C.nmi_from_clusters([0, 0, 1, 1], [5, 5, 9, 9]) == pytest.approx(1.0)
    mi = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3) + 0.25 * math.log(2)
    h2 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    expected = mi / ((math.log(2) + h2) / 2)
    assert expected == pytest.approx(0.3437110184)
    assert C.nmi_from_clusters([0, 0, 1, 1], [0, 0, 0, 1]) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("n,k1,k2", [(50, 3, 4), (400, 30, 25), (1000, 200, 180), (7, 7, 1)])
@pytest.mark.parametrize("seed", [0, 1])
def test_against_sklearn_and_brute_force(n, k1, k2, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k1, n) * 3 + 11  # arbitrary, non-contiguous ids
    clusters = rng.integers(0, k2, n)
    assert C.nmi_from_clusters(labels, clusters) == pytest.approx(
        normalized_mutual_info_score(labels, clusters), rel=1e-10, abs=1e-12)
    if n <= 400:
        assert C.pairwise_f1_from_clusters(labels, clusters) == pytest.approx(
            _brute_pairwise_f1(labels, clusters), rel=1e-12)


@pytest.mark.parametrize("labels,clusters", [
    ([1, 1, 1], [0, 0, 0]),  # one class, one cluster: sklearn says 1
    ([1, 1, 1], [0, 1, 2]),  # one class, all split: 0
    ([0, 1, 2], [0, 0, 0]),  # all singletons, one cluster: 0
    ([0, 1, 2], [4, 5, 6]),  # all singletons, all singleton clusters: 1
])
def test_degenerate_partitions(labels, clusters):
    assert C.nmi_from_clusters(labels, clusters) == pytest.approx(
        normalized_mutual_info_score(labels, clusters))
    assert C.pairwise_f1_from_clusters(labels, clusters) == _brute_pairwise_f1(labels, clusters)


def _blobs(n_classes=7, per_class=6, d=16, seed=0, spread=0.02):
    rng = np.random.default_rng(seed)
    centres = np.eye(d)[:n_classes] if n_classes <= d else rng.standard_normal((n_classes, d))
    labels = np.repeat(np.arange(n_classes), per_class) * 10 + 3
    x = centres[labels // 10] + spread * rng.standard_normal((labels.size, d))
    return x.astype(np.float32), labels


@pytest.mark.parametrize("backend", ["sklearn", "faiss"])
def test_separated_clusters_are_perfect(backend):
    """Seven orthogonal, tight classes: k-means with k = 7 (read from the labels) finds
    them exactly, so NMI = F1 = 1. faiss starts from random points, which leaves two
    centroids in one class in about half of the seeds with one run; ten runs (keeping
    the best objective) find the classes for 98% of seeds, including this one."""
    x, y = _blobs()
    res = C.clustering_metrics(x, y, backend=backend, seed=0, nredo=10)
    assert res == pytest.approx({"nmi": 1.0, "f1": 1.0})


def test_k_is_the_number_of_classes(monkeypatch):
    seen = {}
    real = C.kmeans

    def spy(x, k, **kw):
        seen["k"] = k
        return real(x, k, **kw)

    monkeypatch.setattr(C, "kmeans", spy)
    x, y = _blobs(n_classes=5)
    C.clustering_metrics(x, y)
    assert seen["k"] == 5
    x, y = _blobs(n_classes=11)
    evaluate_embeddings(x, y, metrics=("f1",))
    assert seen["k"] == 11


@pytest.mark.parametrize("backend", ["sklearn", "faiss"])
def test_seeded(backend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    a = C.kmeans(x, 12, seed=3, backend=backend)
    b = C.kmeans(x, 12, seed=3, backend=backend)
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0 and a.max() < 12


def test_auto_backend_threshold(monkeypatch):
    """auto -> scikit-learn for small n*k, faiss above the threshold."""
    calls = []
    import sklearn.cluster

    class FakeKMeans:
        def __init__(self, **kw):
            calls.append("sklearn")

        def fit_predict(self, x):
            return np.zeros(len(x), np.int64)

    monkeypatch.setattr(sklearn.cluster, "KMeans", FakeKMeans)
    x = np.random.default_rng(0).standard_normal((100, 4))
    C.kmeans(x, 3)
    assert calls == ["sklearn"]
    monkeypatch.setattr(C, "SKLEARN_MAX_WORK", 10)
    out = C.kmeans(x, 3)  # faiss now: real clustering, 3 distinct ids
    assert calls == ["sklearn"] and set(out.tolist()) == {0, 1, 2}


def test_invalid():
    x = np.zeros((3, 2), np.float32) + 1
    with pytest.raises(ValueError):
        C.kmeans(x, 4)
    with pytest.raises(ValueError):
        C.pairwise_f1_from_clusters([0, 1], [0, 1, 2])
    with pytest.raises(ValueError):
        C.clustering_metrics(x, np.array([0, 1]))
