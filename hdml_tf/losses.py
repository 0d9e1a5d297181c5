"""The losses HDML trains with: pure functions plus thin serialisable Keras wrappers.

J_m is the N-pair loss on embeddings (``npair_embedding_loss`` / ``NPairEmbeddingLoss``;
``npair_embedding_loss_grouped`` for the synthetic tuples' J_syn) or the authors'
explicit triplet loss (``triplet_loss``). Half-precision inputs are computed in float32
and the loss is returned in float32.

``softmax_ce`` is the one softmax cross-entropy of the package (J_m, J_syn, J_soft,
J_cls). TensorFlow Addons' losses (``npairs_loss``, ``triplet_semihard_loss``,
``triplet_hard_loss``, ``lifted_struct_loss``, ``contrastive_loss`` and their classes)
live in :mod:`hdml_tf.tfa_losses`, which builds on this module.

Reference: Zheng et al., "Hardness-Aware Deep Metric Learning", CVPR 2019; Sohn, NIPS
2016 (N-pair); Schroff et al., CVPR 2015 (triplet).
"""

import keras
import tensorflow as tf

from hdml_tf import ops


def to_float32(x):
    """``x`` as a tensor, in float32 when it is half precision or not floating."""
    x = tf.convert_to_tensor(x)
    if x.dtype in (tf.float16, tf.bfloat16) or not x.dtype.is_floating:
        x = tf.cast(x, tf.float32)
    return x


def softmax_ce(labels, logits):
    """Softmax cross-entropy per row: logsumexp(logits) - the target's logit, in float32
    (float64 logits stay float64).

    The value and gradient (softmax - target) of TensorFlow's
    ``tf.nn.(sparse_)softmax_cross_entropy_with_logits``, faster on a CPU: those kernels
    compute the gradient in the forward pass too, and at the glyph preset's 4,160
    synthetic rows x 1,350 classes the sparse one was the costliest op of the HDML step
    (forward and gradient 19 ms against 12 ms on 2 cores; docs/results.md).

    Args:
      labels: (n,) integer class indices, or (n, C) float target distributions (each
        row summing to 1), whose logit is then the targets' weighted sum.
      logits: (n, C) logits, any float dtype.

    Golden value: all logits 0 over C classes gives ln C per row.
    """
    logits = to_float32(logits)
    labels = tf.convert_to_tensor(labels)
    if labels.dtype.is_floating:
        target = tf.reduce_sum(tf.cast(labels, logits.dtype) * logits, axis=-1)
    else:
        target = tf.gather(logits, labels, batch_dims=1)
    return tf.reduce_logsumexp(logits, axis=-1) - target


# ----------------------------------------------------------------------------- N-pair


def npair_loss(labels, logits):
    """N-pair loss on a similarity matrix (Sohn 2016; TFA's ``npairs_loss``).

    Row i's targets are the columns j whose label equals row i's, normalised to sum to
    1 (one column, j = i, when the labels are distinct, as in an N-pair batch); the
    loss is the mean over rows of the softmax cross-entropy.

    Args:
      labels: 1-D integer tensor (P,).
      logits: 2-D float tensor (P, P) of similarities, e.g. ``anchors @ positives.T``.

    Returns:
      Scalar float32.
    """
    logits = to_float32(logits)
    targets = tf.cast(ops.same_label_mask(labels), logits.dtype)
    targets /= tf.reduce_sum(targets, axis=1, keepdims=True)
    return tf.reduce_mean(softmax_ce(targets, logits))


def npair_l2_term(anchors, positives, l2_reg):
    """The N-pair embedding-norm penalty: 0.25 * l2_reg * (mean ||a||^2 + mean ||p||^2).

    Reference: Sohn, NIPS 2016; the same term as TF1's
    ``tf.contrib.losses.metric_learning.npairs_loss(reg_lambda)``.
    """
    anchors, positives = to_float32(anchors), to_float32(positives)
    return 0.25 * l2_reg * (
        tf.reduce_mean(ops.squared_norms(anchors))
        + tf.reduce_mean(ops.squared_norms(positives))
    )


def npair_embedding_loss(labels, anchors, positives, l2_reg=0.0):
    """N-pair loss on embeddings (Sohn 2016), HDML's J_m for N-pair batches: softmax
    over ``a_i . p_j`` with target j = i, plus the embedding-norm penalty.

    With ``l2_reg=0`` this equals TFA 0.23 ``npairs_loss(labels, anchors @ positives.T)``.

    Golden value: P = 2, a = p = [[1, 0], [0, 1]], l2_reg = 0: each row's logits are
    (1, 0) with the target first, so the loss is ln(1 + e^-1) = 0.31326169.

    Args:
      labels: 1-D integer tensor (P,): the label of anchor i and of positive i.
      anchors: float tensor (P, d).
      positives: float tensor (P, d); positive i has anchor i's class.
      l2_reg: weight of the embedding-norm penalty (spec: 3e-3 Cars196, 1.5e-2 CUB).

    Returns:
      Scalar float32.
    """
    anchors, positives = to_float32(anchors), to_float32(positives)
    logits = tf.matmul(anchors, positives, transpose_b=True)
    loss = npair_loss(labels, logits)
    if l2_reg:
        loss += npair_l2_term(anchors, positives, l2_reg)
    return loss


def npair_embedding_loss_grouped(anchors, candidates, l2_reg=0.0, offset=0):
    """N-pair loss where anchor i has its own P' candidate rows (HDML's J_syn).

    For anchor i the logits are ``a_i . c_(i,j)`` over j = 0..P'-1 and the target is
    j = offset + i: the synthetic tuple keeps the true positive at (i, offset + i) and
    a hardened negative elsewhere (the authors' ``new_npair_loss`` with
    ``equal_shape=False``).

    Golden value: P = P' = 2, a = [[1, 0], [0, 1]], c = [[1, 0], [0, 0], [0, 0],
    [0, 1]], l2_reg = 0: row logits (1, 0) and (0, 1), targets 0 and 1, so the loss is
    ln(1 + e^-1) = 0.31326169.

    Args:
      anchors: float tensor (P, d).
      candidates: float tensor (P * P', d), row i * P' + j is candidate j of anchor i.
      l2_reg: as in `npair_embedding_loss`; the penalty is over the anchors and all
        candidates.
      offset: index of anchor 0's own positive among its candidates (under a
        distribution strategy, the replica's first anchor in the global batch).

    Returns:
      Scalar float32.
    """
    anchors, candidates = to_float32(anchors), to_float32(candidates)
    num = tf.shape(anchors)[0]
    grouped = tf.reshape(candidates, [num, -1, tf.shape(anchors)[1]])
    logits = tf.einsum("id,ijd->ij", anchors, grouped)
    loss = tf.reduce_mean(softmax_ce(tf.range(num) + tf.cast(offset, tf.int32), logits))
    if l2_reg:
        loss += npair_l2_term(anchors, candidates, l2_reg)
    return loss


# ---------------------------------------------------------------------------- triplet


def _reduce(values, reduction):
    if reduction == "sum":
        return tf.reduce_sum(values)
    if reduction in ("mean", "sum_over_batch_size"):
        return tf.reduce_mean(values)
    if reduction in (None, "none"):
        return values
    raise ValueError(f"reduction={reduction!r} is not one of 'sum', 'mean', 'none'")


def triplet_loss(anchors, positives, negatives, margin=1.0, squared=True, reduction="sum"):
    """Triplet loss on explicit triplets, the HDML authors' form by default.

    loss_t = max(d(a_t, p_t) - d(a_t, n_t) + margin, 0), with squared Euclidean
    distances and a sum over triplets in the official code (HDML's triplet J_m).

    Golden value: a = (0, 0), p = (1, 0), n = (0, 1), margin 1: 1 - 1 + 1 = 1.

    Args:
      anchors, positives, negatives: float tensors (T, d), row t forms one triplet.
      margin: the margin (official: 1.0).
      squared: squared (official) or plain Euclidean distances.
      reduction: "sum" (official), "mean" or "none" (a (T,) vector).
    """
    anchors = to_float32(anchors)
    positives, negatives = to_float32(positives), to_float32(negatives)
    # [distances]
    d_pos = ops.squared_norms(anchors - positives)
    d_neg = ops.squared_norms(anchors - negatives)
    if not squared:
        d_pos, d_neg = ops.safe_sqrt(d_pos), ops.safe_sqrt(d_neg)
    # [loss]
    return _reduce(tf.maximum(d_pos - d_neg + margin, 0.0), reduction)


# --------------------------------------------------------------- Keras loss wrappers


class ConfigLoss(keras.losses.Loss):
    """A Loss whose keyword hyper-parameters (``_params``) round-trip through get_config
    (the base of the Keras wrappers here and in :mod:`hdml_tf.tfa_losses`)."""

    _params = ()

    def __init__(self, name, reduction="sum_over_batch_size", dtype=None, **params):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        for key in self._params:
            setattr(self, key, params[key])

    def get_config(self):
        config = super().get_config()
        config.update({key: getattr(self, key) for key in self._params})
        return config


@keras.saving.register_keras_serializable(package="hdml_tf")
class NPairEmbeddingLoss(ConfigLoss):
    """N-pair loss on embeddings; ``y_pred`` is ``[anchors; positives]`` (2P, d),
    ``y_true`` the anchors' labels (P,) (or all 2P labels, of which the first P are
    used)."""

    _params = ("l2_reg",)

    def __init__(self, l2_reg=0.0, name="npair_embedding_loss", **kwargs):
        super().__init__(name=name, l2_reg=l2_reg, **kwargs)

    def call(self, y_true, y_pred):
        anchors, positives = tf.split(y_pred, 2, axis=0)
        labels = tf.reshape(y_true, [-1])[: tf.shape(anchors)[0]]
        return npair_embedding_loss(labels, anchors, positives, self.l2_reg)


@keras.saving.register_keras_serializable(package="hdml_tf")
class TripletLoss(ConfigLoss):
    """Explicit-triplet loss; ``y_pred`` is ``[anchors; positives; negatives]`` (3T, d)
    and ``y_true`` is ignored (the layout defines the triplets)."""

    _params = ("margin", "squared", "triplet_reduction")

    def __init__(self, margin=1.0, squared=True, triplet_reduction="sum",
                 name="triplet_loss", **kwargs):
        super().__init__(name=name, margin=margin, squared=squared,
                         triplet_reduction=triplet_reduction, **kwargs)

    def call(self, y_true, y_pred):
        del y_true
        a, p, n = tf.split(y_pred, 3, axis=0)
        return triplet_loss(a, p, n, self.margin, self.squared, self.triplet_reduction)
