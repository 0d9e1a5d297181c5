"""HDML's objective by tuple type: the four pieces the model combines.

Each variant (N-pair, triplet) supplies
  [J_m]       ``metric_loss``: the metric loss on the real tuple (`hdml_tf.losses`),
  [synthesis] ``synthesize``: the hardness-aware synthetic tuple in embedding space and
              the labels the generator must preserve,
  [J_syn]     ``synthetic_loss``: the metric loss on the synthetic tuple once the
              generator has mapped it to feature space and the head has re-embedded it,
  [J_soft]    ``label_ce``: the cross-entropy that keeps synthetic rows in their class,
so ``HDML`` can run them in a straight line whatever the tuple type. The pure
functions below are the definitions; the variant classes only route tensors and
replica shares. Names follow the paper: z (embeddings), ``lam`` (λ), ``z_tilde`` (the
re-embedded synthetic tuple).

Distributed batches: every value a variant returns is this replica's *contribution*:
summed over replicas it is the global value (see ``Replicas``). N-pair tuples compare
each anchor with every positive of the global batch, so their candidates are gathered
across replicas and the synthetic-tuple target of local anchor i is ``offset + i``.

Reference: Zheng et al., "Hardness-Aware Deep Metric Learning", CVPR 2019, eq. (3)-(9);
the authors' TF1 code (``lib/HDML.py``: ``Pulling``, ``genSoftmax``; ``main_npair.py``,
``main_triplet.py``; ``lib/Loss_ops.py``: ``new_npair_loss``, ``triplet_loss``).
"""

import dataclasses

import tensorflow as tf

from hdml_tf import losses as losses_lib
from hdml_tf import synthesis


# ------------------------------------------------------------------ pure functions


def npair_synthesis(anchors, positives, lam, all_positives=None):
    """The N-pair synthetic tuple: P anchors, then P * P' hardened candidates.

    Candidate ``i * P' + j`` is positive j of the (global) batch seen as a negative of
    anchor i and moved toward it by λ where it is farther than anchor i's own positive
    (the authors' ``Pulling``); for j = i it stays the true positive.

    Args:
      anchors, positives: (P, d) this replica's rows.
      lam: scalar λ.
      all_positives: (P', d) every positive of the global batch (default: positives).

    Returns:
      (P + P * P', d).

    Golden value: a = [[0, 0]], p = [[1, 0]], candidates [[1, 0], [4, 0]] (P' = 2),
    λ = 0.5: candidate 0 is the positive (kept); candidate 1 has d- = 4 > d+ = 1 and
    moves to a + (1 + 0.5 * 3) / 4 * (4, 0) = (2.5, 0).
    """
    candidates = synthesis.npair_candidates(anchors, positives, lam,
                                            all_positives=all_positives)
    return tf.concat([tf.cast(anchors, candidates.dtype), candidates], axis=0)


def npair_synthetic_labels(anchor_labels, all_labels):
    """Labels of the synthetic tuple: the anchors', then candidate j's class, tiled.

    Row ``P + i * P' + j`` holds ``all_labels[j]`` (``tf.tile``, not ``tf.repeat``: the
    candidate index runs fastest), as in the authors' ``genSoftmax``.
    """
    num_anchors = tf.shape(anchor_labels)[0]
    return tf.concat([anchor_labels, tf.tile(all_labels, [num_anchors])], axis=0)


def npair_label_ce(logits, labels, num_anchors):
    """Label preservation of an N-pair synthetic tuple (the bracket of J_soft).

    mean CE over the P * P' candidate rows + mean CE over the P anchor rows: two
    means, not one over all rows (the authors' ``genSoftmax``).

    Args:
      logits: (P + P * P', C) classifier logits of the generated features.
      labels: (P + P * P',) from :func:`npair_synthetic_labels`.
      num_anchors: P.

    Golden value: all logits 0 over C classes gives ln C + ln C = 2 ln C.
    """
    ce = losses_lib.softmax_ce(labels, logits)
    return tf.reduce_mean(ce[num_anchors:]) + tf.reduce_mean(ce[:num_anchors])


def triplet_synthesis(anchors, positives, negatives, lam):
    """The triplet synthetic tuple: anchors, positives, hardened negatives (rows in thirds).

    Golden value: a = (0, 0), p = (1, 0), n = (4, 0), λ = 0.5: n moves to (2.5, 0).
    """
    z_hat_neg = synthesis.hardness_aware_negatives(anchors, positives, negatives, lam)
    return tf.concat([tf.cast(anchors, z_hat_neg.dtype),
                      tf.cast(positives, z_hat_neg.dtype), z_hat_neg], axis=0)


def triplet_label_ce(logits, labels):
    """Label preservation of a triplet synthetic tuple: mean CE over all its rows.

    Golden value: all logits 0 over C classes gives ln C.
    """
    return tf.reduce_mean(losses_lib.softmax_ce(labels, logits))


def hardened_fraction(anchors, positives, negatives):
    """Share of (anchor, negative) pairs the synthesis moves: d(a, n) > d(a, p).

    ``negatives`` broadcasts against ``anchors``: (T, d) for triplets, (P, 1, d)
    anchors against (1, P', d) candidates for N-pair. Returns 1.0 where the pair is
    moved, 0.0 where not, in the broadcast shape without the feature axis.
    """
    d_pos = tf.reduce_sum(tf.square(anchors - positives), axis=-1)
    d_neg = tf.reduce_sum(tf.square(anchors - negatives), axis=-1)
    return tf.cast(d_neg > d_pos, tf.float32)


# ------------------------------------------------------------------- replica shares


@dataclasses.dataclass
class Replicas:
    """Where this replica stands: ``ctx`` (None outside a strategy), count, index."""

    ctx: object = None
    count: int = 1
    index: object = 0

    @classmethod
    def current(cls):
        ctx = tf.distribute.get_replica_context()
        if ctx is None:  # cross-replica context: behave as a single replica
            return cls()
        return cls(ctx, ctx.num_replicas_in_sync, ctx.replica_id_in_sync_group)

    def gather(self, value):
        """``value`` of every replica, concatenated along axis 0."""
        return value if self.count == 1 else self.ctx.all_gather(value, 0)

    def sum(self, value):
        """The sum over replicas (the global value of a contribution)."""
        if self.count == 1:
            return value
        return self.ctx.all_reduce(tf.distribute.ReduceOp.SUM, value)

    def share(self, value):
        """A value computed identically (or as a mean) on each replica, as a contribution."""
        return value / float(self.count)


@dataclasses.dataclass
class RealTuple:
    """The embedded real tuple: this replica's groups, and what the global batch adds.

    ``embeddings``/``labels`` are this replica's (anchors, positives[, negatives]);
    ``candidates``/``candidate_labels`` are the rows every anchor is compared with
    (N-pair: the positives of the global batch; triplet: unused).
    """

    embeddings: list
    labels: list
    candidates: tf.Tensor = None
    candidate_labels: tf.Tensor = None


@dataclasses.dataclass
class SyntheticTuple:
    """The synthetic tuple in embedding space, and what the later pieces need of it."""

    rows: tf.Tensor
    labels: tf.Tensor
    num_anchors: tf.Tensor
    hardened: tf.Tensor  # fraction of candidate negatives moved this step


# ----------------------------------------------------------------------- variants


class NPair:
    """N-pair tuples ``(anchors, positives)``; candidates are gathered across replicas."""

    def __init__(self, l2_reg):
        self.l2_reg = float(l2_reg)

    def real_tuple(self, z_groups, labels, replicas):
        return RealTuple(list(z_groups), list(labels), replicas.gather(z_groups[1]),
                         replicas.gather(labels[0]))

    def metric_loss(self, real, replicas):
        z_a = replicas.gather(real.embeddings[0])
        j_m = losses_lib.npair_embedding_loss(real.candidate_labels, z_a, real.candidates,
                                              self.l2_reg)
        return replicas.share(j_m)  # the same global value on every replica

    def synthesize(self, real, lam):
        z_a, z_p = real.embeddings
        rows = npair_synthesis(z_a, z_p, lam, all_positives=real.candidates)
        # Only candidates of another class than the anchor's are negatives.
        negative = tf.cast(tf.not_equal(real.labels[0][:, None],
                                        real.candidate_labels[None, :]), tf.float32)
        moved = hardened_fraction(z_a[:, None, :], z_p[:, None, :],
                                  real.candidates[None, :, :])
        fraction = tf.reduce_sum(moved * negative) / tf.maximum(tf.reduce_sum(negative), 1.0)
        labels = npair_synthetic_labels(real.labels[0], real.candidate_labels)
        return SyntheticTuple(rows, labels, tf.shape(z_a)[0], fraction)

    def synthetic_loss(self, z_tilde, synthetic, replicas):
        p = synthetic.num_anchors
        offset = tf.cast(replicas.index, tf.int32) * p
        j_syn = losses_lib.npair_embedding_loss_grouped(z_tilde[:p], z_tilde[p:],
                                                        self.l2_reg, offset)
        return replicas.share(j_syn)

    def label_ce(self, logits, synthetic, replicas):
        return replicas.share(npair_label_ce(logits, synthetic.labels,
                                             synthetic.num_anchors))


class Triplet:
    """Triplet tuples ``(anchors, positives, negatives)``; losses are sums over triplets."""

    def __init__(self, margin):
        self.margin = float(margin)

    def real_tuple(self, z_groups, labels, replicas):
        return RealTuple(list(z_groups), list(labels))

    def metric_loss(self, real, replicas):
        return losses_lib.triplet_loss(*real.embeddings, self.margin)  # local sums add up

    def synthesize(self, real, lam):
        z_a, z_p, z_n = real.embeddings
        rows = triplet_synthesis(z_a, z_p, z_n, lam)
        fraction = tf.reduce_mean(hardened_fraction(z_a, z_p, z_n))
        return SyntheticTuple(rows, tf.concat(real.labels, axis=0), tf.shape(z_a)[0],
                              fraction)

    def synthetic_loss(self, z_tilde, synthetic, replicas):
        return losses_lib.triplet_loss(*tf.split(z_tilde, 3, axis=0), self.margin)

    def label_ce(self, logits, synthetic, replicas):
        return replicas.share(triplet_label_ce(logits, synthetic.labels))


def variant(loss, l2_reg=0.0, margin=1.0):
    """The objective's pieces for ``loss`` ("npair" or "triplet")."""
    if loss == "npair":
        return NPair(l2_reg)
    if loss == "triplet":
        return Triplet(margin)
    raise ValueError(f"loss={loss!r}: expected 'npair' or 'triplet'")
