"""Hardness-aware synthesis of negatives in embedding space (HDML, Sec. 3.2).

Names follow the paper: z (embeddings), ``z_hat_neg`` (the hardened negative ẑ⁻),
``lam`` (λ = exp(-α / J_avg)). All functions are pure and differentiable; gradients are
deliberately not stopped (the authors' code lets J_syn back-propagate through the
synthesis into the embedding network).

Reference: Zheng et al., "Hardness-Aware Deep Metric Learning", CVPR 2019, eq. (3)-(4);
the authors' TF1 code, ``lib/HDML.py`` (``Pulling``).
"""

import tensorflow as tf

from hdml_tf import ops


def hardness_lambda(j_avg, alpha):
    """λ = exp(-α / J_avg): ~1 while the metric loss is large, -> 0 as it falls.

    Args:
      j_avg: running average of the metric objective (scalar tensor or float).
      alpha: the hardness scale (spec: 90 for N-pair; the paper reports 7 for triplet).
    """
    j_avg = tf.cast(j_avg, tf.float32)
    return tf.exp(-tf.cast(alpha, tf.float32) / j_avg)


def metric_weight(j_gen_avg, beta):
    """w = exp(-β / J_gen_avg), the weight of J_m in J_metric = w J_m + (1 - w) J_syn."""
    j_gen_avg = tf.cast(j_gen_avg, tf.float32)
    return tf.exp(-tf.cast(beta, tf.float32) / j_gen_avg)


def window_update(total, count, mean, value, keep, window):
    """One step of a running statistic (J_avg, J_gen_avg): the mean of the last complete
    window of ``window`` recorded values, as the authors' ``nn_Ops.data_collector``.

    ``value`` is recorded when ``keep`` (the step was applied) and it is finite; once
    ``window`` values are recorded their mean is published and the window restarts.

    Args:
      total, count: the window so far (its sum and number of values).
      mean: the published statistic (its initial value until a window is complete).
      value: this step's value; keep: whether to record it; window: W.

    Returns:
      The new ``(total, count, mean)``.
    """
    keep = tf.logical_and(keep, tf.math.is_finite(value))
    total = total + tf.where(keep, value, 0.0)
    count = count + tf.cast(keep, tf.float32)
    full = count >= float(window)
    mean = tf.where(full, total / tf.maximum(count, 1.0), mean)
    return tf.where(full, 0.0, total), tf.where(full, 0.0, count), mean


def _interpolate(anchors, negatives, d_pos, d_neg, lam):
    """ẑ⁻ = z + ((d+ + λ (d- - d+)) / d-) (z⁻ - z) where d- > d+, else z⁻.

    ``anchors``/``negatives`` broadcast to a common shape (..., d); ``d_pos``/``d_neg``
    to (..., 1).
    """
    harden = d_neg > d_pos
    # The untaken branch must stay finite: tf.where multiplies its gradient by zero,
    # and 0 * inf would be NaN.
    safe_d_neg = tf.where(harden, d_neg, tf.ones_like(d_neg))
    ratio = (d_pos + lam * (d_neg - d_pos)) / safe_d_neg
    z_hat_neg = anchors + ratio * (negatives - anchors)
    return tf.where(harden, z_hat_neg, negatives + tf.zeros_like(z_hat_neg))


def _as_dtype(value, dtype):
    """Python scalars straight to ``dtype`` (tf.cast would round through float32)."""
    if tf.is_tensor(value) or hasattr(value, "dtype"):
        return tf.cast(value, dtype)
    return tf.constant(value, dtype=dtype)


def _distance(a, b):
    return ops.safe_sqrt(tf.reduce_sum(tf.square(a - b), axis=-1, keepdims=True))


def hardness_aware_negatives(anchors, positives, negatives, lam):
    """One hardened negative per triplet.

    Args:
      anchors, positives, negatives: float tensors (T, d); row t is a triplet.
      lam: scalar λ in [0, 1]. λ = 1 leaves each negative in place; λ = 0 moves it
        along the anchor-negative line to distance d+ from the anchor (the hardest
        position that is still no closer than the positive).

    Returns:
      ``z_hat_neg`` (T, d). Negatives already closer than the positive are unchanged.
    """
    anchors = tf.convert_to_tensor(anchors)
    positives = tf.cast(positives, anchors.dtype)
    negatives = tf.cast(negatives, anchors.dtype)
    lam = _as_dtype(lam, anchors.dtype)
    d_pos = _distance(anchors, positives)
    d_neg = _distance(anchors, negatives)
    return _interpolate(anchors, negatives, d_pos, d_neg, lam)


def npair_candidates(anchors, positives, lam, all_positives=None):
    """The P * P' hardened candidates of an N-pair batch, row ``i * P' + j``.

    Candidate j of anchor i is positive j (of the global batch when ``all_positives``
    is given, as under a distribution strategy) treated as a negative of a_i, whose
    own positive is ``positives[i]``, and hardened toward a_i.

    Args:
      anchors: float tensor (P, d).
      positives: float tensor (P, d), positive i of anchor i's class.
      lam: scalar λ.
      all_positives: float tensor (P', d) of candidate negatives; defaults to
        ``positives`` (P' = P).

    Returns:
      float tensor (P * P', d).
    """
    anchors = tf.convert_to_tensor(anchors)
    positives = tf.cast(positives, anchors.dtype)
    all_positives = positives if all_positives is None else tf.cast(all_positives,
                                                                    anchors.dtype)
    lam = _as_dtype(lam, anchors.dtype)
    a = anchors[:, None, :]  # (P, 1, d): anchor i
    d_pos = _distance(a, positives[:, None, :])  # (P, 1, 1)
    n = all_positives[None, :, :]  # (1, P', d): candidate negative j
    z_hat = _interpolate(a, n, d_pos, _distance(a, n), lam)  # (P, P', d)
    return tf.reshape(z_hat, [-1, tf.shape(anchors)[1]])
