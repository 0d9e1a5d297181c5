"""From an experiment config to the compiled model ``hdml-tf train`` trains.

One function, `build_model`, shared by training, checkpoint loading, export of a
killed run and the benchmarks, so every one of them builds the same model.
"""

import functools

import keras
import tensorflow as tf

from hdml_tf.backbones import build_backbone
from hdml_tf.evaluation.callbacks import authors_schedule
from hdml_tf.models import HDML
from hdml_tf.networks import Embedder
from hdml_tf.schedules import GlobalStepDecay


def build_model(config, num_classes):
    """Backbone, Embedder, HDML and the three optimizers, compiled and built.

    Args:
      config: a validated ``hdml_tf.config.ExperimentConfig``.
      num_classes: outputs of the softmax classifier (the training classes).

    Returns:
      The built and compiled `hdml_tf.models.HDML`; under a distribution strategy,
      call it inside the strategy's scope.
    """
    m, t, d = config.model, config.train, config.data
    # Several replicas: BatchNorm statistics over the global batch, as on one device.
    sync_bn = tf.distribute.get_strategy().num_replicas_in_sync > 1
    previous_policy = keras.config.dtype_policy()
    if t.precision != "float32":
        keras.config.set_dtype_policy(t.precision)
    try:
        backbone_kwargs = {"lrn": m.lrn} if m.backbone.lower() == "inception_v1" else {}
        backbone = build_backbone(m.backbone, weights=m.weights,
                                  input_shape=(d.crop, d.crop, 3), **backbone_kwargs)
        embedder = Embedder(backbone, embedding_dim=m.embedding_dim, synchronized_bn=sync_bn)
        model = HDML(embedder, num_classes, synchronized_bn=sync_bn, **m.hdml_kwargs(),
                     # G, C and the losses in float32 whatever the backbone computes in
                     # (the Embedder keeps its head in float32 itself).
                     dtype="float32" if t.precision != "float32" else None)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    model.compile(*_optimizers(config))
    model.build((None, d.crop, d.crop, 3))  # compiled: builds the optimizers too
    return model


def authors_eval_schedule(config):
    """``step -> bool``: the authors' evaluation steps with this config's intervals
    (``train.authors_eval_every_initial``, ``train.authors_eval_every``)."""
    t = config.train
    return functools.partial(authors_schedule, every=t.authors_eval_every,
                             every_initial=t.authors_eval_every_initial)


def lr_decay_boundaries(config):
    """The global steps after which the metric learning rate is multiplied by
    ``optim.lr_decay_factor``: ``optim.lr_decay_steps``, with ``optim.lr_decay_rule``
    "authors" only those the authors' evaluation schedule evaluates after
    (``main_npair.py`` halves ``_lr`` inside its evaluation block)."""
    o = config.optim
    if o.lr_decay_rule == "authors":
        evaluates = authors_eval_schedule(config)
        return tuple(s for s in o.lr_decay_steps if evaluates(s))
    return tuple(o.lr_decay_steps)


def _optimizers(config):
    """The metric, generator and classifier optimizers of ``config.optim``."""
    o = config.optim
    lr_metric = o.lr_metric
    boundaries = lr_decay_boundaries(config)
    if boundaries:  # follows the model's step counter (HDML.compile binds it)
        lr_metric = GlobalStepDecay(o.lr_metric, boundaries, o.lr_decay_factor)
    optimizers = [keras.optimizers.Adam(lr, epsilon=o.adam_epsilon)
                  for lr in (lr_metric, o.lr_gen, o.lr_cls)]
    if config.train.precision == "mixed_float16":
        # Only the metric objective runs through float16 compute; G and C are float32.
        optimizers[0] = keras.optimizers.LossScaleOptimizer(optimizers[0])
    return optimizers
