"""Pairwise distances and label masks: the one place every loss gets them from.

All functions take a 2-D float tensor of embeddings, one row per example, and are
written with TensorFlow ops so they run inside ``tf.function`` and under
``tf.distribute``. Distances are numerically safe: where a squared distance is zero, the
square root is taken of a tiny positive number and the result masked to zero, so the
gradient is finite (0) instead of NaN.
"""

import tensorflow as tf

_EPS = 1e-16


def safe_sqrt(squared):
    """sqrt with a finite gradient at 0: value 0 and gradient 0 where ``squared <= 0``."""
    zero = tf.less_equal(squared, 0.0)
    root = tf.sqrt(squared + tf.cast(zero, squared.dtype) * _EPS)
    return root * tf.cast(tf.logical_not(zero), squared.dtype)


def squared_norms(x):
    """Row-wise squared L2 norms, shape (n,)."""
    return tf.reduce_sum(tf.square(x), axis=1)


def cross_distance(a, b, squared=False):
    """Euclidean distances between every row of ``a`` (n, d) and of ``b`` (m, d): (n, m).

    Computed as ||a||^2 + ||b||^2 - 2 a.b, clipped at 0 before the safe square root.
    """
    a = tf.convert_to_tensor(a)
    b = tf.convert_to_tensor(b, dtype=a.dtype)
    sq = (
        squared_norms(a)[:, None]
        + squared_norms(b)[None, :]
        - 2.0 * tf.matmul(a, b, transpose_b=True)
    )
    sq = tf.maximum(sq, 0.0)
    return sq if squared else safe_sqrt(sq)


def pairwise_distance(embeddings, squared=False):
    """Euclidean distance matrix of ``embeddings`` (n, d), zero on the diagonal.

    Same definition as ``tfa.losses.metric_learning.pairwise_distance``: the squared
    distance is clipped at 0, distances that are not positive are set to exactly 0 and
    the diagonal is forced to 0 (it can be slightly positive through round-off).
    """
    dist = cross_distance(embeddings, embeddings, squared=squared)
    return tf.linalg.set_diag(dist, tf.zeros_like(tf.linalg.diag_part(dist)))


def angular_distance(embeddings):
    """1 - cosine similarity of the L2-normalised rows, clipped at 0 (as TFA's)."""
    x = tf.math.l2_normalize(embeddings, axis=1)
    return tf.maximum(1.0 - tf.matmul(x, x, transpose_b=True), 0.0)


def distance_matrix(embeddings, distance_metric="L2"):
    """Distance matrix for a metric name used by the TFA-compatible losses.

    Args:
      embeddings: float tensor (n, d).
      distance_metric: "L2", "squared-L2", "angular", or a callable mapping
        embeddings to an (n, n) distance matrix.
    """
    if callable(distance_metric):
        return distance_metric(embeddings)
    if distance_metric == "L2":
        return pairwise_distance(embeddings, squared=False)
    if distance_metric == "squared-L2":
        return pairwise_distance(embeddings, squared=True)
    if distance_metric == "angular":
        return angular_distance(embeddings)
    raise ValueError(
        f"distance_metric={distance_metric!r} is not one of 'L2', 'squared-L2', "
        "'angular' or a callable"
    )


def same_label_mask(labels_a, labels_b=None):
    """Boolean (n, m) matrix: True where ``labels_a[i] == labels_b[j]``.

    ``labels_*`` are 1-D integer tensors; ``labels_b`` defaults to ``labels_a``.
    """
    labels_a = tf.reshape(labels_a, [-1])
    labels_b = labels_a if labels_b is None else tf.reshape(labels_b, [-1])
    return tf.equal(labels_a[:, None], labels_b[None, :])


def positive_mask(labels):
    """Same label and not the same example: (n, n) boolean, False on the diagonal."""
    same = same_label_mask(labels)
    return tf.logical_and(same, tf.logical_not(tf.eye(tf.shape(same)[0], dtype=tf.bool)))


def negative_mask(labels):
    """Different label: (n, n) boolean."""
    return tf.logical_not(same_label_mask(labels))
