"""Shared, deterministic set-up of the parity check against the HDML authors' graph.

Both sides import this module: ``tools/authors_parity.py`` (which builds the authors'
TF1 graph from a local copy of github.com/wzzheng/HDML and writes the fixture) and the
CI test that runs hdml_tf's ``authors`` mode on the same inputs and compares. It needs
only numpy, so it imports under TF 2.15 (the tool's venv) and under the project's
environment alike.

What is here
------------
* :data:`SETTINGS` -- every constant both sides need, per loss (``"npair"``,
  ``"triplet"``), and :data:`CONFIG_KEYS`, the hdml_tf config key each one is (the
  test checks the paper preset holds these values).
* :data:`PRESETS` / :func:`preset_overrides` -- the paper preset hdml_tf's side is
  built from, and the only overrides (sizes, batch, the statistics' fed values).
* :func:`initial_weights` -- every initial weight, generated from a fixed seed, under
  the neutral names below.
* :func:`backbone_caffe_arrays` -- the backbone part of those weights in the layout of
  the authors' ``tf_ckpt_from_caffe.mat`` (and of
  :func:`hdml_tf.backbones.load_caffe_weights`).
* :func:`fixed_batch` -- the RGB images (uint8, 256 x 256, as both pipelines store
  them) and the labels, before either side's preprocessing.
* :func:`window_sequence` -- the step losses that drive the running statistics.
* :func:`summarize` / :func:`sketch` -- the compressed form of large arrays.
* :func:`load_fixture` -- reads the fixture back; its docstring lists every field.

Neutral weight names (every array float32; the layout is hdml_tf's)
--------------------------------------------------------------------
``backbone/<caffe layer>/kernel``
    HWIO ``(kh, kw, in, out)``, for the 57 Caffe convolutions of BVLC GoogLeNet
    (``conv1/7x7_s2``, ``conv2/3x3_reduce``, ``conv2/3x3``,
    ``inception_3a/1x1`` ... ``inception_5b/pool_proj``; see :data:`BACKBONE_LAYERS`).
``backbone/<caffe layer>/bias``
    ``(out,)``.
``head/bn/gamma``, ``head/bn/beta``, ``head/bn/moving_mean``, ``head/bn/moving_variance``
    ``(1024,)``: the authors' ``Classifier/BN1`` batch normalisation of the pooled
    features (applied to the real features and, with the same variables, to the
    generator's synthetic features).
``head/fc/kernel`` ``(1024, E)``, ``head/fc/bias`` ``(E,)``
    the embedding layer (authors' ``Classifier/fc1``), E = ``embedding_size``.
``generator/fc1/kernel`` ``(E, 512)``, ``generator/fc1/bias`` ``(512,)``
    authors' ``Generator/generator1`` (matmul + bias, then ReLU, then BN).
``generator/bn/gamma``, ``generator/bn/beta``, ``generator/bn/moving_mean``,
``generator/bn/moving_variance``
    ``(512,)``: the BN inside generator1 (after the ReLU).
``generator/fc2/kernel`` ``(512, 1024)``, ``generator/fc2/bias`` ``(1024,)``
    authors' ``Generator/generator2`` (no activation).
``classifier/kernel`` ``(1024, C + 1)``, ``classifier/bias`` ``(C + 1,)``
    the softmax classifier on the pooled (pre-BN) features, C = 98 training classes
    plus the authors' extra class. Column j < C is hdml_tf's class j, the authors'
    label j + 1 (their labels start at 1); the last column is the extra class, the
    authors' column 0 (``tools/authors_parity.py`` rolls the columns by one).

The authors' variable that each neutral name stands for is in the fixture's metadata
(``variable_map``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os

import numpy as np

__all__ = [
    "SETTINGS", "CONFIG_KEYS", "PRESETS", "preset_overrides", "LOSSES", "K_STEPS",
    "BACKBONE_LAYERS", "INIT_SCALES", "IMAGE_MEAN_BGR", "initial_weights",
    "backbone_caffe_arrays", "fixed_batch", "weight_shapes", "window_sequence",
    "WINDOW_STEPS", "FULL_MAX_SIZE", "SKETCH_BUCKETS", "sketch", "summarize",
    "SIGN_FLIPS",
    "fingerprint", "FIXTURE_DIR", "fixture_paths", "load_fixture", "LOSS_TERMS",
    "OBJECTIVES",
]

LOSSES = ("npair", "triplet")
K_STEPS = 2  # training steps the fixture covers

# ---------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------
# The authors' FLAGS.py defaults (their cars196 recommendations) except batch_size and
# the values fed to the Javg / Jgen placeholders. Names follow FLAGS.py where FLAGS.py
# has the constant; the others say where they come from.
_COMMON = {
    "image_size": 227,  # FLAGS.default_image_size; their GoogLeNet's final 7x7 VALID
                        # average pool needs a 7x7 map, i.e. exactly 227 px input
    "resize": 256,  # datasets/*_converter.py store the images at 256 x 256
    "embedding_size": 128,  # FLAGS.embedding_size (cars196)
    "num_class": 99,  # FLAGS.num_class (cars196: 98 training classes + 1)
    "num_train_classes": 98,  # hdml_tf's num_classes (its classifier adds the extra)
    "alpha": 90.0,  # FLAGS.alpha: lambda = exp(-alpha / Javg) in HDML.Pulling
    "beta": 1e4,  # FLAGS.beta: w = exp(-beta / Jgen) weighting J_m and J_syn
    "_lambda": 0.5,  # FLAGS._lambda: J_recon = (1-_lambda)*..., J_soft = _lambda*...
    "Softmax_factor": 1e4,  # FLAGS.Softmax_factor (J_soft scale)
    "loss_l2_reg": 3e-3,  # FLAGS.loss_l2_reg (N-pair embedding l2 term)
    "Regular_factor": 5e-3,  # FLAGS.Regular_factor (weight decay, see wd scope below)
    "init_learning_rate": 7e-5,  # FLAGS.init_learning_rate: Adam lr of J_metric
    "lr_gen": 1e-2,  # FLAGS.lr_gen: Adam lr of J_gen
    "s_lr": 1e-3,  # FLAGS.s_lr: Adam lr of the softmax classifier's cross-entropy
    # tf.train.AdamOptimizer defaults (all three optimizers); epsilon is TF1's
    # "epsilon hat": var -= lr_t * m / (sqrt(v) + eps), lr_t = lr*sqrt(1-b2^t)/(1-b1^t)
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_epsilon": 1e-8,
    # tf.layers.batch_normalization defaults (BN1 and generator1's BN)
    "bn_momentum": 0.99,
    "bn_epsilon": 1e-3,
    "triplet_margin": 1.0,  # Loss_ops.triplet_loss default (Loss() passes none)
    "window": 64,  # nn_Ops.data_collector publishes its mean every 64 values
    "collector_init": 1e6,  # main_*.py: data_collector(..., init=1e+6)
    # Fed to the Javg / Jgen placeholders. Their data_collector publishes a mean only
    # after 64 values, so over K=2 steps the fed values stay at their initial value:
    # we choose them low so that lambda and w are well below 1.
    "Javg": 130.0,  # lambda = exp(-90/130)  = 0.5004
    "Jgen": 1e4,  # w      = exp(-1e4/1e4) = 0.3679
    "K": K_STEPS,
}

SETTINGS = {
    "npair": dict(
        _COMMON,
        LossType="NpairLoss",  # main_npair.py
        batch_size=8,  # 4 anchors then their 4 positives
        num_tuples=4,  # P: anchors (distinct classes)
        # Loss_ops.new_npair_loss(half_batch_size=...) for J_syn; main_npair.py passes
        # none (default 64 = batch 128 / 2); we pass batch_size / 2, their intent.
        npair_half_batch_size=4,
        # fixed_batch: positive i = mix*anchor i + (1-mix)*fresh image; pair 2
        # unrelated, so some of Pulling's candidates are not hardened
        positive_mix=[0.6, 0.5, 0.0, 0.4],
    ),
    "triplet": dict(
        _COMMON,
        LossType="Triplet",  # main_triplet.py
        # anchors, positives, negatives thirds; Loss() also splits the batch in two
        # halves first, so it must be a multiple of 6.
        batch_size=12,
        num_tuples=4,  # T triplets; 2T distinct classes (negatives share none with anchors)
        positive_mix=[0.6, 0.5, 0.5, 0.0],
        # negative t = mix*anchor t + (1-mix)*fresh: triplet 1 has a negative closer
        # to its anchor than its positive (Pulling leaves it alone)
        negative_mix=[0.0, 0.8, 0.0, 0.0],
    ),
}
for _s in SETTINGS.values():
    _s["lambda"] = math.exp(-_s["alpha"] / _s["Javg"])  # pull factor in Pulling
    _s["w"] = math.exp(-_s["beta"] / _s["Jgen"])  # J_metric = w*J_m + (1-w)*J_syn_raw

#: SETTINGS key -> the hdml_tf config key that holds it (the test checks the preset).
CONFIG_KEYS = {
    "image_size": "data.crop", "resize": "data.resize",
    "embedding_size": "model.embedding_dim", "alpha": "model.alpha", "beta": "model.beta",
    "_lambda": "model.lambda_gen", "Softmax_factor": "model.softmax_factor",
    "loss_l2_reg": "model.l2_reg", "Regular_factor": "model.weight_decay",
    "init_learning_rate": "optim.lr_metric", "lr_gen": "optim.lr_gen",
    "s_lr": "optim.lr_cls", "adam_epsilon": "optim.adam_epsilon",
    "triplet_margin": "model.margin", "window": "model.window",
    "collector_init": "model.j_avg_init",
}

#: The paper preset each loss's hdml_tf model is built from.
PRESETS = {"npair": "cars196_npair", "triplet": "cars196_triplet"}


def preset_overrides(loss):
    """The ``--set`` overrides of :data:`PRESETS` [loss] for the parity run: the batch
    and the running statistics' start values (the Javg / Jgen fed here). Nothing else:
    every setting of the method is the preset's."""
    s = SETTINGS[loss]
    return [f"data.batch_size={s['batch_size']}", f"model.j_avg_init={s['Javg']}",
            f"model.j_gen_avg_init={s['Jgen']}"]


# Loss terms stored per step (see load_fixture) and the three objectives.
LOSS_TERMS = (
    "metric_loss", "wd_loss", "J_m", "J_syn", "J_metric", "J_recon", "J_soft", "J_gen",
    "cross_entropy", "lambda", "w",
)
OBJECTIVES = {  # objective -> the variable group its optimizer updates
    "J_metric": ("backbone/", "head/"),
    "J_gen": ("generator/",),
    "cross_entropy": ("classifier/",),
}

# ---------------------------------------------------------------------------------
# GoogLeNet (BVLC) convolution table
# ---------------------------------------------------------------------------------
_INCEPTION = (  # (module, in, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj)
    ("inception_3a", 192, 64, 96, 128, 16, 32, 32),
    ("inception_3b", 256, 128, 128, 192, 32, 96, 64),
    ("inception_4a", 480, 192, 96, 208, 16, 48, 64),
    ("inception_4b", 512, 160, 112, 224, 24, 64, 64),
    ("inception_4c", 512, 128, 128, 256, 24, 64, 64),
    ("inception_4d", 512, 112, 144, 288, 32, 64, 64),
    ("inception_4e", 528, 256, 160, 320, 32, 128, 128),
    ("inception_5a", 832, 256, 160, 320, 32, 128, 128),
    ("inception_5b", 832, 384, 192, 384, 48, 128, 128),
)


def _backbone_layers():
    layers = [("conv1/7x7_s2", (64, 3, 7, 7)), ("conv2/3x3_reduce", (64, 64, 1, 1)),
              ("conv2/3x3", (192, 64, 3, 3))]
    for name, cin, b0, b1r, b1, b2r, b2, b3 in _INCEPTION:
        layers += [
            (f"{name}/1x1", (b0, cin, 1, 1)),
            (f"{name}/3x3_reduce", (b1r, cin, 1, 1)),
            (f"{name}/3x3", (b1, b1r, 3, 3)),
            (f"{name}/5x5_reduce", (b2r, cin, 1, 1)),
            (f"{name}/5x5", (b2, b2r, 5, 5)),
            (f"{name}/pool_proj", (b3, cin, 1, 1)),
        ]
    return tuple(layers)


#: ``(caffe layer name, OIHW kernel shape)`` of the 57 convolutions, in network order.
BACKBONE_LAYERS = _backbone_layers()

#: Scales of the generated initial weights (documented, so a reader can see the
#: network is neither dead nor saturated at 227 px; the tool reports the activations).
INIT_SCALES = {
    "seed": 20190616,
    # backbone kernels: He-normal N(0, 2/fan_in) times this gain
    "backbone_kernel_gain": 1.0,
    # backbone biases: N(0, std^2), non-zero so that a decay scope dropping biases shows
    "backbone_bias_std": 0.5,
    # head fc kernel N(0, (scale/sqrt(1024))^2): BN'd features -> embedding entries of
    # std ~scale
    "head_fc_kernel_scale": 0.3,
    "head_fc_bias_std": 0.1,
    # BN gamma ~ 1 + N(0, 0.1^2), beta ~ N(0, 0.1^2); moving_mean ~ N(0, 1) * mean_scale,
    # moving_variance ~ U(0.5, 1.5) * var_scale (they only matter for the update check)
    "bn_gamma_std": 0.1,
    "bn_beta_std": 0.1,
    "head_bn_moving_mean_scale": 1.0,
    "head_bn_moving_var_scale": 1.0,
    "generator_fc1_kernel_gain": 1.0,  # He-normal on (E, 512)
    "generator_fc1_bias_std": 0.1,
    "generator_fc2_kernel_scale": 1.0,  # N(0, (scale/sqrt(512))^2)
    "generator_fc2_bias_std": 0.1,
    "classifier_kernel_std": 0.003,
    "classifier_bias_std": 0.1,
}

#: The authors' image_mean (FLAGS.py: RGB 123, 117, 104), in the BGR order their
#: batch_data() subtracts it in.
IMAGE_MEAN_BGR = np.array([104.0, 117.0, 123.0], dtype=np.float32)


def weight_shapes(loss):
    """``neutral name -> shape`` of every weight of :func:`initial_weights`."""
    s = SETTINGS[loss]
    e, c = s["embedding_size"], s["num_class"]
    shapes = {}
    for name, (o, i, h, w) in BACKBONE_LAYERS:
        shapes[f"backbone/{name}/kernel"] = (h, w, i, o)
        shapes[f"backbone/{name}/bias"] = (o,)
    for k in ("gamma", "beta", "moving_mean", "moving_variance"):
        shapes[f"head/bn/{k}"] = (1024,)
    shapes["head/fc/kernel"] = (1024, e)
    shapes["head/fc/bias"] = (e,)
    shapes["generator/fc1/kernel"] = (e, 512)
    shapes["generator/fc1/bias"] = (512,)
    for k in ("gamma", "beta", "moving_mean", "moving_variance"):
        shapes[f"generator/bn/{k}"] = (512,)
    shapes["generator/fc2/kernel"] = (512, 1024)
    shapes["generator/fc2/bias"] = (1024,)
    shapes["classifier/kernel"] = (1024, c)
    shapes["classifier/bias"] = (c,)
    return shapes


def initial_weights(loss):
    """Every initial weight of the parity run, ``neutral name -> float32 array``.

    Deterministic: numpy's PCG64 generator seeded with ``INIT_SCALES["seed"]``, one
    child stream per weight (seeded from the weight's name), so adding a weight never
    changes another. Scales: :data:`INIT_SCALES`.
    """
    s = SETTINGS[loss]
    sc = INIT_SCALES
    out = {}

    def rng_for(name):
        digest = hashlib.sha256(name.encode()).digest()
        return np.random.default_rng([sc["seed"], int.from_bytes(digest[:8], "little")])

    def normal(name, shape, std, mean=0.0):
        return (mean + std * rng_for(name).standard_normal(shape)).astype(np.float32)

    for name, (o, i, h, w) in BACKBONE_LAYERS:
        fan_in = i * h * w
        out[f"backbone/{name}/kernel"] = normal(
            f"backbone/{name}/kernel", (h, w, i, o),
            sc["backbone_kernel_gain"] * math.sqrt(2.0 / fan_in))
        out[f"backbone/{name}/bias"] = normal(
            f"backbone/{name}/bias", (o,), sc["backbone_bias_std"])

    def bn(prefix, n, mean_scale, var_scale):
        out[f"{prefix}/gamma"] = normal(f"{prefix}/gamma", (n,), sc["bn_gamma_std"], 1.0)
        out[f"{prefix}/beta"] = normal(f"{prefix}/beta", (n,), sc["bn_beta_std"])
        out[f"{prefix}/moving_mean"] = normal(f"{prefix}/moving_mean", (n,), mean_scale)
        out[f"{prefix}/moving_variance"] = (
            var_scale * rng_for(f"{prefix}/moving_variance").uniform(0.5, 1.5, (n,))
        ).astype(np.float32)

    e, c = s["embedding_size"], s["num_class"]
    bn("head/bn", 1024, sc["head_bn_moving_mean_scale"], sc["head_bn_moving_var_scale"])
    out["head/fc/kernel"] = normal(
        "head/fc/kernel", (1024, e), sc["head_fc_kernel_scale"] / math.sqrt(1024))
    out["head/fc/bias"] = normal("head/fc/bias", (e,), sc["head_fc_bias_std"])
    out["generator/fc1/kernel"] = normal(
        "generator/fc1/kernel", (e, 512), sc["generator_fc1_kernel_gain"] * math.sqrt(2.0 / e))
    out["generator/fc1/bias"] = normal("generator/fc1/bias", (512,), sc["generator_fc1_bias_std"])
    bn("generator/bn", 512, 1.0, 1.0)
    out["generator/fc2/kernel"] = normal(
        "generator/fc2/kernel", (512, 1024), sc["generator_fc2_kernel_scale"] / math.sqrt(512))
    out["generator/fc2/bias"] = normal("generator/fc2/bias", (1024,), sc["generator_fc2_bias_std"])
    out["classifier/kernel"] = normal("classifier/kernel", (1024, c), sc["classifier_kernel_std"])
    out["classifier/bias"] = normal("classifier/bias", (c,), sc["classifier_bias_std"])
    shapes = weight_shapes(loss)
    assert set(out) == set(shapes) and all(out[k].shape == shapes[k] for k in out)
    return out


def backbone_caffe_arrays(weights):
    """The backbone of `weights` in the ``tf_ckpt_from_caffe.mat`` layout.

    ``<caffe layer>``: OIHW kernel (HWIO transposed by ``(3, 2, 0, 1)``);
    ``<caffe layer>_bias``: ``(out,)``. This is what the authors' GoogleNet_Model reads
    (it transposes kernels back with ``(2, 3, 1, 0)``) and what
    ``hdml_tf.backbones.load_caffe_weights`` reads.
    """
    arrays = {}
    for name, _ in BACKBONE_LAYERS:
        arrays[name] = np.ascontiguousarray(
            weights[f"backbone/{name}/kernel"].transpose(3, 2, 0, 1))
        arrays[f"{name}_bias"] = weights[f"backbone/{name}/bias"]
    return arrays


# ---------------------------------------------------------------------------------
# The batch
# ---------------------------------------------------------------------------------
def _interp_matrix(n_out, n_in):
    """Linear interpolation of n_in grid points onto n_out pixels (align corners)."""
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] = 1.0 - frac
    m[np.arange(n_out), lo + 1] = frac
    return m


def _smooth_rgb(rng, size):
    """One smooth random RGB image in (0, 255), HWC float64: two octaves of
    interpolated noise plus a little per-pixel noise (so that no two pixels, and no
    two pooling candidates downstream, tie exactly), squashed into (0, 255) with tanh
    instead of clipped (clipping makes constant patches, hence ties)."""
    img = np.zeros((size, size, 3))
    for grid, amp in ((5, 55.0), (17, 25.0)):
        m = _interp_matrix(size, grid)
        for ch in range(3):
            img[:, :, ch] += amp * (m @ rng.standard_normal((grid, grid)) @ m.T)
    img += rng.uniform(-20, 20, (1, 1, 3)) + rng.uniform(-4.0, 4.0, img.shape)
    return 127.5 + 127.0 * np.tanh(img / 127.5)


def fixed_batch(loss):
    """``(rgb, labels)`` of the parity run, before either side's preprocessing.

    rgb: uint8 ``(B, 256, 256, 3)``, NHWC, RGB: what both pipelines hold after
        decoding and resizing (the authors' converters store 256 x 256 uint8 images;
        hdml_tf's evaluation resize to 256 leaves a 256 image unchanged). Smooth
        random images; positive i is ``m * anchor i + (1 - m) * a fresh image`` with
        m = ``SETTINGS[loss]["positive_mix"][i]``, triplet negatives likewise with
        ``negative_mix``, so that some tuples are easy and some hard.
    labels: int32 ``(B,)``, hdml_tf's classes in ``[0, 98)``; the authors' graph is
        fed ``labels + 1`` (their labels start at 1).

    Both sides then run their evaluation preprocessing, the one deterministic path:
    hdml_tf ``training.evaluation_dataset`` (resize, centre crop at
    ``data.center_crop_rounding``, Caffe normalisation); the tool the authors'
    ``RandomFixedSizeCrop(center_crop=True)`` and ``nn_Ops.batch_data``.

    N-pair (B = 8): 4 anchors, then the 4 positives in the same order with the
    anchors' labels; 4 distinct classes.
    Triplet (B = 12): 4 anchors, 4 positives (anchors' labels), 4 negatives; 8
    distinct classes (no negative shares a class with any anchor).
    """
    s = SETTINGS[loss]
    rng = np.random.default_rng([INIT_SCALES["seed"], 1 + LOSSES.index(loss)])
    size, n = s["resize"], s["num_tuples"]
    classes = rng.choice(s["num_train_classes"], size=2 * n, replace=False)
    anchors = [_smooth_rgb(rng, size) for _ in range(n)]
    positives = [m * a + (1.0 - m) * _smooth_rgb(rng, size)
                 for a, m in zip(anchors, s["positive_mix"])]
    rgb = anchors + positives
    lab = list(classes[:n]) * 2
    if loss == "triplet":
        rgb += [m * a + (1.0 - m) * _smooth_rgb(rng, size)
                for a, m in zip(anchors, s["negative_mix"])]
        lab += list(classes[n:])
    rgb = np.clip(np.rint(np.stack(rgb)), 0, 255).astype(np.uint8)
    labels = np.asarray(lab, dtype=np.int32)
    assert rgb.shape == (s["batch_size"], size, size, 3)
    return rgb, labels


# ---------------------------------------------------------------------------------
# The running statistics' input
# ---------------------------------------------------------------------------------
#: Steps of :func:`window_sequence`: more than two windows of 64 recorded values.
WINDOW_STEPS = 150
#: Steps whose J_m / J_gen is NaN in :func:`window_sequence`.
WINDOW_NAN_STEPS = {"j_m": (20, 90), "j_gen": (45, 110)}


def window_sequence():
    """The step losses that drive both sides' running statistics, ``{"j_m", "j_gen"}``,
    float32 ``(WINDOW_STEPS,)``.

    ``j_m``: the metric loss plus weight decay, not weighted by w (what the authors'
    graph multiplies by w before they record it); ``j_gen``: J_gen. Shaped like the
    first steps of a Cars196 run (the parity run's step-0 terms: J_m ~ 41, dominated
    by the decay, J_gen ~ 2e6, falling to ~1e4 as the generator learns), with noise,
    so that λ and w change at each published window; NaN at
    :data:`WINDOW_NAN_STEPS` (the authors' ``data_collector`` skips a NaN, so a window
    with one spans 65 steps). Generated, not recorded from a run: the running
    statistics read nothing else.
    """
    rng = np.random.default_rng([INIT_SCALES["seed"], 99])
    k = np.arange(WINDOW_STEPS, dtype=np.float64)
    j_m = 41.5 - 0.02 * k + 0.8 * np.exp(-k / 30.0) + 0.3 * rng.standard_normal(k.size)
    j_gen = 2.1e6 * np.exp(-k / 12.0) + 6e3 + 2e3 * np.abs(rng.standard_normal(k.size))
    out = {"j_m": j_m.astype(np.float32), "j_gen": j_gen.astype(np.float32)}
    for name, steps in WINDOW_NAN_STEPS.items():
        out[name][list(steps)] = np.nan
    return out


# ---------------------------------------------------------------------------------
# Compressed form of large arrays
# ---------------------------------------------------------------------------------
#: Sign flips of Adam updates allowed beyond the noise. Adam steps each element by
#: about ±lr whatever its gradient's size (exactly ±lr / (1 + eps/|g|) at the first
#: step), so an element whose gradient is within rounding of 0 may step either way:
#: a flip moves the update by up to 2·max|u|, 3e-3 of the norm of a 500,000-element
#: update. Measured on the parity run: hdml_tf and the authors' oneDNN-on run flip
#: about the same elements (3,614 and 3,742 over both steps of N-pair), but where
#: their run flipped none, hdml_tf may flip one. The update bound is therefore
#: max(1e-3, 2 noise_rel) ||u|| + sqrt(SIGN_FLIPS) · 2 max|u|.
SIGN_FLIPS = 2

#: arrays with at most this many elements are stored whole
FULL_MAX_SIZE = 4096
#: buckets of the count sketch of a larger array
SKETCH_BUCKETS = 512


@functools.lru_cache(maxsize=256)
def _sketch_map(name, size):
    """(bucket, sign) of each element: from the raw 64-bit PCG64 stream seeded by the
    name's hash (``random_raw`` is the bit generator itself, the same in every numpy
    release)."""
    digest = hashlib.sha256(("sketch/" + name).encode()).digest()
    raw = np.random.PCG64(int.from_bytes(digest[:8], "little")).random_raw(size)
    bucket = (raw % np.uint64(SKETCH_BUCKETS)).astype(np.int64)
    sign = np.where((raw >> np.uint64(63)) == 1, -1.0, 1.0)
    return bucket, sign


def sketch(name, array):
    """Count sketch of `array` (float64 ``(SKETCH_BUCKETS,)``): element i, flat C
    order, is added with a random sign into a random bucket, both fixed by `name`.

    Linear, so ``sketch(n, a) - sketch(n, b) == sketch(n, a - b)``, and for any d,
    ``||sketch(n, d)||²`` is an unbiased estimate of ``||d||²`` with relative standard
    deviation at most sqrt(2 / SKETCH_BUCKETS) = 6% (3% on the norm). That is what
    the test needs from a gradient or an update too big to store: the norm of the
    difference between hdml_tf's and the authors', to compare with a tolerance of
    1e-3 of the stored exact norm; a one-line change of the maths moves it by far
    more than 3%.
    """
    flat = np.asarray(array, dtype=np.float64).reshape(-1)
    bucket, sign = _sketch_map(name, flat.size)
    return np.bincount(bucket, weights=sign * flat, minlength=SKETCH_BUCKETS)


def summarize(name, array, dtype=np.float32):
    """What the fixture stores of `array` named `name`: ``{"norm": float64 L2 norm}``
    plus ``"values"`` (the whole array, flat, as `dtype`) when it has at most
    :data:`FULL_MAX_SIZE` elements, else ``"sketch"`` (:func:`sketch`)."""
    flat = np.asarray(array).reshape(-1)
    f64 = flat.astype(np.float64)
    out = {"norm": np.float64(np.sqrt(np.dot(f64, f64)))}
    if flat.size <= FULL_MAX_SIZE:
        out["values"] = flat.astype(dtype)
    else:
        out["sketch"] = sketch(name, f64)
    return out


def fingerprint(arrays):
    """``{"sha256": ..., "sum": ..., "abs_sum": ...}`` of a dict of arrays (or one
    array), in sorted-key order: to check the generators still give what the fixture
    was made from (compare the sums with a tolerance; the hash is exact)."""
    if isinstance(arrays, np.ndarray):
        arrays = {"": arrays}
    h = hashlib.sha256()
    total = abs_total = 0.0
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(k.encode())
        h.update(a.tobytes())
        total += float(a.astype(np.float64).sum())
        abs_total += float(np.abs(a.astype(np.float64)).sum())
    return {"sha256": h.hexdigest(), "sum": total, "abs_sum": abs_total}


# ---------------------------------------------------------------------------------
# The fixture
# ---------------------------------------------------------------------------------
FIXTURE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def fixture_paths(directory=None):
    d = FIXTURE_DIR if directory is None else directory
    return {
        "npair": os.path.join(d, "authors_parity_npair.npz"),
        "triplet": os.path.join(d, "authors_parity_triplet.npz"),
        "window": os.path.join(d, "authors_parity_window.npz"),
        "meta": os.path.join(d, "authors_parity.json"),
    }


def load_fixture(loss, directory=None):
    """Reads the authors'-graph fixture of `loss` (or ``"window"``):
    ``{"arrays": {...}, "meta": {...}}``.

    ``meta`` is ``authors_parity.json``'s common part merged with its `loss` section:
    ``authors_repository``, ``authors_commit``, ``tensorflow_version``,
    ``reference_run``, ``deviations`` (what the tool did differently from running
    their main_*.py, and why), ``settings`` (= :data:`SETTINGS` [loss] at creation),
    ``init_scales``, ``variable_map`` (authors' variable name -> neutral name),
    ``wd_loss_variables`` (the authors' variables wdLoss sums over, and
    ``wd_loss_variables_neutral``), ``objective_variables`` (objective -> neutral
    names its optimizer updates), ``bn_update_model``, ``bn_moving_variance`` (which
    variance the moving-variance update used), ``sanity`` (activations, hardened
    fraction, the BN update checked against numpy, ...), ``input_fingerprint`` /
    ``initial_weights_fingerprint`` (:func:`fingerprint` of :func:`fixed_batch` /
    :func:`initial_weights` when made), ``authors_input_fingerprint`` (of the batch
    their pipeline made from it), ``noise_summary``, ``sizes``.

    ``arrays`` of a loss (K = 2 steps; names are the neutral names of this module;
    ``<s>`` is a :func:`summarize` form: ``<key>/norm`` float64, then ``<key>/values``
    or ``<key>/sketch``):

    ``loss/<term>``: float64 ``(K,)``, the value at step k (k = 0 at the initial
        weights, k = 1 after one update), for <term> in :data:`LOSS_TERMS`:
        ``metric_loss`` the raw metric loss (Loss_ops.Loss: N-pair loss with its
        embedding l2 term / triplet loss, summed over triplets); ``wd_loss`` their
        weight decay; ``J_m`` as they report it = w * (metric_loss + wd_loss);
        ``J_syn`` = (1 - w) * metric loss of the synthetic tuples; ``J_metric`` =
        J_m + J_syn; ``J_recon``; ``J_soft``; ``J_gen`` = J_recon + J_soft;
        ``cross_entropy`` (softmax classifier on the pooled features); ``lambda`` =
        exp(-alpha/Javg) and ``w`` = exp(-beta/Jgen) as the graph computes them.
    ``grad0/<objective>/<var>/<s>``: the gradient of <objective> at the INITIAL
        weights w.r.t. each variable its optimizer updates; ``values`` float32.
    ``update/<k>/<var>/<s>``: the update of step k, w_{k+1} - w_k, of every trainable
        variable, float64 (the difference of two float32 values, exact), and
        ``update/<k>/<var>/max_abs``, its largest element (see :data:`SIGN_FLIPS`).
    ``bn/<var>``: float32 ``(K, n)``, the BN moving statistics after each step, for
        head/bn/moving_mean, head/bn/moving_variance, generator/bn/moving_mean,
        generator/bn/moving_variance (their initial values: :func:`initial_weights`).
    ``noise_rel/<key>``: float64, ``||a_0 - a_1|| / ||a_0||`` between the run with
        TF_ENABLE_ONEDNN_OPTS=0 (the reference, stored) and one with =1, for every
        ``grad0/...``, ``update/...`` and ``bn/<var>/<k>`` (a statistic's update).
    ``noise/loss/<term>``: float64 ``(K,)``, ``|a_0 - a_1|`` of the loss terms;
    ``sketch_selftest``: :func:`sketch` ("selftest", arange(10000)) by the tool.

    ``arrays`` of ``"window"`` (:data:`WINDOW_STEPS` steps, their data_collector
    driven by :func:`window_sequence`; float64 copies of float32 values):
    ``j_m``, ``j_gen`` the input; ``javg_fed``, ``jgen_fed`` what ``read()`` gave
    before the step (fed to their placeholders); ``lambda``, ``w`` what their graph
    computes from them; ``j_m_recorded`` their fetched J_m = w * j_m;
    ``javg_after``, ``jgen_after`` ``read()`` after the step's ``update``.
    """
    paths = fixture_paths(directory)
    with open(paths["meta"]) as f:
        meta_all = json.load(f)
    meta = {k: v for k, v in meta_all.items() if k not in LOSSES + ("window",)}
    meta.update(meta_all.get(loss, {}))
    with np.load(paths[loss], allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return {"arrays": arrays, "meta": meta}
