"""The losses HDML trains with: pure functions plus thin serialisable Keras wrappers.

J_m is the N-pair loss on embeddings (``npair_embedding_loss`` / ``NPairEmbeddingLoss``;
``npair_embedding_loss_grouped`` for the synthetic tuples' J_syn) or the authors'
explicit triplet loss (``triplet_loss``). Half-precision inputs are computed in float32
and the loss is returned in float32.

TensorFlow Addons' losses (``npairs_loss`` on a similarity matrix,
``triplet_semihard_loss``, ``triplet_hard_loss``, ``lifted_struct_loss``,
``contrastive_loss`` and their classes) live in :mod:`hdml_tf.tfa_losses`. The names
here say "embedding" so that they cannot be mistaken for TFA's ``npairs_loss``, which
differs only by an "s" and takes a similarity matrix instead.

Reference: Zheng et al., "Hardness-Aware Deep Metric Learning", CVPR 2019; Sohn, NIPS
2016 (N-pair); Schroff et al., CVPR 2015 (triplet).
"""

import keras
import tensorflow as tf

from hdml_tf import ops
from hdml_tf.tfa_losses import ConfigLoss, npairs_loss, to_float32


# ----------------------------------------------------------------------------- N-pair


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
    """N-pair loss on embeddings (Sohn 2016), HDML's J_m for N-pair batches.

    With ``l2_reg=0`` this equals TFA 0.23 ``npairs_loss(labels, anchors @ positives.T)``.

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
    loss = npairs_loss(labels, logits)
    if l2_reg:
        loss += npair_l2_term(anchors, positives, l2_reg)
    return loss


def npair_embedding_loss_grouped(anchors, candidates, l2_reg=0.0, offset=0):
    """N-pair loss where anchor i has its own P' candidate rows (HDML's J_syn).

    For anchor i the logits are ``a_i . c_(i,j)`` over j = 0..P'-1 and the target is
    j = offset + i: the synthetic tuple keeps the true positive at (i, offset + i) and
    a hardened negative elsewhere.

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
    loss = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.range(num) + tf.cast(offset, tf.int32), logits=logits
        )
    )
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
    distances and a sum over triplets in the official code.

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
