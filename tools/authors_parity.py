"""Runs the HDML authors' TF1 graph for K = 2 steps and writes the parity fixture.

Not run in CI. Command (from the repository root; TF 2.15 in its own venv, because
their code needs ``tf.compat.v1.layers`` with Keras 2; the project's environment is not
touched)::

    python3.11 -m venv /tmp/tf215
    /tmp/tf215/bin/pip install "tensorflow-cpu==2.15.*" scipy "numpy<2"
    mkdir -p /tmp/hdml_authors
    git --git-dir=<bare clone of github.com/wzzheng/HDML> archive HEAD | tar -x -C /tmp/hdml_authors
    /tmp/tf215/bin/python tools/authors_parity.py --authors /tmp/hdml_authors \\
        --authors-commit "$(git --git-dir=<bare clone> rev-parse HEAD)"

It writes ``tests/fixtures/authors_parity_{npair,triplet}.npz`` and
``tests/fixtures/authors_parity.json`` (fields: ``tests/authors_parity_common.py``,
``load_fixture``). Each loss is run in two worker processes of this script, one with
``TF_ENABLE_ONEDNN_OPTS=0`` (the reference: its numbers are stored) and one with ``=1``
(only the differences are stored, as the run-to-run noise).

No code of the authors' is in this repository. The script imports their ``lib/``
modules (``GoogleNet_Model``, ``nn_Ops``, ``Loss_ops``, ``HDML``) at run time from the
checkout given by ``--authors`` and calls their functions (``GoogleNet_Model``,
``bn_block``, ``fc_block``, ``Loss``, ``Pulling``, ``npairSplit``, ``new_npair_loss``,
``cross_entropy``, ``genSoftmax``) in the order their ``main_npair.py`` /
``main_triplet.py`` wire them. The wiring between those calls (the few lines of
arithmetic in main_*.py: the w / 1-w weighting, J_recon, the triplet J_soft, the slices)
is re-expressed here.

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
    two BN1 updates of the same variables race (each reads the variable and
    assign_subs its delta; with reference variables both may read the pre-step value,
    or one may see the other's update). Here they run one after the other: BN1 real
    (and generator BN) first, then BN1 synthetic from the value the real update left,
    both with the batch statistics at the step's start weights (the updates only touch
    moving statistics, which the training-mode forward does not read).
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
    every variable's value is checked against ``initial_weights`` before step 0.
(e) wdLoss = Regular_factor * sum of ``tf.nn.l2_loss`` over ``tf.trainable_variables()``
    at the point main_*.py builds it (inside the Classifier scope, after fc1, before the
    generator and the softmax classifier exist), minus names containing
    ``batch_normalization``, ``Generator`` or ``Loss``: it is built at the same point
    here, and the exact list is stored (``wd_loss_variables``). Note their backbone
    variables are created with ``collections=[WEIGHTS, GLOBAL_VARIABLES]``, which
    ``tf.get_variable`` still makes trainable (trainable=True appends
    TRAINABLE_VARIABLES): the kernels train and are decayed.
Also: Javg / Jgen are fed constants (SETTINGS) instead of their data_collector means
(1e6 until 64 steps have been recorded); the learning rate placeholder gets
``init_learning_rate``; TF runs with one intra- and one inter-op thread and
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
# objective -> substring their nn_Ops.training selects trainable variables by
_SCOPES = {"J_metric": "Classifier", "J_gen": "Generator",
           "cross_entropy": "Softmax_classifier"}
_LRS = {"J_metric": "init_learning_rate", "J_gen": "lr_gen", "cross_entropy": "s_lr"}


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
    return flags


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
    return mods, rebound


# ---------------------------------------------------------------------------------
# The graph, wired as main_npair.py / main_triplet.py wire it
# ---------------------------------------------------------------------------------
def _build(loss, tf1, mods, s, mat_dir):
    nn_Ops, Loss_ops, HDML, GoogleNet_Model = (
        mods["nn_Ops"], mods["Loss_ops"], mods["HDML"], mods["GoogleNet_Model"])
    B, E, P = s["batch_size"], s["embedding_size"], s["num_tuples"]
    update_groups = {}

    def bn_updates_since(n0):
        return tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)[n0:]

    x_raw = tf1.placeholder(tf1.float32, [None, s["image_size"], s["image_size"], 3])
    label_raw = tf1.placeholder(tf1.int32, [None, 1])
    with tf1.name_scope("istraining"):
        is_training = tf1.placeholder(tf1.bool)

    with tf1.variable_scope("Classifier"):
        gnet = GoogleNet_Model.GoogleNet_Model(model_dir=mat_dir + os.sep)
        embedding = gnet.forward(x_raw)
        embedding_y_origin = embedding
        n0 = len(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS))
        embedding = nn_Ops.bn_block(embedding, normal=True, is_Training=is_training,
                                    name="BN1")
        update_groups["BN1_real"] = bn_updates_since(n0)
        embedding_z = nn_Ops.fc_block(embedding, in_d=1024, out_d=E, name="fc1",
                                      is_bn=False, is_relu=False, is_Training=is_training)
        with tf1.name_scope("Loss"):
            def decayed(name):
                return ("batch_normalization" not in name and "Generator" not in name
                        and "Loss" not in name)

            wd_vars = [v for v in tf1.trainable_variables() if decayed(v.name)]
            wd_loss = s["Regular_factor"] * tf1.add_n([tf1.nn.l2_loss(v) for v in wd_vars])
            label = tf1.reduce_mean(label_raw, axis=1, keep_dims=False)
            metric_loss = Loss_ops.Loss(embedding_z, label, s["LossType"])
            j_m_unweighted = metric_loss + wd_loss

    with tf1.name_scope("Javg"):
        javg = tf1.placeholder(tf1.float32)
    with tf1.name_scope("Jgen"):
        jgen = tf1.placeholder(tf1.float32)
    embedding_z_quta = HDML.Pulling(s["LossType"], embedding_z, javg)
    embedding_z_concate = tf1.concat([embedding_z, embedding_z_quta], axis=0)

    with tf1.variable_scope("Generator"):
        n0 = len(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS))
        y = nn_Ops.fc_block(embedding_z_concate, in_d=E, out_d=512, name="generator1",
                            is_bn=True, is_relu=True, is_Training=is_training)
        update_groups["generator_BN"] = bn_updates_since(n0)
        y = nn_Ops.fc_block(y, in_d=512, out_d=1024, name="generator2", is_bn=False,
                            is_relu=False, is_Training=is_training)
        if loss == "npair":
            embedding_yp, embedding_yq = HDML.npairSplit(y)
        else:
            embedding_yp, embedding_yq = tf1.split(y, 2, axis=0)

    with tf1.variable_scope("Classifier"):
        n0 = len(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS))
        zq = nn_Ops.bn_block(embedding_yq, normal=True, is_Training=is_training,
                             name="BN1", reuse=True)
        update_groups["BN1_synthetic"] = bn_updates_since(n0)
        zq = nn_Ops.fc_block(zq, in_d=1024, out_d=E, name="fc1", is_bn=False,
                             is_relu=False, reuse=True, is_Training=is_training)

    with tf1.name_scope("Loss"):
        w = tf1.exp(-s["beta"] / jgen)
        lam = tf1.exp(-s["alpha"] / javg)  # what Pulling computes inline (for the record)
        if loss == "npair":
            zq_anc = tf1.slice(zq, [0, 0], [B // 2, E])
            zq_negtile = tf1.slice(zq, [B // 2, 0], [P * P, E])
            syn_metric = Loss_ops.new_npair_loss(
                labels=label, embedding_anchor=zq_anc, embedding_positive=zq_negtile,
                equal_shape=False, reg_lambda=s["loss_l2_reg"],
                half_batch_size=s["npair_half_batch_size"])  # deviation (c)
        else:
            syn_metric = Loss_ops.Loss(zq, label, _lossType=s["LossType"])
        j_syn = (1.0 - w) * syn_metric
        j_m = w * j_m_unweighted
        j_metric = j_m + j_syn
        cross_entropy, w_fc, b_fc = HDML.cross_entropy(embedding=embedding_y_origin,
                                                       label=label)
        j_recon = (1 - s["_lambda"]) * tf1.reduce_sum(
            tf1.square(embedding_yp - embedding_y_origin))
        if loss == "npair":
            yq_anc = tf1.slice(embedding_yq, [0, 0], [B // 2, 1024])
            yq_negtile = tf1.slice(embedding_yq, [B // 2, 0], [P * P, 1024])
            j_soft = HDML.genSoftmax(embedding_anc=yq_anc, embedding_neg=yq_negtile,
                                     W_fc=w_fc, b_fc=b_fc, label=label)
        else:
            logits_q = tf1.matmul(embedding_yq, w_fc) + b_fc
            j_soft = s["Softmax_factor"] * s["_lambda"] * tf1.reduce_mean(
                tf1.nn.sparse_softmax_cross_entropy_with_logits(labels=label,
                                                                logits=logits_q))
        j_gen = j_recon + j_soft

    terms = {"metric_loss": metric_loss, "wd_loss": wd_loss, "J_m": j_m, "J_syn": j_syn,
             "J_metric": j_metric, "J_recon": j_recon, "J_soft": j_soft, "J_gen": j_gen,
             "cross_entropy": cross_entropy, "lambda": lam, "w": w}
    assert set(terms) == set(common.LOSS_TERMS)

    # Gradients of the NaN-guarded losses (nn_Ops.training replaces a NaN loss by 0),
    # w.r.t. the variable lists nn_Ops.training selects; applied by TF1 Adam (a).
    grads, var_lists, placeholders, apply_ops = {}, {}, {}, []
    for obj, scope in _SCOPES.items():
        loss_t = {"J_metric": j_metric, "J_gen": j_gen, "cross_entropy": cross_entropy}[obj]
        guarded = tf1.cond(tf1.is_nan(loss_t), true_fn=lambda: tf1.constant(0.0),
                           false_fn=lambda t=loss_t: t)
        vl = [v for v in tf1.trainable_variables() if scope in v.name]
        g = tf1.gradients(guarded, vl)
        grads[obj] = g
        var_lists[obj] = vl
        ph = [tf1.placeholder(tf1.float32, v.shape) for v in vl]
        placeholders[obj] = ph
        opt = tf1.train.AdamOptimizer(s[_LRS[obj]], beta1=s["adam_beta1"],
                                      beta2=s["adam_beta2"], epsilon=s["adam_epsilon"])
        apply_ops.append(opt.apply_gradients(list(zip(ph, vl))))

    lrn_ops = [op for op in tf1.get_default_graph().get_operations() if op.type == "LRN"]
    return types.SimpleNamespace(
        x_raw=x_raw, label_raw=label_raw, is_training=is_training, javg=javg, jgen=jgen,
        terms=terms, grads=grads, var_lists=var_lists, placeholders=placeholders,
        apply_ops=apply_ops, update_groups=update_groups, wd_vars=wd_vars,
        features=embedding_y_origin, embedding_z=embedding_z,
        embedding_yq=embedding_yq, z_concat=embedding_z_concate,
        lrn=lrn_ops[-2:],  # the two LRNs of the forward on x_raw (built last)
    )


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


def worker(args):
    loss = args.loss
    s = common.SETTINGS[loss]
    import scipy.io
    import tensorflow as tf

    tf1 = tf.compat.v1
    tf1.disable_v2_behavior()
    tf1.enable_resource_variables()
    tf1.set_random_seed(0)  # TF_DETERMINISTIC_OPS wants one; every value is overwritten
    flags = _install_shims(tf1, s)
    del flags
    mods, rebound = _load_authors(args.authors, tf1)

    weights = common.initial_weights(loss)
    images, labels = common.fixed_batch(loss)
    with tempfile.TemporaryDirectory() as mat_dir:
        scipy.io.savemat(os.path.join(mat_dir, "tf_ckpt_from_caffe.mat"),
                         common.backbone_caffe_arrays(weights))
        g = _build(loss, tf1, mods, s, mat_dir)
    init = tf1.global_variables_initializer()
    config = tf1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
    sess = tf1.Session(config=config)
    sess.run(init)

    mapping = _map_variables(sess, tf1, weights)
    by_neutral = {}
    for v in tf1.global_variables():
        n = _var_name(v)
        if n in mapping:
            by_neutral[mapping[n]] = v
    for k, v in by_neutral.items():  # deviation (d): head, generator, classifier
        if not k.startswith("backbone/"):
            v.load(weights[k], sess)
    for k, v in by_neutral.items():
        if not np.array_equal(sess.run(v), weights[k]):
            raise RuntimeError(f"{k}: initial value differs from initial_weights()")

    trainable = set(tf1.trainable_variables())
    objective_vars = {obj: [mapping[_var_name(v)] for v in vl]
                      for obj, vl in g.var_lists.items()}
    for obj, prefixes in common.OBJECTIVES.items():
        for name in objective_vars[obj]:
            assert name.startswith(prefixes), (obj, name)
    feed = {g.x_raw: images, g.label_raw: labels, g.is_training: True,
            g.javg: s["Javg"], g.jgen: s["Jgen"]}

    out = {}
    losses = {t: [] for t in common.LOSS_TERMS}
    bn_hist = {k: [] for k in BN_STATS}
    sanity = {"steps": []}
    timings = []
    for step in range(s["K"]):
        t0 = time.time()
        fetch = {"terms": g.terms, "grads": g.grads, "features": g.features,
                 "z": g.embedding_z, "yq": g.embedding_yq, "z_concat": g.z_concat,
                 "lrn_in": [op.inputs[0] for op in g.lrn],
                 "lrn_out": [op.outputs[0] for op in g.lrn]}
        r = sess.run(fetch, feed)
        bn_before = {k: sess.run(by_neutral[k]) for k in BN_STATS}
        gen_w = {k: sess.run(by_neutral[k]) for k in ("generator/fc1/kernel",
                                                      "generator/fc1/bias")}
        # (b): BN1 real + generator BN, then BN1 synthetic
        sess.run(g.update_groups["BN1_real"] + g.update_groups["generator_BN"], feed)
        sess.run(g.update_groups["BN1_synthetic"], feed)
        # (a): apply the gradients taken at the step's start
        apply_feed = {}
        for obj in g.placeholders:
            for ph, gv in zip(g.placeholders[obj], r["grads"][obj]):
                apply_feed[ph] = gv
        sess.run(g.apply_ops, apply_feed)
        timings.append(time.time() - t0)

        for t in common.LOSS_TERMS:
            losses[t].append(float(r["terms"][t]))
        for k in BN_STATS:
            bn_hist[k].append(sess.run(by_neutral[k]))
        if step == 0:
            for obj, vl in g.var_lists.items():
                for v, gv in zip(vl, r["grads"][obj]):
                    if gv is None:
                        raise RuntimeError(f"{obj}: no gradient for {v.name}")
                    out[f"grad0/{obj}/{mapping[_var_name(v)]}"] = gv.astype(np.float32)
        # sanity numbers
        f = r["features"].astype(np.float64)
        z = r["z"].astype(np.float64)
        lrn = [float(np.abs(o).mean() / np.abs(i).mean())
               for i, o in zip(r["lrn_in"], r["lrn_out"])]
        st = {
            "features": {"min": float(f.min()), "max": float(f.max()),
                         "mean": float(f.mean()), "std": float(f.std()),
                         "mean_abs": float(np.abs(f).mean()),
                         "fraction_zero": float((f == 0).mean()),
                         "per_feature_batch_std_mean": float(f.std(0).mean())},
            "embedding_z_norms": [float(x) for x in np.linalg.norm(z, axis=1)],
            "lrn_mean_abs_out_over_in": lrn,
            "hardened": _hardened_fraction(loss, z, s["num_tuples"]),
            "finite": {t: bool(np.isfinite(losses[t][-1])) for t in common.LOSS_TERMS},
            "seconds": timings[-1],
        }
        # which batch variance the BN moving-variance update used (checked on step 0)
        if step == 0:
            m = 1.0 - s["bn_momentum"]
            yq = r["yq"].astype(np.float64)
            hidden = np.maximum(r["z_concat"].astype(np.float64) @ gen_w[
                "generator/fc1/kernel"] + gen_w["generator/fc1/bias"], 0.0)
            check = {}
            for ddof in (0, 1):
                mv = bn_before["head/bn/moving_variance"].astype(np.float64)
                mv = mv - (mv - f.var(0, ddof=ddof)) * m
                mv = mv - (mv - yq.var(0, ddof=ddof)) * m
                gv = bn_before["generator/bn/moving_variance"].astype(np.float64)
                gv = gv - (gv - hidden.var(0, ddof=ddof)) * m
                check[f"ddof{ddof}"] = {
                    "head_max_abs_err": float(np.abs(mv - bn_hist["head/bn/moving_variance"][0]).max()),
                    "generator_max_abs_err": float(np.abs(gv - bn_hist["generator/bn/moving_variance"][0]).max()),
                }
            mm = bn_before["head/bn/moving_mean"].astype(np.float64)
            mm = mm - (mm - f.mean(0)) * m
            mm = mm - (mm - yq.mean(0)) * m
            check["head_moving_mean_sequential_max_abs_err"] = float(
                np.abs(mm - bn_hist["head/bn/moving_mean"][0]).max())
            mm2 = bn_before["head/bn/moving_mean"].astype(np.float64)
            mm2 = mm2 - (mm2 - f.mean(0)) * m - (mm2 - yq.mean(0)) * m
            check["head_moving_mean_both_from_prestep_max_abs_err"] = float(
                np.abs(mm2 - bn_hist["head/bn/moving_mean"][0]).max())
            st["bn_update_check"] = check
        sanity["steps"].append(st)
        print(f"[{loss} onednn={os.environ.get('TF_ENABLE_ONEDNN_OPTS')}] step {step}: "
              + ", ".join(f"{t}={losses[t][-1]:.6g}" for t in common.LOSS_TERMS)
              + f" ({timings[-1]:.1f}s)", flush=True)

    for k, v in by_neutral.items():
        out[f"weights/{k}"] = sess.run(v).astype(np.float32)
    for t in common.LOSS_TERMS:
        out[f"loss/{t}"] = np.asarray(losses[t], dtype=np.float64)
    for k in BN_STATS:
        out[f"bn/{k}"] = np.stack(bn_hist[k]).astype(np.float32)
    np.savez(args.result, **out)

    c = sanity["steps"][0]["bn_update_check"]
    variance = "biased (1/n)" if (c["ddof0"]["head_max_abs_err"]
                                  < c["ddof1"]["head_max_abs_err"]) else "unbiased (1/(n-1))"
    meta = {
        "tensorflow_version": tf.__version__,
        "keras_version": _keras_version(),
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "modules_with_tf_rebound": rebound,
        "variable_map": dict(sorted(mapping.items())),
        "trainable_variables": sorted(_var_name(v) for v in trainable),
        "wd_loss_variables": [_var_name(v) for v in g.wd_vars],
        "wd_loss_variables_neutral": [mapping[_var_name(v)] for v in g.wd_vars],
        "objective_variables": objective_vars,
        "update_ops": {k: [op.name for op in v] for k, v in g.update_groups.items()},
        "bn_moving_variance": variance,
        "sanity": sanity,
    }
    with open(args.result + ".json", "w") as fh:
        json.dump(meta, fh, indent=1)


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


def _compress(prefix, name, a, out):
    idx = common.subset_indices(f"{prefix}/{name}", a.size)
    norm, total, values = common.summarize(a, idx)
    out[f"{prefix}/{name}/norm"] = np.float64(norm)
    out[f"{prefix}/{name}/sum"] = np.float64(total)
    out[f"{prefix}/{name}/idx"] = idx
    out[f"{prefix}/{name}/values"] = values


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
        "Here, per step after the gradient fetch: BN1-real and generator-BN updates, "
        "then the BN1-synthetic update starting from the value the real one left; batch "
        "statistics are those at the step's start weights. Update: "
        "moving -= (moving - batch_stat) * (1 - 0.99)."),
    "c_new_npair_half_batch_size": (
        "Loss_ops.new_npair_loss defaults to half_batch_size=64 (main_npair.py passes "
        "none; right only at batch 128). J_syn here passes half_batch_size = batch/2 = 4."),
    "d_initial_weights": (
        "GoogleNet_Model reads tf_ckpt_from_caffe.mat from a hard-coded model_dir: the "
        "generated backbone is written to a temporary .mat passed as model_dir. Head, "
        "generator, classifier weights and BN moving statistics are assigned after "
        "global_variables_initializer; all checked equal to initial_weights()."),
    "e_wd_loss_scope": (
        "wdLoss = Regular_factor * sum(tf.nn.l2_loss(v)) over tf.trainable_variables() "
        "at the point main_*.py builds it (in the Classifier scope after fc1: backbone "
        "kernels and biases, BN1 gamma/beta, fc1 kernel and bias), minus names "
        "containing 'batch_normalization', 'Generator' or 'Loss'; list in "
        "wd_loss_variables. Built at the same point, unchanged."),
    "fed_values": (
        "Javg and Jgen are fed SETTINGS' constants (their data_collector would feed 1e6 "
        "until 64 values are collected); lr is init_learning_rate."),
    "shims": (
        "Their FLAGS.py is replaced by a stand-in module (tf = tensorflow.compat.v1, "
        "FLAGS from SETTINGS; batch_size divides like a Python 2 int, embedding_size is "
        "the int 128); tensorlayer by a stand-in get_variables_with_name; "
        "GoogleNet_Model's global tf rebound to tensorflow.compat.v1; Loss_ops' math_ops "
        "proxied so reduce_* are the v1 functions taking keep_dims; "
        "Embedding_Visualization.embedding_assign (TensorBoard-only variable) not built. "
        "tf.compat.v1.disable_v2_behavior() then enable_resource_variables()."),
    "threads": "1 intra-op and 1 inter-op thread, TF_DETERMINISTIC_OPS=1.",
}


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
                        "subset_size": common.SUBSET_SIZE},
    }
    tmp = tempfile.mkdtemp(prefix="authors_parity_")
    for loss in args.loss:
        # the two runs of a loss side by side (one TF thread each)
        results = [os.path.join(tmp, f"{loss}_{n}.npz") for n in (0, 1)]
        procs = [_start_worker(args, loss, n, results[n]) for n in (0, 1)]
        ref, ref_meta = _finish_worker(procs[0], results[0])
        alt, alt_meta = _finish_worker(procs[1], results[1])
        out = {}
        for k, a in ref.items():
            if k.startswith("loss/") or k.startswith("bn/"):
                out[k] = a
                if k.startswith("loss/"):
                    out[f"noise/{k}"] = np.abs(a - alt[k]).astype(np.float64)
            else:  # grad0/<obj>/<var> or weights/<var>
                prefix, name = (k.split("/", 2)[0] + "/" + k.split("/", 2)[1], k.split("/", 2)[2]) \
                    if k.startswith("grad0/") else ("weights", k[len("weights/"):])
                _compress(prefix, name, a, out)
                diff = a.astype(np.float64) - alt[k].astype(np.float64)
                out[f"noise/{k}"] = np.float64(np.abs(diff).max())
                if k.startswith("grad0/"):
                    out[f"noise_rel/{k}"] = np.float64(
                        np.linalg.norm(diff) / max(np.linalg.norm(a.astype(np.float64)),
                                                   1e-30))
        np.savez_compressed(paths[loss], **out)
        for key in ("tensorflow_version", "keras_version", "numpy_version",
                    "python_version"):
            meta_all[key] = ref_meta.pop(key)
        ref_meta.pop("TF_ENABLE_ONEDNN_OPTS")
        ref_meta["sanity_noise_run"] = alt_meta["sanity"]
        ref_meta["settings"] = common.SETTINGS[loss]
        ref_meta["init_scales"] = common.INIT_SCALES
        ref_meta["bn_update_order"] = ["BN1_real", "generator_BN", "BN1_synthetic"]
        ref_meta["input_fingerprint"] = common.fingerprint(
            dict(zip(("images", "labels"), common.fixed_batch(loss))))
        ref_meta["initial_weights_fingerprint"] = common.fingerprint(
            common.initial_weights(loss))
        ref_meta["noise_summary"] = {
            "max_weights": max(float(v) for k, v in out.items()
                               if k.startswith("noise/weights/")),
            "max_grad0": {obj: max(float(v) for k, v in out.items()
                                   if k.startswith(f"noise/grad0/{obj}/"))
                          for obj in common.OBJECTIVES},
            "max_grad0_norm_relative": {
                obj: max(float(v) for k, v in out.items()
                         if k.startswith(f"noise_rel/grad0/{obj}/"))
                for obj in common.OBJECTIVES},
            "max_loss_rel": {t: float((out[f"noise/loss/{t}"]
                                       / np.maximum(np.abs(out[f"loss/{t}"]), 1e-30)).max())
                             for t in common.LOSS_TERMS},
        }
        ref_meta["sizes"] = {"npz_bytes": os.path.getsize(paths[loss]),
                             "arrays": len(out)}
        meta_all[loss] = ref_meta
        print(f"{loss}: wrote {paths[loss]} ({os.path.getsize(paths[loss])} bytes)",
              flush=True)
    if set(args.loss) != set(common.LOSSES) and os.path.exists(paths["meta"]):
        with open(paths["meta"]) as fh:  # keep the other loss's section
            old = json.load(fh)
        for loss in set(common.LOSSES) - set(args.loss):
            if loss in old:
                meta_all[loss] = old[loss]
    with open(paths["meta"], "w") as fh:
        json.dump(meta_all, fh, indent=1, sort_keys=False)
        fh.write("\n")
    print(f"wrote {paths['meta']}", flush=True)
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
                   help="keep the workers' full arrays (about 110 MB per loss)")
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
