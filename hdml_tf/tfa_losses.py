"""TensorFlow Addons' metric-learning losses, for code moving off tensorflow-addons.

tensorflow-addons 0.23 no longer imports with Keras 3. These are its losses with the
same definitions and arguments, so users moving off TFA get the same numbers. HDML
itself uses the losses in :mod:`hdml_tf.losses` (its N-pair loss, on embeddings rather
than a similarity matrix, is ``hdml_tf.losses.npair_embedding_loss``):

| tensorflow-addons 0.23                 | hdml_tf.tfa_losses                       |
|----------------------------------------|------------------------------------------|
| `tfa.losses.npairs_loss(y, a @ p.T)`   | `npairs_loss(y, a @ p.T)` / `NpairsLoss` |
| `tfa.losses.triplet_semihard_loss`     | `triplet_semihard_loss` / `TripletSemiHardLoss` |
| `tfa.losses.triplet_hard_loss`         | `triplet_hard_loss` / `TripletHardLoss`  |
| `tfa.losses.lifted_struct_loss`        | `lifted_struct_loss` / `LiftedStructLoss` |
| `tfa.losses.contrastive_loss`          | `contrastive_loss` / `ContrastiveLoss`   |

One deliberate difference: on degenerate batches where TFA divides by zero (no positive
pair in the batch, or no negative at all for lifted-struct) TFA returns NaN; these return
0, so a bad batch cannot poison a run. Half-precision inputs are computed in float32 and
the loss is returned in float32.

Reference: Sohn, NIPS 2016 (N-pair); Schroff et al., CVPR 2015 (semi-hard triplets);
Hermans et al., 2017 (batch-hard); Oh Song et al., CVPR 2016 (lifted structure);
Hadsell et al., CVPR 2006 (contrastive).
"""

import keras
import tensorflow as tf

from hdml_tf import ops
from hdml_tf.losses import ConfigLoss, npair_loss, to_float32

__all__ = ["npairs_loss", "triplet_semihard_loss", "triplet_hard_loss",
           "lifted_struct_loss", "contrastive_loss", "NpairsLoss", "TripletSemiHardLoss",
           "TripletHardLoss", "LiftedStructLoss", "ContrastiveLoss"]


def _masked_max(data, mask):
    """Row-wise max of ``data`` over ``mask``; an empty row gives the row's minimum.

    The empty-row value is TFA's (its shift trick returns the row minimum), kept so the
    mined losses agree with TFA on every batch.
    """
    row_min = tf.reduce_min(data, axis=1, keepdims=True)
    masked = tf.where(mask, data, row_min)
    return tf.reduce_max(masked, axis=1, keepdims=True)


def _masked_min(data, mask):
    """Row-wise min of ``data`` over ``mask``; an empty row gives the row's maximum."""
    row_max = tf.reduce_max(data, axis=1, keepdims=True)
    masked = tf.where(mask, data, row_max)
    return tf.reduce_min(masked, axis=1, keepdims=True)


# ----------------------------------------------------------------- functions


def npairs_loss(y_true, y_pred):
    """TFA-compatible N-pair loss on a similarity matrix: `hdml_tf.losses.npair_loss`.

    Args:
      y_true: 1-D integer tensor (P,) of labels; row i and column j are targets of
        each other when their labels are equal, normalised per row.
      y_pred: 2-D float tensor (P, P) of similarities, e.g. ``anchors @ positives.T``.

    Returns:
      Scalar float32: mean over rows of the softmax cross-entropy.
    """
    return npair_loss(y_true, y_pred)


def triplet_semihard_loss(y_true, y_pred, margin=1.0, distance_metric="L2"):
    """Triplet loss with semi-hard negative mining (TFA 0.23 definition).

    For every positive pair (a, p), a != p, the negative is the closest negative n
    with d(a, n) > d(a, p); if there is none, the farthest negative of a. The loss is
    the mean over positive pairs of max(d(a, p) - d(a, n) + margin, 0).

    Args:
      y_true: 1-D integer tensor (B,) of labels.
      y_pred: float tensor (B, d) of embeddings (TFA expects them L2-normalised).
      margin: the margin.
      distance_metric: "L2", "squared-L2", "angular" or a callable.
    """
    labels = tf.reshape(y_true, [-1])
    embeddings = to_float32(y_pred)
    # [distances]
    dist = ops.distance_matrix(embeddings, distance_metric)
    # [masks]
    same = ops.same_label_mask(labels)
    neg = tf.logical_not(same)
    pos = ops.positive_mask(labels)
    # candidates[a, p, n]: n is a negative of a and farther from a than p is.
    farther = tf.greater(dist[:, None, :], dist[:, :, None])
    candidates = tf.logical_and(neg[:, None, :], farther)
    has_candidate = tf.reduce_any(candidates, axis=2)
    dist_apn = tf.broadcast_to(dist[:, None, :], tf.shape(candidates))
    row_max = tf.reduce_max(dist, axis=1)[:, None, None]
    outside = tf.reduce_min(tf.where(candidates, dist_apn, row_max), axis=2)
    inside = _masked_max(dist, neg)  # (B, 1): farthest negative of each anchor
    semi_hard = tf.where(has_candidate, outside, inside)
    # [loss]
    per_pair = tf.maximum(margin + dist - semi_hard, 0.0)
    per_pair = tf.where(pos, per_pair, 0.0)
    return tf.math.divide_no_nan(
        tf.reduce_sum(per_pair), tf.reduce_sum(tf.cast(pos, per_pair.dtype))
    )


def triplet_hard_loss(y_true, y_pred, margin=1.0, soft=False, distance_metric="L2"):
    """Batch-hard triplet loss (TFA 0.23 definition; Hermans et al. 2017).

    For each anchor: hardest positive (largest d(a, p), p != a) and hardest negative
    (smallest d(a, n)); loss = mean over anchors of max(d_p - d_n + margin, 0), or
    log(1 + exp(d_p - d_n)) with ``soft=True``.
    """
    labels = tf.reshape(y_true, [-1])
    embeddings = to_float32(y_pred)
    dist = ops.distance_matrix(embeddings, distance_metric)
    hardest_neg = _masked_min(dist, ops.negative_mask(labels))
    hardest_pos = _masked_max(dist, ops.positive_mask(labels))
    if soft:
        per_anchor = tf.math.log1p(tf.exp(hardest_pos - hardest_neg))
    else:
        per_anchor = tf.maximum(hardest_pos - hardest_neg + margin, 0.0)
    return tf.reduce_mean(per_anchor)


def lifted_struct_loss(labels, embeddings, margin=1.0):
    """Lifted structured loss (Oh Song et al. 2016; TFA 0.23 definition).

    For each positive pair (i, j):
      J_ij = log(sum_{k in neg(i)} exp(m - D_ik) + sum_{l in neg(j)} exp(m - D_jl)) + D_ij
    with Euclidean D, computed with a max shift M_ij for stability; the loss is
    sum over ordered positive pairs of max(J_ij, 0)^2 / (2 * number of ordered pairs),
    i.e. the paper's 1/(2|P|) sum over unordered pairs.

    Args:
      labels: 1-D integer tensor (B,).
      embeddings: float tensor (B, d), not L2-normalised.
      margin: the margin m.
    """
    labels = tf.reshape(labels, [-1])
    embeddings = to_float32(embeddings)
    dist = ops.pairwise_distance(embeddings)
    neg = ops.negative_mask(labels)
    pos = ops.positive_mask(labels)
    diff = margin - dist
    # Shift by the larger of the two rows' maxima so the exponentials cannot overflow.
    row_max = _masked_max(diff, neg)  # (B, 1)
    shift = tf.maximum(row_max, tf.transpose(row_max))  # (B, B)
    exp_terms = tf.where(neg[:, None, :], tf.exp(diff[:, None, :] - shift[:, :, None]), 0.0)
    per_row = tf.reduce_sum(exp_terms, axis=2)  # [i, j] = sum_{k in neg(i)} exp(.. - M_ij)
    total = per_row + tf.transpose(per_row)
    safe_total = tf.where(pos, total, 1.0)
    loss_mat = tf.where(pos, shift + tf.math.log(safe_total) + dist, 0.0)
    num_pairs = tf.reduce_sum(tf.cast(pos, loss_mat.dtype)) / 2.0
    return tf.math.divide_no_nan(
        0.25 * tf.reduce_sum(tf.square(tf.maximum(loss_mat, 0.0))), num_pairs
    )


def contrastive_loss(y_true, y_pred, margin=1.0):
    """Contrastive loss on pair distances (Hadsell et al. 2006; TFA 0.23 definition).

    Args:
      y_true: (B,) 1 for a similar pair, 0 for a dissimilar one.
      y_pred: (B,) float distances between the pairs' embeddings.
      margin: the margin for dissimilar pairs.

    Returns:
      (B,) per-pair losses: y d^2 + (1 - y) max(margin - d, 0)^2.
    """
    dist = to_float32(y_pred)
    y = tf.cast(y_true, dist.dtype)
    return y * tf.square(dist) + (1.0 - y) * tf.square(tf.maximum(margin - dist, 0.0))


# --------------------------------------------------------------- Keras loss wrappers


@keras.saving.register_keras_serializable(package="hdml_tf")
class NpairsLoss(ConfigLoss):
    """TFA's ``NpairsLoss``: ``y_pred`` is the (P, P) similarity matrix."""

    def __init__(self, name="npairs_loss", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        return npairs_loss(y_true, y_pred)


@keras.saving.register_keras_serializable(package="hdml_tf")
class TripletSemiHardLoss(ConfigLoss):
    """Keras wrapper of `triplet_semihard_loss` (TFA ``TripletSemiHardLoss``)."""

    _params = ("margin", "distance_metric")

    def __init__(self, margin=1.0, distance_metric="L2", name="triplet_semihard_loss",
                 **kwargs):
        super().__init__(name=name, margin=margin, distance_metric=distance_metric, **kwargs)

    def call(self, y_true, y_pred):
        return triplet_semihard_loss(y_true, y_pred, self.margin, self.distance_metric)


@keras.saving.register_keras_serializable(package="hdml_tf")
class TripletHardLoss(ConfigLoss):
    """Keras wrapper of `triplet_hard_loss` (TFA ``TripletHardLoss``)."""

    _params = ("margin", "soft", "distance_metric")

    def __init__(self, margin=1.0, soft=False, distance_metric="L2",
                 name="triplet_hard_loss", **kwargs):
        super().__init__(name=name, margin=margin, soft=soft,
                         distance_metric=distance_metric, **kwargs)

    def call(self, y_true, y_pred):
        return triplet_hard_loss(y_true, y_pred, self.margin, self.soft,
                                 self.distance_metric)


@keras.saving.register_keras_serializable(package="hdml_tf")
class LiftedStructLoss(ConfigLoss):
    """Keras wrapper of `lifted_struct_loss` (TFA ``LiftedStructLoss``)."""

    _params = ("margin",)

    def __init__(self, margin=1.0, name="lifted_struct_loss", **kwargs):
        super().__init__(name=name, margin=margin, **kwargs)

    def call(self, y_true, y_pred):
        return lifted_struct_loss(y_true, y_pred, self.margin)


@keras.saving.register_keras_serializable(package="hdml_tf")
class ContrastiveLoss(ConfigLoss):
    """Keras wrapper of `contrastive_loss` (TFA ``ContrastiveLoss``); ``y_pred`` are
    pair distances, reduced with the Loss ``reduction`` (default: mean)."""

    _params = ("margin",)

    def __init__(self, margin=1.0, name="contrastive_loss", **kwargs):
        super().__init__(name=name, margin=margin, **kwargs)

    def call(self, y_true, y_pred):
        return contrastive_loss(y_true, y_pred, self.margin)
