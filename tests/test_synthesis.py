"""hdml_tf.synthesis against the authors' formula, one triple at a time."""

import numpy as np
import pytest
import tensorflow as tf

from hdml_tf import objectives, synthesis

DTYPES = [np.float32, np.float64]
TOL = {np.float32: 1e-5, np.float64: 1e-12}


def _one(a, p, n, lam):
    """HDML eq. (4) for one triple: move n toward a unless it is already harder."""
    d_pos, d_neg = np.linalg.norm(a - p), np.linalg.norm(a - n)
    if d_neg > d_pos:
        return a + (d_pos + lam * (d_neg - d_pos)) / d_neg * (n - a)
    return n


def test_golden_values():
    """a = 0, p = (1, 0), n = (4, 0): d+ = 1, d- = 4.

    λ = 0.5: ratio = (1 + 0.5 * 3) / 4 = 0.625 -> n̂ = (2.5, 0).
    λ = 0: n̂ at distance d+ -> (1, 0). λ = 1: n̂ = n.
    """
    a, p, n = [[0.0, 0.0]], [[1.0, 0.0]], [[4.0, 0.0]]
    for lam, expected in [(0.5, [2.5, 0.0]), (0.0, [1.0, 0.0]), (1.0, [4.0, 0.0])]:
        got = synthesis.hardness_aware_negatives(
            tf.constant(a), tf.constant(p), tf.constant(n), lam).numpy()
        np.testing.assert_allclose(got[0], expected, atol=1e-6)


def test_negative_closer_than_positive_is_kept():
    a, p, n = [[0.0, 0.0]], [[3.0, 0.0]], [[0.0, 1.0]]
    got = synthesis.hardness_aware_negatives(tf.constant(a), tf.constant(p),
                                             tf.constant(n), 0.0)
    np.testing.assert_array_equal(got.numpy(), n)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lam", [0.0, 0.3, 0.999])
def test_triplet_synthesis_matches_loop(dtype, lam):
    rng = np.random.default_rng(0)
    a, p, n = (rng.normal(size=(16, 6)).astype(dtype) for _ in range(3))
    got = synthesis.hardness_aware_negatives(a, p, n, lam).numpy()
    ref = np.stack([_one(a[t], p[t], n[t], lam) for t in range(16)])
    np.testing.assert_allclose(got, ref, rtol=TOL[dtype], atol=TOL[dtype])
    assert got.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_npair_tuple_layout_matches_loop(dtype, lam):
    """Rows 0..P-1 are the anchors; row P + i*P + j is p_j hardened toward a_i."""
    rng = np.random.default_rng(1)
    num = 5
    a = rng.normal(size=(num, 3)).astype(dtype)
    p = rng.normal(size=(num, 3)).astype(dtype)
    got = objectives.npair_synthesis(a, p, lam).numpy()
    assert got.shape == (num + num * num, 3)
    np.testing.assert_allclose(got[:num], a)
    for i in range(num):
        for j in range(num):
            np.testing.assert_allclose(got[num + i * num + j], _one(a[i], p[i], p[j], lam),
                                       rtol=TOL[dtype], atol=TOL[dtype])
        # j = i: d- = d+, so the true positive is kept.
        np.testing.assert_allclose(got[num + i * num + i], p[i])


def test_gradients_flow_and_are_finite():
    """No stop_gradient: n̂ depends on a, p and n; n == a (d- = 0) stays finite."""
    a = tf.Variable([[0.0, 0.0], [1.0, 1.0]])
    p = tf.Variable([[1.0, 0.0], [1.0, 2.0]])
    n = tf.Variable([[3.0, 0.0], [1.0, 1.0]])  # second negative sits on its anchor
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(synthesis.hardness_aware_negatives(a, p, n, 0.2))
    grads = tape.gradient(total, [a, p, n])
    for g in grads:
        assert np.all(np.isfinite(g.numpy()))
    # The first triple is hardened, so the result depends on the positive.
    assert np.abs(grads[1].numpy()[0]).sum() > 0


def test_lambda_and_weight_formulas():
    np.testing.assert_allclose(synthesis.hardness_lambda(1e6, 90.0).numpy(),
                               np.exp(-90.0 / 1e6), rtol=1e-6)
    np.testing.assert_allclose(synthesis.hardness_lambda(45.0, 90.0).numpy(),
                               np.exp(-2.0), rtol=1e-6)
    np.testing.assert_allclose(synthesis.metric_weight(5e3, 1e4).numpy(),
                               np.exp(-2.0), rtol=1e-6)


def test_window_update_publishes_each_complete_window_mean():
    """W = 3: values 1, 2, NaN (not recorded), 6 publish (1 + 2 + 6) / 3 = 3 at the 4th
    step; a value of a step that was not applied is not recorded either."""
    total = count = tf.constant(0.0)
    mean = tf.constant(1e6)
    published = []
    for value, keep in ((1.0, True), (2.0, True), (float("nan"), True), (5.0, False),
                        (6.0, True), (9.0, True)):
        total, count, mean = synthesis.window_update(total, count, mean, tf.constant(value),
                                                     tf.constant(keep), 3)
        published.append(float(mean))
    assert published == [1e6, 1e6, 1e6, 1e6, 3.0, 3.0]
    assert (float(total), float(count)) == (9.0, 1.0)
