"""The head's BatchNorm statistics from the real training images.

H (BatchNorm then Dense) runs twice in an HDML step: on the real features y and on the
generator's synthetic ỹ. Training normalises each pass with its own batch's statistics
and never reads the moving ones; inference reads only those. With
``model.head_bn_updates="real"`` (the default) only the real pass moves them. With
"sequential" or "prestep" (the authors' graph) the synthetic pass moves them too, and the
exported embedder would normalise real images with statistics learned half from
synthetic features. `reestimate` replaces them by the moments of the real training
features, the backbone in inference mode; `hdml-tf train` reports the test metrics both
ways for such a run, and `hdml-tf export` exports the re-estimated head unless told
``--head-statistics trained`` (docs/method.md, "The head's BatchNorm statistics").
"""

import numpy as np

from hdml_tf import data as data_lib
from hdml_tf.data import pipeline
from hdml_tf.models import HDML

MODES = ("auto", "trained", "real")


def carries_synthetic(params):
    """Whether a model trained with ``params`` (`hdml_tf.params.HDMLParams`, or None
    when unknown) let the synthetic pass move its head's moving statistics."""
    return bool(params is not None and params.hdml and params.head_bn_updates != "real")


def wanted(mode, params):
    """Whether ``--head-statistics mode`` re-estimates the head of a model trained with
    ``params``: "real" always, "trained" never, "auto" when its statistics carry
    synthetic features."""
    if mode not in MODES:
        raise ValueError(f"head statistics {mode!r}: expected one of {', '.join(MODES)}")
    return mode == "real" or (mode == "auto" and carries_synthetic(params))


def reestimate(model, config, train_split=None):
    """Set the head's moving statistics to the moments of the real training features.

    Args:
      model: an HDML model or an Embedder (changed in place).
      config: the run's experiment config (its data section names the images).
      train_split: the training split, if loaded already.

    Returns:
      dict: ``images`` (how many were read) and ``variance_ratio`` (the median over
      channels of the old moving variance over the real features' variance: 1 when the
      statistics were already those of real images).
    """
    embedder = model.embedder if isinstance(model, HDML) else model
    d = config.data
    if train_split is None:
        kwargs = {"val_fraction": d.val_fraction} if d.val_fraction else {}
        train_split = data_lib.load_dataset(d.name, "train", d.root, **kwargs)
    images = pipeline.eval_dataset(train_split, batch_size=d.eval_batch_size,
                                   resize=d.resize, crop=d.crop,
                                   preprocessing=embedder.preprocessing,
                                   crop_rounding=d.center_crop_rounding)
    mean, variance, count = embedder.feature_moments(images)
    old = embedder.head.bn.moving_variance.numpy().astype(np.float64)
    ratio = float(np.median(old / np.maximum(variance, 1e-12)))
    embedder.head.set_moving_statistics(mean, variance)
    return {"images": int(count), "variance_ratio": ratio}
