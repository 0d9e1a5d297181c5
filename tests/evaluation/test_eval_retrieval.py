"""Tests of hdml_tf.evaluation.retrieval: golden values, brute-force loops, edge cases.

Metrics of embeddings go through the one public entry point,
`hdml_tf.evaluation.evaluate_embeddings`; the neighbour table through `retrieval.knn`.
"""

import math

import numpy as np
import pytest

from hdml_tf.evaluation import evaluate_embeddings
from hdml_tf.evaluation import retrieval as R

BACKENDS = ["numpy", "faiss"]


def _recall(x, y, ks, **kwargs):
    """{K: Recall@K} of embeddings ``x`` with labels ``y``."""
    res = evaluate_embeddings(x, y, ks, ("recall",), **kwargs)
    return {k: res[f"recall@{k}"] for k in ks}


def _metric(x, y, name, **kwargs):
    """One of "map@r", "r_precision" of embeddings ``x`` with labels ``y``."""
    return evaluate_embeddings(x, y, (), (name,), **kwargs)[name]


def _circle(degrees):
    a = np.deg2rad(np.asarray(degrees, np.float64))
    return np.stack([np.cos(a), np.sin(a)], axis=1)


# ------------------------------------------------------------------------------------
# Brute-force reference: python loops over all pairs, exact dot products (math.fsum).
# ------------------------------------------------------------------------------------


def _brute_rankings(q, g, exclude_self):
    def unit(v):
        return v / math.sqrt(math.fsum(float(t) * float(t) for t in v))

    qn = [unit(v) for v in np.asarray(q, np.float64)]
    gn = [unit(v) for v in np.asarray(g, np.float64)]
    ranks = []
    for i, a in enumerate(qn):
        sims = []
        for j, b in enumerate(gn):
            if exclude_self and i == j:
                continue
            sims.append((-math.fsum(float(s) * float(t) for s, t in zip(a, b)), j))
        sims.sort()  # decreasing similarity, then increasing index: the tie rule
        ranks.append([j for _, j in sims])
    return ranks


def _brute_metrics(q, ql, g=None, gl=None, ks=(1, 2, 4, 8), singletons="exclude"):
    exclude_self = g is None
    if exclude_self:
        g, gl = q, ql
    ranks = _brute_rankings(q, g, exclude_self)
    rec = {k: [] for k in ks}
    maps, rps = [], []
    for i, rank in enumerate(ranks):
        rel = [gl[j] == ql[i] for j in rank]
        r = sum(rel)
        if r == 0 and singletons == "exclude":
            continue
        for k in ks:
            rec[k].append(1.0 if any(rel[:k]) else 0.0)
        if r == 0:
            maps.append(0.0)
            rps.append(0.0)
            continue
        hits, ap = 0, 0.0
        for pos in range(r):
            if rel[pos]:
                hits += 1
                ap += hits / (pos + 1)
        maps.append(ap / r)
        rps.append(sum(rel[:r]) / r)
    out = {f"recall@{k}": float(np.mean(v)) for k, v in rec.items()}
    out["map@r"] = float(np.mean(maps))
    out["r_precision"] = float(np.mean(rps))
    return out, ranks


def _random_set(n=103, d=5, classes=9, seed=0, dtype=np.float32):
    """Random clustered data with a singleton class and exact duplicate rows."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    labels[0] = classes  # class `classes` has one image: a singleton
    centres = rng.standard_normal((classes + 1, d))
    x = centres[labels] + 0.9 * rng.standard_normal((n, d))
    x[10:14] = x[5]  # duplicates of row 5 (ties), some of another class
    labels[12] = labels[5] + 1
    return x.astype(dtype), labels


# ------------------------------------------------------------------------------------
# Golden values
# ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_golden_circle(backend):
    """Six points on the unit circle; cosine ranking = angular distance ranking.

    p0=0 deg (A), p1=10 (A), p2=25 (B), p3=205 (B), p4=90 (C), p5=100 (C).
    Neighbour orders (angular distances in brackets):
      p0: p1(10) p2(25) p4(90) p5(100) p3(155)   -> first same-class at rank 1
      p1: p0(10) p2(15) p4(80) p5(90)  p3(165)   -> rank 1
      p2: p1(15) p0(25) p4(65) p5(75)  p3(180)   -> rank 5
      p3: p5(105) p4(115) p0(155) p1(165) p2(180) -> rank 5
      p4: p5(10) ...                               -> rank 1
      p5: p4(10) ...                               -> rank 1
    Recall@1 = Recall@4 = 4/6, Recall@5 = 1. Every class has R = 1, so MAP@R and
    R-precision equal Recall@1 = 4/6.
    """
    x = _circle([0, 10, 25, 205, 90, 100])
    y = np.array([0, 0, 1, 1, 2, 2])
    rec = _recall(x, y, (1, 2, 4, 5), backend=backend)
    assert rec == pytest.approx({1: 4 / 6, 2: 4 / 6, 4: 4 / 6, 5: 1.0})
    assert _metric(x, y, "map@r", backend=backend) == pytest.approx(4 / 6)
    assert _metric(x, y, "r_precision", backend=backend) == pytest.approx(4 / 6)
    t = R.knn(x, None, 5, backend=backend)
    np.testing.assert_array_equal(t.indices[2], [1, 0, 4, 5, 3])
    np.testing.assert_array_equal(t.indices[3], [5, 4, 0, 1, 2])


def test_golden_map_at_r_hand_table():
    """Hand-made neighbour table against a gallery with labels 7,7,7,7,3,3.
    Both queries are of class 7, so R = 4.
      query 0 ranks gallery 0,4,1,2,3,5 -> relevance 1,0,1,1:
        MAP@R = (1/4)(1/1 + 2/3 + 3/4) = 29/48, R-precision = 3/4;
      query 1 ranks gallery 4,0,1,2,3,5 -> relevance 0,1,1,1:
        MAP@R = (1/4)(1/2 + 2/3 + 3/4) = 23/48, R-precision = 3/4.
    Means: MAP@R = 52/96 = 13/24, R-precision = 3/4, Recall@1 = 1/2, Recall@2 = 1.
    """
    gallery_labels = np.array([7, 7, 7, 7, 3, 3])
    idx = np.array([[0, 4, 1, 2, 3, 5], [4, 0, 1, 2, 3, 5]], np.int32)
    t = R.Neighbours(idx, np.zeros(idx.shape, np.float32), False, 6)
    res = R.retrieval_metrics(t, np.array([7, 7]), gallery_labels, (1, 2),
                              ("recall", "map@r", "r_precision"))
    assert res == pytest.approx({"recall@1": 0.5, "recall@2": 1.0, "map@r": 13 / 24,
                                 "r_precision": 0.75})


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_identical_points(backend):
    """Five identical points: all similarities tie, so by the tie rule each query's
    neighbours are the other indices in increasing order. Labels 0,1,0,1,1:
    nearest of 0 is 1 (miss), of 1 is 0 (miss), of 2 is 0 (hit), of 3 is 0 (miss), of
    4 is 0 (miss): Recall@1 = 1/5. Recall@2: q0 {1,2} hit, q1 {0,2} miss, q2 {0,1} hit,
    q3 {0,1} hit, q4 {0,1} hit -> 4/5.
    """
    x = np.tile(np.array([[0.3, -1.2, 2.0]], np.float32), (5, 1))
    y = np.array([0, 1, 0, 1, 1])
    t = R.knn(x, None, 4, backend=backend)
    for i in range(5):
        assert t.indices[i].tolist() == [j for j in range(5) if j != i]
    assert _recall(x, y, (1, 2), backend=backend) == pytest.approx({1: 0.2, 2: 0.8})


@pytest.mark.parametrize("backend", BACKENDS)
def test_tie_at_the_cut_takes_lower_index(backend):
    """Query 0 at angle 0; items 1 (30 deg, wrong class), 2 and 3 both at exactly the same
    vector (60 deg; 2 wrong class, 3 right class), item 4 far away. With K = 2 the cut
    falls inside the tie {2, 3}: the lower index 2 is taken, so Recall@2 of query 0 is
    a miss and Recall@3 a hit."""
    x = _circle([0, 30, 60, 60, 180]).astype(np.float32)
    y = np.array([0, 1, 2, 0, 3])
    t = R.knn(x[:1], x[1:], 2, backend=backend)
    assert t.indices[0].tolist() == [0, 1]  # gallery indices of items 1 and 2
    rec = _recall(x[:1], y[:1], (2, 3), gallery_embeddings=x[1:], gallery_labels=y[1:],
                  backend=backend)
    assert rec == {2: 0.0, 3: 1.0}


# ------------------------------------------------------------------------------------
# Brute-force references
# ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("singletons", ["exclude", "miss"])
def test_leave_one_out_matches_brute_force(dtype, backend, singletons):
    x, y = _random_set(dtype=dtype)
    ks = (1, 2, 4, 8, 16)
    expected, ranks = _brute_metrics(x, y, ks=ks, singletons=singletons)
    got = evaluate_embeddings(x, y, ks, ("recall", "map@r", "r_precision"), backend=backend,
                              block_size=10, singleton_queries=singletons)
    assert got == pytest.approx(expected, abs=1e-12)
    t = R.knn(x, None, 20, backend=backend, block_size=7)  # 7 does not divide 103
    np.testing.assert_array_equal(t.indices, np.array([r[:20] for r in ranks]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_query_gallery_matches_brute_force(dtype, backend):
    x, y = _random_set(n=120, seed=3, dtype=dtype)
    q, ql, g, gl = x[:40], y[:40], x[40:], y[40:]
    ql = ql.copy()
    ql[0] = 99  # a query class absent from the gallery: singleton rule applies
    expected, ranks = _brute_metrics(q, ql, g, gl, ks=(1, 5, 10))
    got = evaluate_embeddings(q, ql, (1, 5, 10), ("recall", "map@r", "r_precision"),
                              gallery_embeddings=g, gallery_labels=gl, backend=backend,
                              block_size=9)
    assert got == pytest.approx(expected, abs=1e-12)
    t = R.knn(q, g, 80, backend=backend, block_size=9)  # all 80 gallery items
    np.testing.assert_array_equal(t.indices, np.array(ranks))


def test_backends_agree_on_larger_data():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 50, 3000)
    x = (rng.standard_normal((50, 32))[y] + rng.standard_normal((3000, 32))).astype(np.float32)
    a = R.knn(x, None, 40, backend="numpy")
    b = R.knn(x, None, 40, backend="faiss", block_size=1000)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.similarities, b.similarities, atol=1e-5)
    assert a.indices.dtype == np.int32 and a.similarities.dtype == np.float32


# ------------------------------------------------------------------------------------
# Edge cases
# ------------------------------------------------------------------------------------


def test_singleton_rule():
    """Labels 0,0,1 with points at 0, 10, 20 deg. Query 2 is a singleton (class 1 has no
    other image). Queries 0 and 1 are each other's nearest: hits.
    exclude: Recall@1 = 2/2 = 1; miss: 2/3. MAP@R likewise 1 and 2/3."""
    x = _circle([0, 10, 20])
    y = np.array([0, 0, 1])
    assert _recall(x, y, (1,)) == {1: 1.0}
    assert _recall(x, y, (1,), singleton_queries="miss") == {1: pytest.approx(2 / 3)}
    assert _metric(x, y, "map@r") == pytest.approx(1.0)
    assert _metric(x, y, "map@r", singleton_queries="miss") == pytest.approx(2 / 3)
    with pytest.warns(UserWarning):
        assert math.isnan(_recall(x, np.array([0, 1, 2]), (1,))[1])


def test_k_larger_than_gallery():
    """Four points leave-one-out: a query can retrieve 3. K = 4 is an error unless
    clip_k=True, when it is clipped to 3 and every non-singleton query is a hit."""
    x = _circle([0, 90, 180, 270])
    y = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="at most 3"):
        _recall(x, y, (1, 4))
    with pytest.raises(ValueError, match="at most 3"):
        R.knn(x, None, 4)
    rec = _recall(x, y, (1, 4), clip_k=True)
    # Query 0 (0 deg): neighbours 90 and 270 tie at cos = 0 (floating point may break
    # the tie either way), 180 last: Recall@1 = 0 for every query.
    assert rec == {1: 0.0, 4: 1.0}
    with pytest.raises(ValueError, match="at most 2"):
        _recall(x[:2], y[:2], (3,), gallery_embeddings=x[2:], gallery_labels=y[2:])


def test_invalid_inputs():
    x = _circle([0, 10, 20])
    with pytest.raises(ValueError, match="NaN"):
        R.knn(np.array([[np.nan, 1.0], [0.0, 1.0]]), None, 1)
    with pytest.raises(ValueError, match="labels"):
        _recall(x, np.array([0, 1]), (1,))
    with pytest.raises(ValueError, match="backend"):
        R.knn(x, None, 1, backend="gpu")
    with pytest.raises(ValueError, match="gallery"):
        _recall(x, np.array([0, 0, 1]), (1,), gallery_embeddings=x)


def test_inputs_are_normalised():
    """Scaling an embedding does not change cosine neighbours."""
    x, y = _random_set()
    scale = np.random.default_rng(0).uniform(0.1, 10, (x.shape[0], 1)).astype(np.float32)
    a = _recall(x, y, (1, 4))
    b = _recall(x * scale, y, (1, 4))
    assert a == pytest.approx(b)


def test_k_rule_is_one_function():
    """max_retrievable: N - 1 leave-one-out, the gallery size otherwise; k_within_reach
    keeps a K within it, clips it with clip_k, and otherwise names what was asked."""
    assert R.max_retrievable(5, exclude_self=True) == 4
    assert R.max_retrievable(5, exclude_self=False) == 5
    assert R.k_within_reach(4, 4, clip_k=False, asked="K=4") == 4
    assert R.k_within_reach(9, 4, clip_k=True, asked="K=9") == 4
    with pytest.raises(ValueError, match="Recall@9 asked but a query can retrieve at most 4"):
        R.k_within_reach(9, 4, clip_k=False, asked="Recall@9")
