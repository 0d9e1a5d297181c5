"""HDML's hyper-parameters: the one place their names and defaults are written.

`HDMLParams` lists the keyword arguments of ``hdml_tf.models.HDML`` that define the
method (``HDML(embedder, num_classes, **dataclasses.asdict(params))``); the
experiment config's ``model`` section (``hdml_tf.config.ModelConfig``) is an
`HDMLParams` plus the backbone settings, so ``--set model.alpha=...`` and
``HDML(alpha=...)`` are the same field with the same default.
`DEFAULT_LEARNING_RATES` are the three optimizers' defaults for ``HDML.compile`` and
``OptimConfig``. Defaults follow the authors' ``FLAGS.py`` (Cars196 settings).
"""

import dataclasses
import typing

LOSSES = ("npair", "triplet")
WEIGHT_DECAY_SCOPES = ("kernels", "authors")
# Which of the head's two passes in a step move its BatchNorm's moving statistics.
HEAD_BN_UPDATES = ("real", "sequential", "prestep")
# What a non-finite J_syn does to J_metric.
NONFINITE_SYN = ("fallback", "zero_metric")
# Images per tuple: an N-pair batch is P (anchor, positive) pairs, a triplet batch T
# (anchor, positive, negative) triplets.
TUPLE_SIZE = {"npair": 2, "triplet": 3}
# The authors' init_learning_rate (7e-5, Cars196), lr_gen and s_lr.
DEFAULT_LEARNING_RATES = {"metric": 7e-5, "generator": 1e-2, "classifier": 1e-3}


@dataclasses.dataclass
class HDMLParams:
    """The method's hyper-parameters (Zheng et al., CVPR 2019; docs/method.md).

    Attributes:
      loss: "npair" or "triplet".
      hdml: False gives the paper's baseline: only J_m and the metric optimizer.
      alpha: λ = exp(-alpha / J_avg) (authors' code: 90 for both variants; the paper
        text reports 7 for triplet). Replaced by the fitted value when
        ``lambda_start`` is set.
      beta: w = exp(-beta / J_gen_avg) (1e4 Cars196, 5e3 CUB and SOP). Replaced by the
        fitted value when ``w_start`` is set.
      lambda_start: None (λ follows ``alpha``), or λ in (0, 1) at the end of the first
        window: then alpha = -J_avg_1 ln(lambda_start), with J_avg_1 the first
        window's J_avg, and λ = exp(-alpha / J_avg) from there on, i.e.
        λ = lambda_start ** (J_avg_1 / J_avg). The same schedule on any network,
        whatever the size of its losses (docs/method.md, "The hardness schedule").
      w_start: the same for w: None (``beta``), or w in (0, 1) at the end of the first
        window, beta = -J_gen_avg_1 ln(w_start).
      lambda_gen: trade-off between J_recon and J_soft (0.5).
      softmax_factor: s, the scale of J_soft (1e4 in the official code).
      l2_reg: N-pair embedding-norm penalty (3e-3 Cars196, 1.5e-2 CUB).
      margin: triplet margin (1.0).
      weight_decay: wd, adding wd * sum(||v||^2) / 2 to J_m (the authors'
        Regular_factor, 5e-3).
      weight_decay_scope: which embedder variables decay: "kernels" (convolution and
        dense kernels) or "authors" (every trainable variable of backbone and head but
        BatchNorm's, biases included, as ``main_npair.py`` does).
      window: W, steps per window of the running statistics (official 64).
      j_avg_init, j_gen_avg_init: initial J_avg and J_gen_avg (1e6: λ ~ 1 and w ~ 1
        at first).
      record_weighted_jm: record w * J_m in J_avg (official) instead of the raw J_m.
      generator_hidden: hidden units of G (512).
      classifier_extra_class: give C one output more than there are training classes,
        never a target (the authors' labels start at 1, so their ``num_class`` is the
        class count + 1: ``FLAGS.py``, ``lib/HDML.py`` ``cross_entropy``). The extra
        output is the last one; it still enters every softmax denominator.
      head_bn_updates: how the head's BatchNorm statistics move in a step, where H runs
        on the real features and then on the synthetic ones. Both passes normalise with
        their own batch's statistics; what differs is what the moving statistics, which
        only inference reads, learn from: "real" (only the real pass moves them: the
        exported embedder sees real images only), "sequential" (both, as Keras runs
        them: the second update starts from the value the first left) or "prestep"
        (both, each computed from the statistics before the step: moving = pre +
        (1 - m)(b_real - pre) + (1 - m)(b_syn - pre); the deterministic model of the
        authors' graph, whose two TF1 update ops race on one variable).
      nonfinite_syn: what a non-finite J_syn does: "fallback" (J_metric = w J_m, the
        authors' N-pair, whose ``new_npair_loss`` returns 0 for NaN) or "zero_metric"
        (J_metric = 0 and the metric step applies a zero gradient: the authors'
        triplet, where the NaN reaches J_metric and ``nn_Ops.training`` zeroes it).
    """

    loss: str = "npair"
    hdml: bool = True
    alpha: float = 90.0
    beta: float = 1e4
    lambda_start: typing.Optional[float] = None
    w_start: typing.Optional[float] = None
    lambda_gen: float = 0.5
    softmax_factor: float = 1e4
    l2_reg: float = 3e-3
    margin: float = 1.0
    weight_decay: float = 5e-3
    weight_decay_scope: str = "kernels"
    window: int = 64
    j_avg_init: float = 1e6
    j_gen_avg_init: float = 1e6
    record_weighted_jm: bool = True
    generator_hidden: int = 512
    classifier_extra_class: bool = False
    head_bn_updates: str = "real"
    nonfinite_syn: str = "fallback"

    def __post_init__(self):
        # HDML(alpha=90) and HDML(alpha=90.0) hold the same float.
        for field in dataclasses.fields(HDMLParams):
            if field.type in (int, float, bool):
                setattr(self, field.name, field.type(getattr(self, field.name)))
        for name in ("lambda_start", "w_start"):
            if getattr(self, name) is not None:
                setattr(self, name, float(getattr(self, name)))

    def check(self):
        """Raise ValueError naming the first field that holds an impossible value."""
        for name, allowed in (("loss", LOSSES), ("weight_decay_scope", WEIGHT_DECAY_SCOPES),
                              ("head_bn_updates", HEAD_BN_UPDATES),
                              ("nonfinite_syn", NONFINITE_SYN)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected one of "
                                 f"{', '.join(allowed)}")
        if self.window < 1:
            raise ValueError(f"window={self.window!r}: must be a positive number of steps")
        for name in ("lambda_start", "w_start"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value < 1.0:
                raise ValueError(f"{name}={value!r}: must be in (0, 1), or unset to use "
                                 f"{'alpha' if name == 'lambda_start' else 'beta'} as given")

    @classmethod
    def names(cls):
        """The field names, in order."""
        return tuple(field.name for field in dataclasses.fields(HDMLParams))

    def hdml_kwargs(self):
        """Only the `HDMLParams` fields, as keyword arguments for ``HDML`` (a
        ``ModelConfig`` also holds backbone settings)."""
        return {name: getattr(self, name) for name in HDMLParams.names()}


def tuple_size(loss):
    """Images per tuple: 2 for "npair", 3 for "triplet"."""
    if loss not in TUPLE_SIZE:
        raise ValueError(f"loss={loss!r}: expected one of {LOSSES}")
    return TUPLE_SIZE[loss]
