"""Runs the HDML authors' TF1 graph for K = 2 steps and writes the parity fixture.

Not run in CI. Command (from the repository root; TF 2.15 in its own venv, because
their code needs ``tf.compat.v1.layers`` with Keras 2; the project's environment is not
touched)::

    python3.11 -m venv /tmp/tf215
    /tmp/tf215/bin/pip install "tensorflow-cpu==2.15.*" scipy "numpy<2"
    mkdir -p /tmp/hdml_authors
    git --git-dir=<bare clone of github.com/wzzheng/HDML> archive HEAD \\
        | tar -x -C /tmp/hdml_authors
    /tmp/tf215/bin/python tools/authors_parity.py --authors /tmp/hdml_authors \\
        --authors-commit "$(git --git-dir=<bare clone> rev-parse HEAD)"

It writes ``tests/fixtures/authors_parity_{npair,triplet,window}.npz`` and
``tests/fixtures/authors_parity.json`` (fields: ``tests/authors_parity_common.py``,
``load_fixture``). Each loss is run in two worker processes of this script, one with
``TF_ENABLE_ONEDNN_OPTS=0`` (the reference: its numbers are stored) and one with ``=1``
(only the relative differences are stored, as the run-to-run noise).

No code of the authors' is in this repository. The script imports their modules
(``lib/GoogleNet_Model``, ``lib/nn_Ops``, ``lib/Loss_ops``, ``lib/HDML``,
``datasets/random_fixed_size_crop_mod``) at run time from the checkout given by
``--authors`` and calls their functions and classes (``GoogleNet_Model``, ``bn_block``,
``fc_block``, ``Loss``, ``Pulling``, ``npairSplit``, ``new_npair_loss``,
``cross_entropy``, ``genSoftmax``, ``RandomFixedSizeCrop``, ``batch_data``,
``data_collector``) in the order their ``main_npair.py`` / ``main_triplet.py`` use them.
The wiring between those calls (the few lines of arithmetic in main_*.py: the w / 1-w
weighting, J_recon, the triplet J_soft, the slices, the collectors' feed) is
re-expressed here.

Shims (module-level, no edit of their files; nothing of their maths changed)
---------------------------------------------------------------------------
* ``FLAGS``: their FLAGS.py is not imported (it needs absl flags parsing, a GPU config,
  and has an unterminated string literal at ``init_batch_per_epoch``); a stand-in module
  exports what ``from FLAGS import *`` gave them: ``tf`` (= ``tensorflow.compat.v1``),
  ``np``, ``os``, ``time``, ``image_mean`` and ``FLAGS`` with the values of
  ``SETTINGS[loss]``. ``FLAGS.batch_size`` is an ``int`` whose ``/`` by an int is
  Python 2 floor division (their code ran under Python 2, where ``batch_size / 2`` is an
  int that ``tf.tile`` accepts); ``FLAGS.embedding_size`` is the int 128 (their TF1
  argparse flags left the int default of a float flag unconverted; a float breaks
  ``tf.tile`` in the triplet ``Pulling``).
* ``tensorlayer``: a stand-in with ``layers.get_variables_with_name`` (imported by
  nn_Ops; only their ``training()`` uses it, which this script does not call).
* ``fuel``: stand-ins for what ``random_fixed_size_crop_mod`` imports
  (``SourcewiseTransformer``, ``ExpectsAxisLabels``, ``window_batch_bchw``,
  ``config.default_seed``), enough to construct their ``RandomFixedSizeCrop`` and call
  its ``transform_source_batch`` on a batch (the centre crop is their own code; the
  random crop, which needs fuel's Cython ``window_batch_bchw``, is not used).
* ``GoogleNet_Model`` does ``import tensorflow as tf``: its global ``tf`` is rebound to
  ``tensorflow.compat.v1`` after import (the standard TF2 migration line).
* ``Loss_ops`` calls ``math_ops.reduce_sum(..., keep_dims=True)`` (TF1's signature):
  its global ``math_ops`` is rebound to a proxy whose ``reduce_*`` are TF's ``*_v1``
  functions (which take ``keep_dims``); everything else passes through.
* ``Embedding_Visualization.embedding_assign`` (a non-trainable 256 x E variable for
  TensorBoard) is not built: it imports their dataset pipeline and changes no number.

Deviations from running their main_*.py (also in the fixture metadata, ``deviations``)
-----------------------------------------------------------------------------------
(a) Optimizer routing. They run three ``AdamOptimizer(lr).minimize()`` ops (J_metric on
    the trainable variables named ``*Classifier*``, J_gen on ``*Generator*``,
    cross_entropy on ``*Softmax_classifier*``) in one ``sess.run`` on TF1 reference
    variables, so one optimizer's update can land before another objective's gradient
    reads a shared variable (J_gen reads the backbone and head, J_metric reads the
    generator): their step is nondeterministic. Here variables are resource variables
    and each step is: one ``sess.run`` fetching every loss term and all three
    objectives' gradients (``tf.gradients`` of the same NaN-guarded loss their
    ``nn_Ops.training`` minimises, w.r.t. the same variable lists), then the BN moving
    statistics updates (b), then the three TF1 ``AdamOptimizer`` (their optimizer and
    defaults: beta1 0.9, beta2 0.999, epsilon 1e-8; separate slots and beta powers per
    optimizer) ``apply_gradients`` with the fetched gradients. So all gradients are
    taken at the weights of the step's start, as hdml_tf does.
(b) BN moving statistics. Their graph has three sets of update ops in UPDATE_OPS, run
    with every train op: BN1 on the real features, generator1's BN, and BN1 again (same
    variables, reuse=True) on the synthetic features. In their single ``sess.run`` the
    two BN1 updates of the same variables race: each reads the variable and
    ``assign_sub``s its delta, and with reference variables the second may read the
    pre-step value or the value the first left. Here the race is made deterministic in
    the outcome where both read the pre-step value: BN1-real (with generator-BN) runs
    from the pre-step value, BN1 is put back to the pre-step value, BN1-synthetic runs
    from it, and the sum of both deltas is kept: moving = pre + (1 - m)(b_real - pre) +
    (1 - m)(b_syn - pre). hdml_tf's ``model.head_bn_updates="prestep"`` is the same
    model. Batch statistics are those at the step's start weights (the updates only
    touch moving statistics, which the training-mode forward does not read).
    ``bn_moving_variance`` in the metadata says whether the variance used was the
    biased (1/n) or unbiased one, checked against numpy.
(c) ``Loss_ops.new_npair_loss`` (J_syn of N-pair) defaults to ``half_batch_size=64``
    and main_npair.py passes none (right only at batch 128); at batch 8 we pass
    ``half_batch_size = batch_size / 2 = 4``, their intent.
(d) ``GoogleNet_Model`` reads ``tf_ckpt_from_caffe.mat`` from a hard-coded
    ``model_dir``: the generated backbone weights
    (``authors_parity_common.backbone_caffe_arrays``) are written to a temporary .mat and
    its directory passed as ``model_dir``. The head, generator and classifier weights
    (and the BN moving statistics) are assigned after ``global_variables_initializer``;
    every variable's value is checked against ``initial_weights`` before step 0. Their
    classifier's column 0 (labels start at 1, never a target) is the neutral layout's
    last column: columns are rolled by one on the way in and out.
(e) wdLoss = Regular_factor * sum of ``tf.nn.l2_loss`` over ``tf.trainable_variables()``
    at the point main_*.py builds it (inside the Classifier scope, after fc1, before the
    generator and the softmax classifier exist), minus names containing
    ``batch_normalization``, ``Generator`` or ``Loss``: it is built at the same point
    here, and the exact list is stored (``wd_loss_variables``). Note their backbone
    variables are created with ``collections=[WEIGHTS, GLOBAL_VARIABLES]``, which
    ``tf.get_variable`` still makes trainable (trainable=True appends
    TRAINABLE_VARIABLES): the kernels train and are decayed.
(f) Input. The batch is their test pipeline's (the one deterministic path): the
    256 x 256 RGB uint8 images of ``fixed_batch`` as NCHW, their
    ``RandomFixedSizeCrop(center_crop=True)``, then ``nn_Ops.batch_data``; labels + 1.
Also: Javg / Jgen are fed constants (SETTINGS) instead of their data_collector means
(1e6 until 64 steps have been recorded; the collectors are driven separately, on
``window_sequence``, for ``authors_parity_window.npz``); the learning rate placeholder
gets ``init_learning_rate``; TF runs with one intra- and one inter-op thread and
TF_DETERMINISTIC_OPS=1.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

import numpy as np  # noqa: E402

import authors_parity_common as common  # noqa: E402

AUTHORS_REPOSITORY = "https://github.com/wzzheng/HDML"
BN_STATS = ("head/bn/moving_mean", "head/bn/moving_variance",
            "generator/bn/moving_mean", "generator/bn/moving_variance")
HEAD_STATS = BN_STATS[:2]

# Non-backbone variables: authors' name (without ':0') -> neutral name.
_NAMED = {
    "Classifier/BN1/batch_normalization/gamma": "head/bn/gamma",
    "Classifier/BN1/batch_normalization/beta": "head/bn/beta",
    "Classifier/BN1/batch_normalization/moving_mean": "head/bn/moving_mean",
    "Classifier/BN1/batch_normalization/moving_variance": "head/bn/moving_variance",
    "Classifier/fc1/weightfc1w": "head/fc/kernel",
    "Classifier/fc1/biasfc1b": "head/fc/bias",
    "Generator/generator1/weightgenerator1w": "generator/fc1/kernel",
    "Generator/generator1/biasgenerator1b": "generator/fc1/bias",
    "Generator/generator1/generator1BN/batch_normalization/gamma": "generator/bn/gamma",
    "Generator/generator1/generator1BN/batch_normalization/beta": "generator/bn/beta",
    "Generator/generator1/generator1BN/batch_normalization/moving_mean":
        "generator/bn/moving_mean",
    "Generator/generator1/generator1BN/batch_normalization/moving_variance":
        "generator/bn/moving_variance",
    "Generator/generator2/weightgenerator2w": "generator/fc2/kernel",
    "Generator/generator2/biasgenerator2b": "generator/fc2/bias",
    "Softmax_classifier/weightsoftmax_w": "classifier/kernel",
    "Softmax_classifier/biassoftmax_b": "classifier/bias",
}
_CLASSIFIER = ("classifier/kernel", "classifier/bias")
# objective -> substring their nn_Ops.training selects trainable variables by
_SCOPES = {"J_metric": "Classifier", "J_gen": "Generator",
           "cross_entropy": "Softmax_classifier"}
_LRS = {"J_metric": "init_learning_rate", "J_gen": "lr_gen", "cross_entropy": "s_lr"}


def to_authors(name, array):
    """A neutral array in their layout: the classifier's last column is their 0."""
    return np.roll(array, 1, axis=-1) if name in _CLASSIFIER else array


def to_neutral(name, array):
    """One of their arrays in the neutral layout (inverse of `to_authors`)."""
    return np.roll(array, -1, axis=-1) if name in _CLASSIFIER else array


# ---------------------------------------------------------------------------------
# Shims and loading their modules
# ---------------------------------------------------------------------------------
class _Py2Int(int):
    """An int whose ``/`` by an int is floor division, as in Python 2."""

    def __truediv__(self, other):
        if isinstance(other, int):
            return int(self) // other
        return int(self) / other


def _install_shims(tf1, s):
    flags = types.SimpleNamespace(
        dataSet="cars196", LossType=s["LossType"], batch_size=_Py2Int(s["batch_size"]),
        Regular_factor=s["Regular_factor"], init_learning_rate=s["init_learning_rate"],
        default_image_size=s["image_size"], normalize=True,
        embedding_size=int(s["embedding_size"]), loss_l2_reg=s["loss_l2_reg"],
        Apply_HDML=True, Softmax_factor=s["Softmax_factor"], beta=s["beta"],
        lr_gen=s["lr_gen"], alpha=s["alpha"], num_class=s["num_class"],
        _lambda=s["_lambda"], s_lr=s["s_lr"],
    )
    mod = types.ModuleType("FLAGS")
    mod.tf, mod.np, mod.os, mod.time = tf1, np, os, time
    mod.FLAGS = flags
    mod.image_mean = common.IMAGE_MEAN_BGR[None, None, None, :]
    mod.__all__ = ["tf", "np", "os", "time", "FLAGS", "image_mean"]
    sys.modules["FLAGS"] = mod

    def get_variables_with_name(name, train_only=True, printable=False):
        pool = tf1.trainable_variables() if train_only else tf1.global_variables()
        return [v for v in pool if name in v.name]

    tl = types.ModuleType("tensorlayer")
    tl.layers = types.SimpleNamespace(get_variables_with_name=get_variables_with_name)
    sys.modules["tensorlayer"] = tl
    _install_fuel_shim()


def _install_fuel_shim():
    class SourcewiseTransformer:
        def __init__(self, data_stream, which_sources=None, **kwargs):
            self.data_stream, self.which_sources = data_stream, which_sources

    class ExpectsAxisLabels:
        def verify_axis_labels(self, expected, actual, source_name):
            if tuple(expected) != tuple(actual):
                raise ValueError(f"{source_name}: axis labels {actual}, not {expected}")

    def window_batch_bchw(*args):
        raise NotImplementedError("random crops are not used by the parity run")

    fuel = types.ModuleType("fuel")
    transformers = types.ModuleType("fuel.transformers")
    image = types.ModuleType("fuel.transformers._image")
    transformers.SourcewiseTransformer = SourcewiseTransformer
    transformers.ExpectsAxisLabels = ExpectsAxisLabels
    image.window_batch_bchw = window_batch_bchw
    fuel.config = types.SimpleNamespace(default_seed=1)
    fuel.transformers = transformers
    sys.modules.update({"fuel": fuel, "fuel.transformers": transformers,
                        "fuel.transformers._image": image})


class _V1MathOps:
    """tensorflow.python.ops.math_ops with the v1 ``reduce_*`` (``keep_dims=``)."""

    def __init__(self, math_ops):
        self._m = math_ops

    def __getattr__(self, name):
        if name.startswith("reduce_") and hasattr(self._m, name + "_v1"):
            return getattr(self._m, name + "_v1")
        return getattr(self._m, name)


def _load_authors(authors_dir, tf1):
    sys.path.insert(0, os.path.abspath(authors_dir))
    mods = {}
    rebound = []
    for name in ("nn_Ops", "Loss_ops", "HDML", "GoogleNet_Model"):
        m = importlib.import_module(f"lib.{name}")
        if getattr(m, "tf", None) is not tf1:
            m.tf = tf1
            rebound.append(f"{name}.tf")
        if hasattr(m, "math_ops"):  # TF1's math_ops.reduce_* took keep_dims=
            m.math_ops = _V1MathOps(m.math_ops)
            rebound.append(f"{name}.math_ops")
        mods[name] = m
    mods["crop"] = importlib.import_module("datasets.random_fixed_size_crop_mod")
    return mods, rebound


def authors_input(mods, rgb, labels, crop):
    """What their test pipeline feeds ``x_raw`` / ``label_raw`` for these images:
    NCHW uint8 (as their HDF5 stores them) -> ``RandomFixedSizeCrop(center_crop=True)``
    -> ``nn_Ops.batch_data`` (RGB -> BGR, NHWC, minus image_mean); labels + 1."""
    stream = types.SimpleNamespace(
        produces_examples=False,
        axis_labels={"images": ("batch", "channel", "height", "width")})
    cropper = mods["crop"].RandomFixedSizeCrop(
        stream, which_sources=("images",), center_crop=True, window_shape=(crop, crop))
    nchw = np.ascontiguousarray(rgb.transpose(0, 3, 1, 2))
    cropped = cropper.transform_source_batch(nchw, "images")
    return mods["nn_Ops"].batch_data((cropped, (labels + 1).reshape(-1, 1)))


# ---------------------------------------------------------------------------------
# The graph, wired as main_npair.py / main_triplet.py wire it
# ---------------------------------------------------------------------------------
def _update_ops_since(tf1, n0):
    return tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)[n0:]


def _build_classifier(tf1, mods, s, mat_dir, g):
    """main_*.py's Classifier scope: GoogLeNet, BN1, fc1, wdLoss and J_m."""
    nn_Ops = mods["nn_Ops"]
    g.x_raw = tf1.placeholder(tf1.float32, [None, s["image_size"], s["image_size"], 3])
    g.label_raw = tf1.placeholder(tf1.int32, [None, 1])
    with tf1.name_scope("istraining"):
        g.is_training = tf1.placeholder(tf1.bool)
    with tf1.variable_scope("Classifier"):
        gnet = mods["GoogleNet_Model"].GoogleNet_Model(model_dir=mat_dir + os.sep)
        g.features = gnet.forward(g.x_raw)  # embedding_y_origin
        n0 = len(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS))
        bn = nn_Ops.bn_block(g.features, normal=True, is_Training=g.is_training, name="BN1")
        g.update_groups["BN1_real"] = _update_ops_since(tf1, n0)
        g.embedding_z = nn_Ops.fc_block(bn, in_d=1024, out_d=s["embedding_size"],
                                        name="fc1", is_bn=False, is_relu=False,
                                        is_Training=g.is_training)
        with tf1.name_scope("Loss"):
            def decayed(name):
                return ("batch_normalization" not in name and "Generator" not in name
                        and "Loss" not in name)

            g.wd_vars = [v for v in tf1.trainable_variables() if decayed(v.name)]
            g.terms["wd_loss"] = s["Regular_factor"] * tf1.add_n(
                [tf1.nn.l2_loss(v) for v in g.wd_vars])
            g.label = tf1.reduce_mean(g.label_raw, axis=1, keep_dims=False)
            g.terms["metric_loss"] = mods["Loss_ops"].Loss(g.embedding_z, g.label,
                                                           s["LossType"])


def _build_generator(tf1, mods, s, loss, g):
    """Javg / Jgen, Pulling, the generator, BN1 + fc1 again on the synthetic rows."""
    nn_Ops, E = mods["nn_Ops"], s["embedding_size"]
    with tf1.name_scope("Javg"):
        g.javg = tf1.placeholder(tf1.float32)
    with tf1.name_scope("Jgen"):
        g.jgen = tf1.placeholder(tf1.float32)
    z_quta = mods["HDML"].Pulling(s["LossType"], g.embedding_z, g.javg)
    g.z_concat = tf1.concat([g.embedding_z, z_quta], axis=0)
    with tf1.variable_scope("Generator"):
        n0 = len(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS))
        y = nn_Ops.fc_block(g.z_concat, in_d=E, out_d=512, name="generator1", is_bn=True,
                            is_relu=True, is_Training=g.is_training)
        g.update_groups["generator_BN"] = _update_ops_since(tf1, n0)
        y = nn_Ops.fc_block(y, in_d=512, out_d=1024, name="generator2", is_bn=False,
                            is_relu=False, is_Training=g.is_training)
        if loss == "npair":
            g.yp, g.yq = mods["HDML"].npairSplit(y)
        else:
            g.yp, g.yq = tf1.split(y, 2, axis=0)
    with tf1.variable_scope("Classifier"):
        n0 = len(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS))
        zq = nn_Ops.bn_block(g.yq, normal=True, is_Training=g.is_training, name="BN1",
                             reuse=True)
        g.update_groups["BN1_synthetic"] = _update_ops_since(tf1, n0)
        g.zq = nn_Ops.fc_block(zq, in_d=1024, out_d=E, name="fc1", is_bn=False,
                               is_relu=False, reuse=True, is_Training=g.is_training)


def _build_losses(tf1, mods, s, loss, g):
    """main_*.py's Loss scope: J_syn, J_m, J_metric, cross_entropy, J_recon, J_soft."""
    Loss_ops, HDML = mods["Loss_ops"], mods["HDML"]
    B, E, P = s["batch_size"], s["embedding_size"], s["num_tuples"]
    t = g.terms
    with tf1.name_scope("Loss"):
        t["w"] = tf1.exp(-s["beta"] / g.jgen)
        t["lambda"] = tf1.exp(-s["alpha"] / g.javg)  # what Pulling computes inline
        if loss == "npair":
            syn = Loss_ops.new_npair_loss(
                labels=g.label, embedding_anchor=tf1.slice(g.zq, [0, 0], [B // 2, E]),
                embedding_positive=tf1.slice(g.zq, [B // 2, 0], [P * P, E]),
                equal_shape=False, reg_lambda=s["loss_l2_reg"],
                half_batch_size=s["npair_half_batch_size"])  # deviation (c)
        else:
            syn = Loss_ops.Loss(g.zq, g.label, _lossType=s["LossType"])
        t["J_syn"] = (1.0 - t["w"]) * syn
        t["J_m"] = t["w"] * (t["metric_loss"] + t["wd_loss"])
        t["J_metric"] = t["J_m"] + t["J_syn"]
        t["cross_entropy"], w_fc, b_fc = HDML.cross_entropy(embedding=g.features,
                                                            label=g.label)
        t["J_recon"] = (1 - s["_lambda"]) * tf1.reduce_sum(tf1.square(g.yp - g.features))
        if loss == "npair":
            t["J_soft"] = HDML.genSoftmax(
                embedding_anc=tf1.slice(g.yq, [0, 0], [B // 2, 1024]),
                embedding_neg=tf1.slice(g.yq, [B // 2, 0], [P * P, 1024]),
                W_fc=w_fc, b_fc=b_fc, label=g.label)
        else:
            logits_q = tf1.matmul(g.yq, w_fc) + b_fc
            t["J_soft"] = s["Softmax_factor"] * s["_lambda"] * tf1.reduce_mean(
                tf1.nn.sparse_softmax_cross_entropy_with_logits(labels=g.label,
                                                                logits=logits_q))
        t["J_gen"] = t["J_recon"] + t["J_soft"]
    assert set(t) == set(common.LOSS_TERMS)


def _build_training(tf1, s, g):
    """Gradients of the NaN-guarded losses (nn_Ops.training replaces a NaN loss by 0),
    w.r.t. the variable lists nn_Ops.training selects; applied by TF1 Adam (a)."""
    g.grads, g.var_lists, g.placeholders, g.apply_ops, g.m_slots = {}, {}, {}, [], {}
    for obj, scope in _SCOPES.items():
        loss_t = g.terms[obj]
        guarded = tf1.cond(tf1.is_nan(loss_t), true_fn=lambda: tf1.constant(0.0),
                           false_fn=lambda t=loss_t: t)
        vl = [v for v in tf1.trainable_variables() if scope in v.name]
        g.grads[obj] = tf1.gradients(guarded, vl)
        g.var_lists[obj] = vl
        ph = [tf1.placeholder(tf1.float32, v.shape) for v in vl]
        g.placeholders[obj] = ph
        opt = tf1.train.AdamOptimizer(s[_LRS[obj]], beta1=s["adam_beta1"],
                                      beta2=s["adam_beta2"], epsilon=s["adam_epsilon"])
        g.apply_ops.append(opt.apply_gradients(list(zip(ph, vl))))
        g.m_slots.update({v: opt.get_slot(v, "m") for v in vl})


def _build(loss, tf1, mods, s, mat_dir):
    g = types.SimpleNamespace(update_groups={}, terms={})
    _build_classifier(tf1, mods, s, mat_dir, g)
    _build_generator(tf1, mods, s, loss, g)
    _build_losses(tf1, mods, s, loss, g)
    _build_training(tf1, s, g)
    lrn = [op for op in tf1.get_default_graph().get_operations() if op.type == "LRN"]
    g.lrn = lrn[-2:]  # the two LRNs of the forward on x_raw (built last)
    return g


def _var_name(v):
    return v.name[:-2] if v.name.endswith(":0") else v.name


def _map_variables(sess, tf1, weights):
    """authors' variable name -> neutral name, backbone by exact value match."""
    by_digest = {}
    for k, a in weights.items():
        if k.startswith("backbone/"):
            by_digest[hashlib.sha256(a.tobytes() + str(a.shape).encode()).hexdigest()] = k
    mapping = {}
    for v in tf1.global_variables():
        n = _var_name(v)
        if n in _NAMED:
            mapping[n] = _NAMED[n]
        elif "/InceptionV1/" in n and v in tf1.trainable_variables():
            val = sess.run(v).astype(np.float32)
            d = hashlib.sha256(val.tobytes() + str(val.shape).encode()).hexdigest()
            if d not in by_digest:
                raise RuntimeError(f"{n}: value matches no generated backbone weight")
            mapping[n] = by_digest[d]
    missing = set(weights) - set(mapping.values())
    if missing:
        raise RuntimeError(f"generated weights with no authors' variable: {sorted(missing)}")
    return mapping


# ---------------------------------------------------------------------------------
# Worker: one loss, one oneDNN setting
# ---------------------------------------------------------------------------------
def _session(loss, s, args):
    """Their graph in a session with the initial weights; returns (tf1, sess, g, mods,
    rebound, by_neutral)."""
    import scipy.io
    import tensorflow as tf

    tf1 = tf.compat.v1
    tf1.disable_v2_behavior()
    tf1.enable_resource_variables()
    tf1.set_random_seed(0)  # TF_DETERMINISTIC_OPS wants one; every value is overwritten
    _install_shims(tf1, s)
    mods, rebound = _load_authors(args.authors, tf1)
    weights = common.initial_weights(loss)
    with tempfile.TemporaryDirectory() as mat_dir:
        scipy.io.savemat(os.path.join(mat_dir, "tf_ckpt_from_caffe.mat"),
                         common.backbone_caffe_arrays(weights))
        g = _build(loss, tf1, mods, s, mat_dir)
    init = tf1.global_variables_initializer()
    config = tf1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
    sess = tf1.Session(config=config)
    sess.run(init)
    g.mapping = _map_variables(sess, tf1, weights)
    g.trainable_names = sorted(g.mapping[_var_name(v)] for v in tf1.trainable_variables()
                               if _var_name(v) in g.mapping)
    by_neutral = {g.mapping[_var_name(v)]: v for v in tf1.global_variables()
                  if _var_name(v) in g.mapping}
    for k, v in by_neutral.items():  # deviation (d): head, generator, classifier
        if not k.startswith("backbone/"):
            v.load(to_authors(k, weights[k]), sess)
    for k, v in by_neutral.items():
        if not np.array_equal(to_neutral(k, sess.run(v)), weights[k]):
            raise RuntimeError(f"{k}: initial value differs from initial_weights()")
    return tf1, sess, g, mods, rebound, by_neutral


def _read(sess, by_neutral, names):
    return {k: to_neutral(k, sess.run(by_neutral[k])) for k in names}


def _bn_updates(sess, g, by_neutral, feed):
    """Deviation (b): both BN1 updates from the pre-step value, both kept."""
    pre = _read(sess, by_neutral, HEAD_STATS)
    sess.run(g.update_groups["BN1_real"] + g.update_groups["generator_BN"], feed)
    after_real = _read(sess, by_neutral, HEAD_STATS)
    for k in HEAD_STATS:
        by_neutral[k].load(pre[k], sess)
    sess.run(g.update_groups["BN1_synthetic"], feed)
    after_syn = _read(sess, by_neutral, HEAD_STATS)
    for k in HEAD_STATS:
        by_neutral[k].load(after_real[k] + after_syn[k] - pre[k], sess)
    return pre


def _step(sess, g, by_neutral, feed):
    """One training step (deviations (a), (b)); returns the fetched values and the
    BN statistics before it."""
    fetch = {"terms": g.terms, "grads": g.grads, "features": g.features,
             "z": g.embedding_z, "yq": g.yq, "z_concat": g.z_concat,
             "lrn_in": [op.inputs[0] for op in g.lrn],
             "lrn_out": [op.outputs[0] for op in g.lrn]}
    r = sess.run(fetch, feed)
    r["bn_before"] = _read(sess, by_neutral, BN_STATS)
    r["gen_fc1"] = _read(sess, by_neutral, ("generator/fc1/kernel", "generator/fc1/bias"))
    _bn_updates(sess, g, by_neutral, feed)
    apply_feed = {}
    for obj in g.placeholders:
        for ph, gv in zip(g.placeholders[obj], r["grads"][obj]):
            if gv is None:
                raise RuntimeError(f"{obj}: no gradient for {ph}")
            apply_feed[ph] = gv
    sess.run(g.apply_ops, apply_feed)
    return r


def worker(args):
    loss, s = args.loss, common.SETTINGS[args.loss]
    tf1, sess, g, mods, rebound, by_neutral = _session(loss, s, args)
    rgb, labels = common.fixed_batch(loss)
    images, label_raw = authors_input(mods, rgb, labels, s["image_size"])
    feed = {g.x_raw: images, g.label_raw: label_raw, g.is_training: True,
            g.javg: s["Javg"], g.jgen: s["Jgen"]}
    out = {}
    losses = {t: [] for t in common.LOSS_TERMS}
    bn_hist = {k: [] for k in BN_STATS}
    sanity = {"steps": []}
    weights = {k: to_neutral(k, sess.run(v)) for k, v in by_neutral.items()}
    for step in range(s["K"]):
        t0 = time.time()
        r = _step(sess, g, by_neutral, feed)
        seconds = time.time() - t0
        for t in common.LOSS_TERMS:
            losses[t].append(float(r["terms"][t]))
        after = {k: to_neutral(k, sess.run(v)) for k, v in by_neutral.items()}
        for k in BN_STATS:
            bn_hist[k].append(after[k])
        first_moments = sess.run({g.mapping[_var_name(v)]: m for v, m in g.m_slots.items()})
        for k in g.trainable_names:
            out[f"update/{step}/{k}"] = after[k].astype(np.float64) - weights[k]
            out[f"moment/{step}/{k}"] = to_neutral(k, first_moments[k])
        weights = after
        if step == 0:
            for obj, vl in g.var_lists.items():
                for v, gv in zip(vl, r["grads"][obj]):
                    k = g.mapping[_var_name(v)]
                    out[f"grad0/{obj}/{k}"] = to_neutral(k, gv).astype(np.float32)
        sanity["steps"].append(_sanity(loss, s, r, losses, bn_hist, step, seconds))
        print(f"[{loss} onednn={os.environ.get('TF_ENABLE_ONEDNN_OPTS')}] step {step}: "
              + ", ".join(f"{t}={losses[t][-1]:.6g}" for t in common.LOSS_TERMS)
              + f" ({seconds:.1f}s)", flush=True)
    for t in common.LOSS_TERMS:
        out[f"loss/{t}"] = np.asarray(losses[t], dtype=np.float64)
    for k in BN_STATS:
        out[f"bn/{k}"] = np.stack(bn_hist[k]).astype(np.float32)
    if loss == "npair":
        out.update({f"window/{k}": v for k, v in _window_run(tf1, sess, mods, s).items()})
    np.savez(args.result, **out)
    with open(args.result + ".json", "w") as fh:
        json.dump(_worker_meta(tf1, g, rebound, sanity, images), fh, indent=1)


def _worker_meta(tf1, g, rebound, sanity, images):
    import tensorflow as tf

    c = sanity["steps"][0]["bn_update_check"]
    variance = "biased (1/n)" if (c["ddof0"]["head_max_abs_err"]
                                  < c["ddof1"]["head_max_abs_err"]) else "unbiased (1/(n-1))"
    return {
        "tensorflow_version": tf.__version__,
        "keras_version": _keras_version(),
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "modules_with_tf_rebound": rebound,
        "variable_map": dict(sorted(g.mapping.items())),
        "trainable_variables": sorted(_var_name(v) for v in tf1.trainable_variables()),
        "trainable_neutral": g.trainable_names,
        "wd_loss_variables": [_var_name(v) for v in g.wd_vars],
        "wd_loss_variables_neutral": [g.mapping[_var_name(v)] for v in g.wd_vars],
        "objective_variables": {obj: [g.mapping[_var_name(v)] for v in vl]
                                for obj, vl in g.var_lists.items()},
        "update_ops": {k: [op.name for op in v] for k, v in g.update_groups.items()},
        "bn_moving_variance": variance,
        "authors_input_fingerprint": common.fingerprint(np.asarray(images, np.float32)),
        "sanity": sanity,
    }


def _window_run(tf1, sess, mods, s):
    """Their two data_collectors (Jm, J_gen) over ``window_sequence``, fed and read as
    main_*.py does: Javg = J_m_loss.read(), Jgen = J_gen_loss.read() before the step;
    the fetched J_m = w * (metric + wd); update(J_m), update(J_gen) after it."""
    seq = common.window_sequence()
    raw, javg, jgen = (tf1.placeholder(tf1.float32) for _ in range(3))
    w = tf1.exp(-s["beta"] / jgen)
    lam = tf1.exp(-s["alpha"] / javg)  # HDML.Pulling's tf.exp(-FLAGS.alpha / Jm)
    j_m = w * raw
    collector = mods["nn_Ops"].data_collector
    jm_loss = collector(tag="Jm", init=s["collector_init"])
    jgen_loss = collector(tag="J_gen", init=s["collector_init"])
    names = ("javg_fed", "jgen_fed", "lambda", "w", "j_m_recorded", "javg_after",
             "jgen_after")
    rows = {n: [] for n in names}
    for k in range(common.WINDOW_STEPS):
        fed = (jm_loss.read(), jgen_loss.read())
        w_k, lam_k, jm_k = sess.run([w, lam, j_m], {raw: seq["j_m"][k], javg: fed[0],
                                                     jgen: fed[1]})
        jm_loss.update(var=jm_k)
        jgen_loss.update(var=seq["j_gen"][k])
        for n, v in zip(names, fed + (lam_k, w_k, jm_k, jm_loss.read(), jgen_loss.read())):
            rows[n].append(float(v))
    out = {n: np.asarray(v, np.float64) for n, v in rows.items()}
    out.update({n: seq[n].astype(np.float64) for n in ("j_m", "j_gen")})
    return out


def _sanity(loss, s, r, losses, bn_hist, step, seconds):
    """Numbers that show the run is neither dead nor saturated, and the BN check."""
    f = r["features"].astype(np.float64)
    z = r["z"].astype(np.float64)
    st = {
        "features": {"min": float(f.min()), "max": float(f.max()),
                     "mean": float(f.mean()), "std": float(f.std()),
                     "mean_abs": float(np.abs(f).mean()),
                     "fraction_zero": float((f == 0).mean()),
                     "per_feature_batch_std_mean": float(f.std(0).mean())},
        "embedding_z_norms": [float(x) for x in np.linalg.norm(z, axis=1)],
        "lrn_mean_abs_out_over_in": [float(np.abs(o).mean() / np.abs(i).mean())
                                     for i, o in zip(r["lrn_in"], r["lrn_out"])],
        "hardened": _hardened_fraction(loss, z, s["num_tuples"]),
        "finite": {t: bool(np.isfinite(losses[t][-1])) for t in common.LOSS_TERMS},
        "seconds": seconds,
    }
    if step == 0:
        st["bn_update_check"] = _bn_check(s, r, f, bn_hist)
    return st


def _bn_check(s, r, f, bn_hist):
    """The stored step-0 statistics against numpy's, both BN1 updates from the
    pre-step value (the model of (b)), with the biased and the unbiased variance."""
    m = 1.0 - s["bn_momentum"]
    before = {k: v.astype(np.float64) for k, v in r["bn_before"].items()}
    yq = r["yq"].astype(np.float64)
    hidden = np.maximum(r["z_concat"].astype(np.float64) @ r["gen_fc1"][
        "generator/fc1/kernel"] + r["gen_fc1"]["generator/fc1/bias"], 0.0)
    check = {}
    for ddof in (0, 1):
        mv = before["head/bn/moving_variance"]
        mv = mv - (mv - f.var(0, ddof=ddof)) * m - (mv - yq.var(0, ddof=ddof)) * m
        gv = before["generator/bn/moving_variance"]
        gv = gv - (gv - hidden.var(0, ddof=ddof)) * m
        check[f"ddof{ddof}"] = {
            "head_max_abs_err": float(np.abs(mv - bn_hist["head/bn/moving_variance"][0]).max()),
            "generator_max_abs_err": float(
                np.abs(gv - bn_hist["generator/bn/moving_variance"][0]).max()),
        }
    mm = before["head/bn/moving_mean"]
    mm = mm - (mm - f.mean(0)) * m - (mm - yq.mean(0)) * m
    check["head_moving_mean_max_abs_err"] = float(
        np.abs(mm - bn_hist["head/bn/moving_mean"][0]).max())
    return check


def _hardened_fraction(loss, z, P):
    """Fraction of Pulling's candidates with d_an > d_ap (the ones it moves)."""
    def dist(a, b):
        return np.sqrt(((a - b) ** 2).sum(-1))

    if loss == "npair":
        anc, pos = z[:P], z[P:2 * P]
        d_ap = dist(anc, pos)[:, None]  # (P, 1)
        d_an = dist(anc[:, None, :], pos[None, :, :])  # (P, P): negative = positive j
        hard = d_an > d_ap
        off = ~np.eye(P, dtype=bool)
        return {"all_candidates": float(hard.mean()),
                "excluding_own_positive": float(hard[off].mean()),
                "count": int(hard.sum()), "candidates": int(hard.size)}
    anc, pos, neg = z[:P], z[P:2 * P], z[2 * P:]
    hard = dist(anc, neg) > dist(anc, pos)
    return {"all_candidates": float(hard.mean()), "count": int(hard.sum()),
            "candidates": int(hard.size)}


def _keras_version():
    try:
        import keras
        return keras.__version__
    except Exception:  # pragma: no cover
        return None


# ---------------------------------------------------------------------------------
# Parent: run the workers, compress, write the fixture
# ---------------------------------------------------------------------------------
def _start_worker(args, loss, onednn, result):
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=str(onednn), TF_DETERMINISTIC_OPS="1",
               TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--loss", loss,
           "--authors", args.authors, "--result", result]
    print("+", f"TF_ENABLE_ONEDNN_OPTS={onednn}", " ".join(cmd), flush=True)
    return subprocess.Popen(cmd, env=env)


def _finish_worker(proc, result):
    if proc.wait() != 0:
        raise SystemExit(f"worker {proc.args} failed with exit code {proc.returncode}")
    with np.load(result) as z:
        arrays = {k: z[k] for k in z.files}
    with open(result + ".json") as fh:
        meta = json.load(fh)
    return arrays, meta


def _relative(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.float64(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))


def compress(loss, ref, alt):
    """The fixture's arrays of one loss from the two runs' full arrays
    (``load_fixture`` lists the fields)."""
    out = {"sketch_selftest": common.sketch("selftest", np.arange(10000))}
    for key, a in ref.items():
        if key.startswith(("window/", "moment/")):
            continue
        if key.startswith("loss/"):
            out[key] = a
            out[f"noise/{key}"] = np.abs(a - alt[key]).astype(np.float64)
        elif key.startswith("bn/"):
            out[key] = a
            initial = common.initial_weights(loss)[key[len("bn/"):]]
            before_ref = np.concatenate([initial[None], a[:-1]]).astype(np.float64)
            before_alt = np.concatenate([initial[None], alt[key][:-1]]).astype(np.float64)
            for k in range(a.shape[0]):
                out[f"noise_rel/{key}/{k}"] = _relative(a[k] - before_ref[k],
                                                        alt[key][k] - before_alt[k])
        elif key.startswith("grad0/"):
            name = key.split("/", 2)[2]
            for field, value in common.summarize(name, a, np.float32).items():
                out[f"{key}/{field}"] = value
            out[f"noise_rel/{key}"] = _relative(a, alt[key])
        elif key.startswith("update/"):
            name = key.split("/", 2)[2]
            for field, value in common.summarize(name, a, np.float64).items():
                out[f"{key}/{field}"] = value
            out[f"{key}/max_abs"] = np.float64(np.abs(a).max())
            out[f"noise_rel/{key}"] = _relative(a, alt[key])
    return out


DEVIATIONS = {
    "a_optimizer_routing": (
        "Their three AdamOptimizer.minimize() ops run in one sess.run on TF1 reference "
        "variables (an update may land before another objective reads the variable). "
        "Here: resource variables; each step fetches every loss term and the gradients "
        "of all three NaN-guarded objectives at the step's start weights (tf.gradients, "
        "their variable lists: trainable names containing 'Classifier' / 'Generator' / "
        "'Softmax_classifier'), then applies them with three TF1 AdamOptimizers "
        "(beta1 0.9, beta2 0.999, epsilon 1e-8; lr init_learning_rate / lr_gen / s_lr)."),
    "b_bn_moving_statistics": (
        "UPDATE_OPS hold BN1 (real features), generator1's BN, and BN1 again (synthetic "
        "features, same variables). Their single sess.run races the two BN1 updates. "
        "Here the race's outcome where both read the pre-step value: BN1-real and "
        "generator-BN updates from the pre-step value, BN1 put back, the BN1-synthetic "
        "update from it, both deltas kept: moving = pre + (1-m)(b_real - pre) + "
        "(1-m)(b_syn - pre), m = 0.99; batch statistics at the step's start weights "
        "(hdml_tf: model.head_bn_updates=prestep)."),
    "c_new_npair_half_batch_size": (
        "Loss_ops.new_npair_loss defaults to half_batch_size=64 (main_npair.py passes "
        "none; right only at batch 128). J_syn here passes half_batch_size = batch/2 = 4."),
    "d_initial_weights": (
        "GoogleNet_Model reads tf_ckpt_from_caffe.mat from a hard-coded model_dir: the "
        "generated backbone is written to a temporary .mat passed as model_dir. Head, "
        "generator, classifier weights and BN moving statistics are assigned after "
        "global_variables_initializer; all checked equal to initial_weights(). Their "
        "classifier column 0 (labels start at 1) is the neutral layout's last column."),
    "e_wd_loss_scope": (
        "wdLoss = Regular_factor * sum(tf.nn.l2_loss(v)) over tf.trainable_variables() "
        "at the point main_*.py builds it (in the Classifier scope after fc1: backbone "
        "kernels and biases, BN1 gamma/beta, fc1 kernel and bias), minus names "
        "containing 'batch_normalization', 'Generator' or 'Loss'; list in "
        "wd_loss_variables. Built at the same point, unchanged."),
    "f_input": (
        "Their test pipeline on fixed_batch's 256x256 RGB uint8 images: NCHW, "
        "datasets/random_fixed_size_crop_mod.RandomFixedSizeCrop(center_crop=True) "
        "(fuel shimmed), nn_Ops.batch_data; labels + 1."),
    "fed_values": (
        "Javg and Jgen are fed SETTINGS' constants (their data_collector would feed 1e6 "
        "until 64 values are collected); lr is init_learning_rate. The collectors run "
        "separately on window_sequence (authors_parity_window.npz)."),
    "shims": (
        "Their FLAGS.py is replaced by a stand-in module (tf = tensorflow.compat.v1, "
        "FLAGS from SETTINGS; batch_size divides like a Python 2 int, embedding_size is "
        "the int 128); tensorlayer by a stand-in get_variables_with_name; fuel by "
        "stand-ins for what random_fixed_size_crop_mod imports; GoogleNet_Model's global "
        "tf rebound to tensorflow.compat.v1; Loss_ops' math_ops proxied so reduce_* are "
        "the v1 functions taking keep_dims; Embedding_Visualization.embedding_assign "
        "(TensorBoard-only variable) not built. tf.compat.v1.disable_v2_behavior() then "
        "enable_resource_variables()."),
    "threads": "1 intra-op and 1 inter-op thread, TF_DETERMINISTIC_OPS=1.",
}


def _noise_summary(out):
    def top(prefix):
        values = [float(v) for k, v in out.items() if k.startswith(prefix)]
        return max(values) if values else None

    return {
        "max_noise_rel_grad0": {obj: top(f"noise_rel/grad0/{obj}/")
                                for obj in common.OBJECTIVES},
        "max_noise_rel_update": {str(k): top(f"noise_rel/update/{k}/")
                                 for k in range(common.K_STEPS)},
        "max_noise_rel_bn": top("noise_rel/bn/"),
        "max_loss_rel": {t: float((out[f"noise/loss/{t}"]
                                   / np.maximum(np.abs(out[f"loss/{t}"]), 1e-30)).max())
                         for t in common.LOSS_TERMS},
    }


def _run_loss(args, loss, tmp, paths):
    """Both workers of a loss side by side (one TF thread each); writes its npz and
    returns its metadata section."""
    results = [os.path.join(tmp, f"{loss}_{n}.npz") for n in (0, 1)]
    procs = [_start_worker(args, loss, n, results[n]) for n in (0, 1)]
    ref, meta = _finish_worker(procs[0], results[0])
    alt, alt_meta = _finish_worker(procs[1], results[1])
    out = compress(loss, ref, alt)
    np.savez_compressed(paths[loss], **out)
    window = {k[len("window/"):]: v for k, v in ref.items() if k.startswith("window/")}
    if window:
        np.savez_compressed(paths["window"], **window)
    meta.pop("TF_ENABLE_ONEDNN_OPTS")
    meta["sanity_noise_run"] = alt_meta["sanity"]
    meta["settings"] = common.SETTINGS[loss]
    meta["init_scales"] = common.INIT_SCALES
    meta["bn_update_model"] = "both BN1 updates from the pre-step value (deviation b)"
    meta["input_fingerprint"] = common.fingerprint(
        dict(zip(("images", "labels"), common.fixed_batch(loss))))
    meta["initial_weights_fingerprint"] = common.fingerprint(common.initial_weights(loss))
    meta["noise_summary"] = _noise_summary(out)
    meta["sizes"] = {"npz_bytes": os.path.getsize(paths[loss]), "arrays": len(out)}
    print(f"{loss}: wrote {paths[loss]} ({os.path.getsize(paths[loss])} bytes)", flush=True)
    return meta


def assemble(args):
    out_dir = os.path.abspath(args.out)
    os.makedirs(out_dir, exist_ok=True)
    paths = common.fixture_paths(out_dir)
    meta_all = {
        "authors_repository": AUTHORS_REPOSITORY,
        "authors_commit": args.authors_commit,
        "created_by": "tools/authors_parity.py",
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ"),
        "reference_run": "TF_ENABLE_ONEDNN_OPTS=0",
        "noise_run": "TF_ENABLE_ONEDNN_OPTS=1",
        "K": common.K_STEPS,
        "deviations": DEVIATIONS,
        "compression": {"full_max_size": common.FULL_MAX_SIZE,
                        "sketch_buckets": common.SKETCH_BUCKETS},
    }
    tmp = tempfile.mkdtemp(prefix="authors_parity_")
    started = time.time()
    for loss in args.loss:
        meta = _run_loss(args, loss, tmp, paths)
        for key in ("tensorflow_version", "keras_version", "numpy_version",
                    "python_version"):
            meta_all[key] = meta.pop(key)
        meta_all[loss] = meta
    meta_all["seconds"] = round(time.time() - started, 1)
    if set(args.loss) != set(common.LOSSES) and os.path.exists(paths["meta"]):
        with open(paths["meta"]) as fh:  # keep the other loss's section
            old = json.load(fh)
        for loss in set(common.LOSSES) - set(args.loss):
            if loss in old:
                meta_all[loss] = old[loss]
    with open(paths["meta"], "w") as fh:
        json.dump(meta_all, fh, indent=1, sort_keys=False)
        fh.write("\n")
    print(f"wrote {paths['meta']} ({meta_all['seconds']} s)", flush=True)
    if not args.keep_tmp:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--authors", required=True,
                   help="local checkout of github.com/wzzheng/HDML (has lib/HDML.py)")
    p.add_argument("--authors-commit", default="unknown",
                   help="the commit of that checkout (recorded in the metadata)")
    p.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures"))
    p.add_argument("--loss", nargs="+", default=list(common.LOSSES),
                   choices=common.LOSSES)
    p.add_argument("--keep-tmp", action="store_true",
                   help="keep the workers' full arrays (about 130 MB per loss)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not os.path.isfile(os.path.join(args.authors, "lib", "HDML.py")):
        p.error(f"{args.authors}: no lib/HDML.py (not a checkout of the authors' repo)")
    if args.worker:
        args.loss = args.loss[0]
        worker(args)
    else:
        assemble(args)


if __name__ == "__main__":
    main()
