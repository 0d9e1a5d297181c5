"""Retrieval across groups: golden values, a brute-force reference, edge cases."""

import numpy as np
import pytest

from hdml_tf.evaluation.cross_group import evaluate_across_groups


def _brute_force(x, labels, groups, ks):
    """Per query: rank the other groups' items by cosine similarity (ties: lower
    index first), then Recall@K, AP@R and R-precision, averaged over queries with R > 0."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    rows = []
    for i in range(len(x)):
        gallery = np.flatnonzero(groups != groups[i])
        sims = x[gallery] @ x[i]
        order = gallery[sorted(range(len(gallery)), key=lambda j: (-sims[j], gallery[j]))]
        rel = (labels[order] == labels[i]).astype(float)
        r = int(rel.sum())
        if r == 0:
            continue
        hits = rel[:r]
        precision = np.cumsum(hits) / np.arange(1, r + 1)
        rows.append([float(rel[:k].any()) for k in ks]
                    + [float((precision * hits).sum() / r), float(hits.mean())])
    means = np.mean(rows, axis=0)
    out = {f"recall@{k}": means[n] for n, k in enumerate(ks)}
    out.update({"map@r": means[len(ks)], "r_precision": means[len(ks) + 1]})
    return out, len(rows)


def test_golden_a_same_group_twin_is_not_a_match():
    """Class 0 is drawn twice in group A (identical points) and once in B, a little
    rotated; class 1 likewise. Leave-one-out would match each A item to its A twin.
    Across groups, an A query of class 0 sees B's class-0 point (cos 0.995) before
    B's class-1 point (cos 0.0995): Recall@1 = 1, MAP@R = 1 for every query; the B
    queries have R = 2 (both A items) and rank them first."""
    x = np.array([[1, 0], [1, 0], [1, 0.1], [0, 1], [0, 1], [0.1, 1]], float)
    labels = np.array([0, 0, 0, 1, 1, 1])
    groups = np.array(["A", "A", "B", "A", "A", "B"])
    result = evaluate_across_groups(x, labels, groups, ks=(1, 2))
    assert result == {"recall@1": 1.0, "recall@2": 1.0, "map@r": 1.0, "r_precision": 1.0,
                      "queries": 6}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_a_brute_force_reference(dtype):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 90)
    groups = rng.integers(0, 4, 90)
    x = (rng.normal(size=(90, 5)) + 2 * np.eye(7, 5)[labels]).astype(dtype)
    want, queries = _brute_force(x.astype(np.float64), labels, groups, (1, 2, 4))
    got = evaluate_across_groups(x, labels, groups, ks=(1, 2, 4), backend="numpy")
    assert got.pop("queries") == queries
    assert got == pytest.approx(want, abs=1e-6)


def test_a_class_only_in_its_own_group_is_excluded_or_missed():
    x = np.array([[1, 0], [1, 0.1], [0, 1], [0.2, 1]], float)
    labels = np.array([0, 0, 1, 2])  # classes 1 and 2 appear in one group each
    groups = np.array([0, 1, 0, 1])
    assert evaluate_across_groups(x, labels, groups, ks=(1,))["queries"] == 2
    missed = evaluate_across_groups(x, labels, groups, ks=(1,), singleton_queries="miss")
    assert missed["queries"] == 4 and missed["recall@1"] == 0.5


def test_errors():
    x = np.eye(3)
    with pytest.raises(ValueError, match="two groups"):
        evaluate_across_groups(x, [0, 0, 1], [0, 0, 0])
    with pytest.raises(ValueError, match="retrieval metrics"):
        evaluate_across_groups(x, [0, 0, 1], [0, 1, 1], metrics=("nmi",))
    with pytest.raises(ValueError, match="no query"):
        evaluate_across_groups(x, [0, 1, 2], [0, 1, 1], ks=(1,))
