"""hdml_tf.losses, hdml_tf.tfa_losses and hdml_tf.ops: golden values, loop references,
and edge cases.

The loop references below restate the TensorFlow Addons 0.23 definitions one pair or
triplet at a time (TFA itself does not import with Keras 3), so agreement with them is
agreement with TFA's numbers.
"""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from hdml_tf import losses, ops, tfa_losses

DTYPES = [np.float32, np.float64]
TOL = {np.float32: 2e-5, np.float64: 1e-10}


def _dist(x, metric="L2"):
    n = len(x)
    d = np.zeros((n, n), x.dtype)
    for i, j in itertools.product(range(n), range(n)):
        if metric == "angular":
            xi, xj = x[i] / np.linalg.norm(x[i]), x[j] / np.linalg.norm(x[j])
            d[i, j] = max(1.0 - xi @ xj, 0.0)
        elif i != j:
            sq = np.sum((x[i] - x[j]) ** 2)
            d[i, j] = sq if metric == "squared-L2" else np.sqrt(sq)
    return d


def _data(dtype, n=12, dim=5, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n).astype(np.int32)
    emb = rng.normal(size=(n, dim)).astype(dtype)
    return labels, emb


# -------------------------------------------------------------------------- ops


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", ["L2", "squared-L2", "angular"])
def test_distance_matrix_matches_loops(dtype, metric):
    _, emb = _data(dtype)
    got = ops.distance_matrix(tf.constant(emb), metric).numpy()
    np.testing.assert_allclose(got, _dist(emb, metric), atol=TOL[dtype] * 10)


def test_distance_gradient_finite_at_zero_distance():
    """Duplicate rows have distance 0: sqrt'(0) is infinite, the safe sqrt gives 0."""
    x = tf.Variable([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]])
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(ops.pairwise_distance(x))
    grad = tape.gradient(total, x).numpy()
    assert np.all(np.isfinite(grad))
    # golden: d(x0,x2) = d(x1,x2) = sqrt(2); counted twice each in the sum.
    np.testing.assert_allclose(total.numpy(), 4 * np.sqrt(2.0), rtol=1e-6)


def test_masks():
    labels = tf.constant([0, 1, 0])
    np.testing.assert_array_equal(ops.positive_mask(labels).numpy(),
                                  [[0, 0, 1], [0, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(ops.negative_mask(labels).numpy(),
                                  [[0, 1, 0], [1, 0, 1], [0, 1, 0]])


def test_unknown_distance_metric_is_named():
    with pytest.raises(ValueError, match="cosine"):
        ops.distance_matrix(tf.ones((2, 2)), "cosine")


# ----------------------------------------------------------------------- N-pair


def _npairs_ref(labels, logits):
    total = 0.0
    for i in range(len(labels)):
        target = (labels == labels[i]).astype(np.float64)
        target /= target.sum()
        row = logits[i] - logits[i].max()
        log_softmax = row - np.log(np.exp(row).sum())
        total += -(target * log_softmax).sum()
    return total / len(labels)


@pytest.mark.parametrize("dtype", DTYPES)
def test_npair_embedding_loss_matches_loop_reference(dtype):
    rng = np.random.default_rng(1)
    labels = np.array([3, 1, 4, 1, 5], np.int32)  # a repeated label: generalised targets
    a = rng.normal(size=(5, 4)).astype(dtype)
    p = rng.normal(size=(5, 4)).astype(dtype)
    got = losses.npair_embedding_loss(labels, a, p, l2_reg=0.0).numpy()
    np.testing.assert_allclose(got, _npairs_ref(labels, a @ p.T), rtol=TOL[dtype])
    got_reg = losses.npair_embedding_loss(labels, a, p, l2_reg=0.3).numpy()
    l2 = 0.25 * 0.3 * (np.mean((a ** 2).sum(1)) + np.mean((p ** 2).sum(1)))
    np.testing.assert_allclose(got_reg, _npairs_ref(labels, a @ p.T) + l2, rtol=TOL[dtype])
    # TFA's npairs_loss takes the similarity matrix: same value.
    np.testing.assert_allclose(tfa_losses.npairs_loss(labels, a @ p.T).numpy(),
                               _npairs_ref(labels, a @ p.T), rtol=TOL[dtype])


def test_npair_golden_value():
    """Orthonormal anchors equal to their positives: logits = identity matrix.

    Each row's cross-entropy is -log(e / (e + (P - 1))); with P = 3:
    log(e + 2) - 1 = 0.551444713932051.
    """
    eye = np.eye(3, dtype=np.float32)
    got = losses.npair_embedding_loss([0, 1, 2], eye, eye).numpy()
    np.testing.assert_allclose(got, np.log(np.e + 2) - 1, rtol=1e-6)
    np.testing.assert_allclose(got, 0.551444713932051, rtol=1e-6)


def test_npair_grouped_equals_npair_when_candidates_are_the_positives():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(4, 3)).astype(np.float32)
    p = rng.normal(size=(4, 3)).astype(np.float32)
    candidates = np.tile(p, (4, 1))  # row i*P + j = p_j
    np.testing.assert_allclose(
        losses.npair_embedding_loss_grouped(a, candidates).numpy(),
        losses.npair_embedding_loss(np.arange(4), a, p).numpy(), rtol=1e-6)


# ---------------------------------------------------------------------- triplet


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_triplet_loss_matches_loop(dtype, squared, reduction):
    rng = np.random.default_rng(3)
    a, p, n = (rng.normal(size=(6, 4)).astype(dtype) for _ in range(3))
    ref = []
    for t in range(6):
        dp, dn = np.sum((a[t] - p[t]) ** 2), np.sum((a[t] - n[t]) ** 2)
        if not squared:
            dp, dn = np.sqrt(dp), np.sqrt(dn)
        ref.append(max(dp - dn + 0.7, 0.0))
    ref = {"sum": np.sum(ref), "mean": np.mean(ref), "none": np.array(ref)}[reduction]
    got = losses.triplet_loss(a, p, n, margin=0.7, squared=squared, reduction=reduction)
    np.testing.assert_allclose(got.numpy(), ref, rtol=TOL[dtype] * 10, atol=TOL[dtype])


def test_triplet_golden_value():
    """a=(0,0), p=(1,0), n=(2,0): squared d+ = 1, d- = 4, margin 1 -> max(1-4+1, 0) = 0;
    n=(1,1): d- = 2 -> max(1 - 2 + 1, 0) = 0... use n=(0.5,0): d- = 0.25 -> 1.75."""
    a, p = np.array([[0.0, 0.0]] * 2, np.float32), np.array([[1.0, 0.0]] * 2, np.float32)
    n = np.array([[2.0, 0.0], [0.5, 0.0]], np.float32)
    np.testing.assert_allclose(losses.triplet_loss(a, p, n).numpy(), 1.75, rtol=1e-6)


def _semihard_ref(labels, emb, margin, metric):
    d = _dist(emb, metric)
    n = len(labels)
    total, count = 0.0, 0
    for a in range(n):
        negs = [k for k in range(n) if labels[k] != labels[a]]
        for p in range(n):
            if p == a or labels[p] != labels[a]:
                continue
            count += 1
            farther = [d[a, k] for k in negs if d[a, k] > d[a, p]]
            if farther:
                neg = min(farther)
            elif negs:
                neg = max(d[a, k] for k in negs)
            else:  # TFA's masked maximum of an empty row: the row minimum
                neg = d[a].min()
            total += max(margin + d[a, p] - neg, 0.0)
    return total / count if count else 0.0


def _hard_ref(labels, emb, margin, soft, metric):
    d = _dist(emb, metric)
    n = len(labels)
    out = []
    for a in range(n):
        pos = [d[a, k] for k in range(n) if k != a and labels[k] == labels[a]]
        neg = [d[a, k] for k in range(n) if labels[k] != labels[a]]
        hp = max(pos) if pos else d[a].min()
        hn = min(neg) if neg else d[a].max()
        out.append(np.log1p(np.exp(hp - hn)) if soft else max(hp - hn + margin, 0.0))
    return np.mean(out)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", ["L2", "squared-L2", "angular"])
def test_triplet_semihard_matches_loop(dtype, metric):
    labels, emb = _data(dtype, n=14, classes=4, seed=5)
    got = tfa_losses.triplet_semihard_loss(labels, emb, margin=1.0, distance_metric=metric)
    np.testing.assert_allclose(got.numpy(), _semihard_ref(labels, emb, 1.0, metric),
                               rtol=TOL[dtype] * 10, atol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", ["L2", "squared-L2", "angular"])
@pytest.mark.parametrize("soft", [False, True])
def test_triplet_hard_matches_loop(dtype, metric, soft):
    labels, emb = _data(dtype, n=10, classes=3, seed=6)
    got = tfa_losses.triplet_hard_loss(labels, emb, margin=0.5, soft=soft,
                                       distance_metric=metric)
    np.testing.assert_allclose(got.numpy(), _hard_ref(labels, emb, 0.5, soft, metric),
                               rtol=TOL[dtype] * 10, atol=TOL[dtype])


def test_triplet_semihard_golden_value():
    """1-D points, labels [0, 0, 1, 1] at [0, 1, 3, 10], L2, margin 1.

    Anchor 0, positive 1 (d=1): negatives at 3 and 10, closest farther one is 3 ->
    max(1 + 1 - 3, 0) = 0. Anchor 1, positive 0 (d=1): negatives at 2, 9 -> 2 ->
    max(1 + 1 - 2, 0) = 0. Anchor 2, positive 3 (d=7): no negative farther than 7
    (3 and 2 away), take the farthest, 3 -> 1 + 7 - 3 = 5. Anchor 3, positive 2 (d=7):
    negatives at 10 and 9 both farther, take 9 -> 1 + 7 - 9 = 0 -> 0. Mean = 5/4.
    """
    emb = np.array([[0.0], [1.0], [3.0], [10.0]], np.float32)
    got = tfa_losses.triplet_semihard_loss([0, 0, 1, 1], emb).numpy()
    np.testing.assert_allclose(got, 1.25, rtol=1e-6)


def _lifted_ref(labels, emb, margin):
    d = _dist(emb, "L2")
    n = len(labels)
    total, count = 0.0, 0
    for i, j in itertools.product(range(n), range(n)):
        if i == j or labels[i] != labels[j]:
            continue
        count += 1
        terms = [margin - d[i, k] for k in range(n) if labels[k] != labels[i]]
        terms += [margin - d[j, k] for k in range(n) if labels[k] != labels[j]]
        # log-sum-exp by np.logaddexp (no overflow or underflow); no negatives: -inf
        j_ij = (np.logaddexp.reduce(terms) if terms else -np.inf) + d[i, j]
        total += max(j_ij, 0.0) ** 2
    return total / (2.0 * count) if count else 0.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_lifted_struct_matches_loop(dtype):
    labels, emb = _data(dtype, n=10, classes=3, seed=7)
    got = tfa_losses.lifted_struct_loss(labels, emb, margin=1.0).numpy()
    np.testing.assert_allclose(got, _lifted_ref(labels, emb, 1.0), rtol=TOL[dtype] * 10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lifted_struct_large_distances_match_loop(dtype):
    """Distances ~1e3: exp(margin - d) underflows and exp(d) overflows unless the
    log-sum-exp is computed stably; the reference uses np.logaddexp."""
    labels, emb = _data(dtype, n=8, classes=2, seed=8)
    got = tfa_losses.lifted_struct_loss(labels, emb * 1e3, margin=1.0).numpy()
    want = _lifted_ref(labels, emb * 1e3, 1.0)
    assert want > 1e4  # the regime where a naive exp would overflow
    np.testing.assert_allclose(got, want, rtol=TOL[dtype] * 10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_contrastive_matches_formula(dtype):
    y = np.array([1, 0, 0, 1])
    d = np.array([0.5, 0.2, 1.5, 2.0], dtype)
    ref = [0.25, 0.64, 0.0, 4.0]  # y d^2 + (1 - y) max(1 - d, 0)^2
    np.testing.assert_allclose(tfa_losses.contrastive_loss(y, d).numpy(), ref, rtol=1e-6)
    np.testing.assert_allclose(tfa_losses.ContrastiveLoss()(y, d).numpy(), np.mean(ref),
                               rtol=1e-6)


# ------------------------------------------------------------------- edge cases


_EMPTY_CASES = [
    (tfa_losses.triplet_semihard_loss, lambda l, e: _semihard_ref(l, e, 1.0, "L2")),
    (tfa_losses.triplet_hard_loss, lambda l, e: _hard_ref(l, e, 1.0, False, "L2")),
    (tfa_losses.lifted_struct_loss, lambda l, e: _lifted_ref(l, e, 1.0)),
]


@pytest.mark.parametrize("fn,ref", _EMPTY_CASES)
def test_no_positive_pairs(fn, ref):
    """All labels distinct: TFA divides 0 by 0 (NaN); we return 0 for semihard and
    lifted, and batch-hard takes the row minimum as the hardest positive of an empty
    row (0, the anchor itself), as TFA does: the loop references encode both."""
    emb = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    labels = np.arange(4)
    want = ref(labels, emb)
    if fn is not tfa_losses.triplet_hard_loss:
        assert want == 0.0
    np.testing.assert_allclose(fn(labels, emb).numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fn,ref", _EMPTY_CASES)
def test_single_class_batch(fn, ref):
    """No negatives: semihard and batch-hard take TFA's masked extrema of an empty row,
    lifted has an empty log-sum-exp (-inf, so 0); as the loop references."""
    emb = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    labels = np.zeros(5, np.int32)
    np.testing.assert_allclose(fn(labels, emb).numpy(), ref(labels, emb), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("fn", [
    lambda l, e: tfa_losses.triplet_semihard_loss(l, e),
    lambda l, e: tfa_losses.triplet_hard_loss(l, e),
    lambda l, e: tfa_losses.lifted_struct_loss(l, e),
    lambda l, e: losses.npair_embedding_loss(l[:3], e[:3], e[3:], l2_reg=0.1),
    lambda l, e: losses.triplet_loss(e[:2], e[2:4], e[4:], squared=False),
])
def test_gradients_finite_with_duplicate_embeddings(fn):
    """Identical rows make distances exactly 0, where a naive sqrt has a NaN gradient."""
    emb = tf.Variable(np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 0], [1, 0]], np.float32))
    labels = tf.constant([0, 0, 1, 1, 0, 0])
    with tf.GradientTape() as tape:
        value = fn(labels, emb)
    grad = tape.gradient(value, emb)
    assert np.all(np.isfinite(grad.numpy()))


def test_half_precision_inputs_computed_in_float32():
    labels, emb = _data(np.float32)
    emb16 = emb.astype(np.float16)
    ref = tfa_losses.triplet_semihard_loss(labels, emb16.astype(np.float32)).numpy()
    got = tfa_losses.triplet_semihard_loss(labels, tf.constant(emb16))
    assert got.dtype == tf.float32
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-6)


# --------------------------------------------------------------- Keras wrappers


@pytest.mark.parametrize("loss", [
    losses.NPairEmbeddingLoss(l2_reg=0.02),
    tfa_losses.NpairsLoss(),
    losses.TripletLoss(margin=0.3, squared=False, triplet_reduction="mean"),
    tfa_losses.TripletSemiHardLoss(margin=0.4, distance_metric="angular"),
    tfa_losses.TripletHardLoss(margin=0.2, soft=True, distance_metric="squared-L2"),
    tfa_losses.LiftedStructLoss(margin=0.6),
    tfa_losses.ContrastiveLoss(margin=2.0),
])
def test_wrapper_config_round_trip(loss):
    config = keras.saving.serialize_keras_object(loss)
    clone = keras.saving.deserialize_keras_object(config)
    assert type(clone) is type(loss)
    assert clone.get_config() == loss.get_config()


def test_wrappers_equal_functions():
    labels, emb = _data(np.float32, n=12)
    np.testing.assert_allclose(
        tfa_losses.TripletSemiHardLoss(margin=0.4)(labels, emb).numpy(),
        tfa_losses.triplet_semihard_loss(labels, emb, margin=0.4).numpy(), rtol=1e-6)
    np.testing.assert_allclose(
        losses.NPairEmbeddingLoss(l2_reg=0.1)(labels[:6], emb).numpy(),
        losses.npair_embedding_loss(labels[:6], emb[:6], emb[6:], l2_reg=0.1).numpy(),
        rtol=1e-6)
    np.testing.assert_allclose(
        losses.TripletLoss()(np.zeros(12), emb).numpy(),
        losses.triplet_loss(emb[:4], emb[4:8], emb[8:]).numpy(), rtol=1e-6)


def test_wrapper_trains_in_fit():
    """A plain Keras model can use a hdml_tf loss in compile/fit, as with TFA."""
    x = np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    model.compile(optimizer="adam", loss=tfa_losses.TripletSemiHardLoss())
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


def test_saved_npair_embedding_loss_round_trips():
    config = keras.saving.serialize_keras_object(losses.NPairEmbeddingLoss(l2_reg=0.5))
    assert config["registered_name"] == "hdml_tf>NPairEmbeddingLoss"
    clone = keras.saving.deserialize_keras_object(config)
    assert type(clone) is losses.NPairEmbeddingLoss and clone.l2_reg == 0.5
