"""The parts of HDML's objective (hdml_tf.objectives, and the losses of hdml_tf.losses
they use), each on its own.

Three kinds of test per part: the golden value derived in its docstring, a
brute-force loop reference in float32 and float64, and an edge or replica case.
"""

import numpy as np
import pytest
import tensorflow as tf

from hdml_tf import losses, objectives

DTYPES = [np.float32, np.float64]


def softmax_ce(logits, target):
    logits = np.asarray(logits, np.float64)
    m = logits.max()
    return m + np.log(np.exp(logits - m).sum()) - logits[target]


def harden(a, p, n, lam):
    d_pos, d_neg = np.linalg.norm(a - p), np.linalg.norm(a - n)
    return a + (d_pos + lam * (d_neg - d_pos)) / d_neg * (n - a) if d_neg > d_pos else n


# ------------------------------------------------------------------ golden values


def test_golden_values_of_the_docstrings():
    eye = np.eye(2, dtype=np.float32)
    ln = np.log(1 + np.exp(-1))  # 0.31326169
    np.testing.assert_allclose(losses.npair_embedding_loss([0, 1], eye, eye, 0.0), ln,
                               rtol=1e-6)
    rows = objectives.npair_synthesis([[0.0, 0.0]], [[1.0, 0.0]], 0.5,
                                      all_positives=[[1.0, 0.0], [4.0, 0.0]])
    np.testing.assert_allclose(rows, [[0, 0], [1, 0], [2.5, 0]], rtol=1e-6)
    cand = np.array([[1, 0], [0, 0], [0, 0], [0, 1]], np.float32)
    np.testing.assert_allclose(losses.npair_embedding_loss_grouped(eye, cand, 0.0), ln, rtol=1e-6)
    np.testing.assert_allclose(
        objectives.npair_label_ce(np.zeros((6, 5)), np.zeros(6, np.int32), 2),
        2 * np.log(5), rtol=1e-6)
    np.testing.assert_allclose(losses.triplet_loss(
        [[0.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]], 1.0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(objectives.triplet_synthesis(
        [[0.0, 0.0]], [[1.0, 0.0]], [[4.0, 0.0]], 0.5)[2], [2.5, 0.0], rtol=1e-6)
    np.testing.assert_allclose(
        objectives.triplet_label_ce(np.zeros((3, 4)), np.zeros(3, np.int32)), np.log(4),
        rtol=1e-6)


# ---------------------------------------------------------------- loop references


@pytest.mark.parametrize("dtype", DTYPES)
def test_npair_synthesis_and_labels_against_loops(dtype):
    rng = np.random.default_rng(0)
    P, Q, d, lam = 3, 5, 4, 0.3
    a, p = rng.normal(size=(P, d)).astype(dtype), rng.normal(size=(P, d)).astype(dtype)
    cands = rng.normal(size=(Q, d)).astype(dtype)
    rows = objectives.npair_synthesis(a, p, lam, all_positives=cands).numpy()
    expected = list(a) + [harden(a[i], p[i], cands[j], lam) for i in range(P) for j in range(Q)]
    np.testing.assert_allclose(rows, expected, rtol=1e-5 if dtype == np.float32 else 1e-12)
    labels = objectives.npair_synthetic_labels(tf.constant([7, 8, 9]),
                                               tf.constant([1, 2, 3, 4, 5])).numpy()
    assert list(labels) == [7, 8, 9] + [1, 2, 3, 4, 5] * 3  # tile: candidate fastest


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0, 2])
def test_npair_synthetic_loss_against_loops(dtype, offset):
    """Anchor i against its own Q candidates, target offset + i, plus the l2 term."""
    rng = np.random.default_rng(1)
    P, Q, d, reg = 2, 4, 3, 0.05
    a = rng.normal(size=(P, d)).astype(dtype)
    c = rng.normal(size=(P * Q, d)).astype(dtype)
    got = float(losses.npair_embedding_loss_grouped(a, c, reg, offset))
    xent = np.mean([softmax_ce([a[i] @ c[i * Q + j] for j in range(Q)], offset + i)
                    for i in range(P)])
    l2 = 0.25 * reg * ((a.astype(np.float64) ** 2).sum(1).mean()
                       + (c.astype(np.float64) ** 2).sum(1).mean())
    np.testing.assert_allclose(got, xent + l2, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_npair_metric_loss_and_label_ce_against_loops(dtype):
    rng = np.random.default_rng(2)
    P, d, C, reg = 4, 3, 6, 0.01
    a, p = rng.normal(size=(P, d)).astype(dtype), rng.normal(size=(P, d)).astype(dtype)
    got = float(losses.npair_embedding_loss(np.arange(P), a, p, reg))
    expected = np.mean([softmax_ce([a[i] @ p[j] for j in range(P)], i) for i in range(P)])
    expected += 0.25 * reg * ((a.astype(np.float64) ** 2).sum(1).mean()
                              + (p.astype(np.float64) ** 2).sum(1).mean())
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    logits = rng.normal(size=(P + P * P, C)).astype(dtype)
    labels = rng.integers(0, C, P + P * P).astype(np.int32)
    ce = [softmax_ce(logits[r], labels[r]) for r in range(len(labels))]
    np.testing.assert_allclose(float(objectives.npair_label_ce(logits, labels, P)),
                               np.mean(ce[P:]) + np.mean(ce[:P]), rtol=1e-5)


@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_softmax_ce_value_and_gradient_are_tensorflows_kernel(scale):
    """softmax_ce replaces tf.nn.sparse_softmax_cross_entropy_with_logits for speed:
    the same values (a loop in float64 too) and the same gradient, softmax - one-hot,
    also for logits far from 0 (the exp must be taken after subtracting the max)."""
    rng = np.random.default_rng(5)
    logits = tf.constant(scale * rng.normal(size=(37, 11)), tf.float32)
    labels = tf.constant(rng.integers(0, 11, 37), tf.int32)
    upstream = tf.constant(rng.normal(size=37), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(logits)
        ours = losses.softmax_ce(labels, logits)
        theirs = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        ours_sum, theirs_sum = (tf.reduce_sum(upstream * c) for c in (ours, theirs))
    loop = [softmax_ce(logits.numpy()[r], labels.numpy()[r]) for r in range(37)]
    np.testing.assert_allclose(ours, loop, rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6 * scale)
    np.testing.assert_allclose(tape.gradient(ours_sum, logits),
                               tape.gradient(theirs_sum, logits), atol=1e-6)
    assert losses.softmax_ce(labels, tf.cast(logits, tf.bfloat16)).dtype == tf.float32
    # Target distributions: TensorFlow's dense kernel, and one-hot rows as the labels.
    targets = tf.constant(rng.dirichlet(np.ones(11), 37), tf.float32)
    np.testing.assert_allclose(
        losses.softmax_ce(targets, logits),
        tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits),
        rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(losses.softmax_ce(tf.one_hot(labels, 11), logits), ours,
                               rtol=1e-6, atol=1e-6 * scale)


@pytest.mark.parametrize("dtype", DTYPES)
def test_triplet_parts_against_loops(dtype):
    rng = np.random.default_rng(3)
    T, d, lam, margin = 5, 3, 0.4, 1.0
    a, p, n = (rng.normal(size=(T, d)).astype(dtype) for _ in range(3))
    loss = sum(max(((a[t] - p[t]) ** 2).sum() - ((a[t] - n[t]) ** 2).sum() + margin, 0)
               for t in range(T))
    np.testing.assert_allclose(float(losses.triplet_loss(a, p, n, margin)), loss,
                               rtol=1e-5)
    rows = objectives.triplet_synthesis(a, p, n, lam).numpy()
    np.testing.assert_allclose(rows[2 * T:], [harden(a[t], p[t], n[t], lam) for t in range(T)],
                               rtol=1e-5 if dtype == np.float32 else 1e-12)
    j_syn = objectives.Triplet(margin).synthetic_loss(rows, None, objectives.Replicas())
    np.testing.assert_allclose(float(j_syn),
                               float(losses.triplet_loss(*np.split(rows, 3), margin)),
                               rtol=1e-6)
    moved = np.mean([np.linalg.norm(a[t] - n[t]) > np.linalg.norm(a[t] - p[t])
                     for t in range(T)])
    np.testing.assert_allclose(float(tf.reduce_mean(objectives.hardened_fraction(a, p, n))),
                               moved)


# ----------------------------------------------------------------------- edges


def test_lambda_one_keeps_every_negative_and_zero_moves_it_to_d_plus():
    a, p, n = np.zeros((1, 2)), np.array([[1.0, 0.0]]), np.array([[3.0, 4.0]])
    np.testing.assert_allclose(objectives.triplet_synthesis(a, p, n, 1.0)[2], n[0])
    moved = objectives.triplet_synthesis(a, p, n, 0.0)[2].numpy()
    np.testing.assert_allclose(np.linalg.norm(moved), 1.0, rtol=1e-12)


def test_variant_names():
    with pytest.raises(ValueError, match="'npair' or 'triplet'"):
        objectives.variant("lifted")
