"""Shared building blocks of the paper presets: the authors' code, step for step, and
where each of their settings comes from.

Every paper preset runs in the ``authors`` fidelity mode (docs/method.md): the authors'
LRN, their weight-decay scope, Adam epsilon 1e-8, their batch samplers, k-means with 10
restarts and seed 1 for NMI, training on all training classes, the classifier's extra
class, their centre crop, their learning-rate rule, their head BatchNorm updates, their
non-finite J_syn rule and their test-set selection reported beside (never instead of)
the final checkpoint's numbers. Each of these is a documented config key; ``--set``
switches it back (e.g. ``model.lrn=caffe``).

Provenance. `paper_provenance` says, for every setting that changes what a preset
computes, whether it comes from the authors' repository (github.com/wzzheng/HDML: the
commit and the file) or is ours (and why). Commits: ``fa03ef0`` their HEAD
(2020-04-03; ``FLAGS.py`` defaults are their Cars196 recommendations); ``6071626``
(2019-06-11: ``FLAGS.py`` help texts with the CUB recommendations); ``e6dfab3``
(2019-03-14: ``FLAGS.py`` help texts with the SOP recommendations, removed the next day
by ``7838f97``, which also left the unterminated string literal at
``init_batch_per_epoch`` that HEAD still has); ``6bcc861`` (2019-07-03: ``main_triplet.py``
created, run with the ``FLAGS.py`` defaults). ``hdml-tf presets`` lists them.
"""

import dataclasses

from hdml_tf import config as config_lib

HEAD = "fa03ef0"
CUB_FLAGS = "6071626"
SOP_FLAGS = "e6dfab3"
TRIPLET_MAIN = "6bcc861"


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a preset's setting comes from.

    Attributes:
      origin: "authors" (their repository) or "ours".
      where: the authors' file (and name) the value is read from, or why it is ours.
      commit: the authors' commit (``origin == "authors"`` only).
    """

    origin: str
    where: str
    commit: str = ""

    def __str__(self):
        if self.origin == "authors":
            return f"authors {self.commit}: {self.where}"
        return f"ours: {self.where}"


def _authors(where, commit=HEAD):
    return Source("authors", where, commit)


def _ours(why):
    return Source("ours", why)


# Every paper preset, whatever the dataset and loss.
_COMMON = {
    "data.resize": _authors("datasets/*_converter.py (stored at 256 x 256)"),
    "data.crop": _authors("FLAGS.py default_image_size"),
    "data.flip": _authors("datasets/data_provider.py (random_lr_flip=True)"),
    "data.val_fraction": _authors("main_*.py (train on every training class)"),
    "data.sampler": _authors("datasets/data_provider.py (NPairLossScheme, TripletLossScheme)"),
    "data.center_crop_rounding": _authors("datasets/random_fixed_size_crop_mod.py ([15:-14])"),
    "model.backbone": _authors("lib/GoogleNet_Model.py"),
    "model.lrn": _authors("lib/GoogleNet_Model.py (tf.nn.local_response_normalization)"),
    "model.hdml": _authors("FLAGS.py Apply_HDML"),
    "model.alpha": _authors("FLAGS.py alpha"),
    "model.lambda_gen": _authors("FLAGS.py _lambda"),
    "model.softmax_factor": _authors("FLAGS.py Softmax_factor"),
    "model.weight_decay_scope": _authors("main_*.py (exclude_batch_norm)"),
    "model.window": _authors("lib/nn_Ops.py data_collector (64)"),
    "model.j_avg_init": _authors("main_*.py (data_collector init=1e+6)"),
    "model.j_gen_avg_init": _authors("main_*.py (data_collector init=1e+6)"),
    "model.record_weighted_jm": _authors("main_*.py (J_m = w * J_m, then recorded)"),
    "model.generator_hidden": _authors("main_*.py (generator1 out_d=512)"),
    "model.classifier_extra_class": _authors("FLAGS.py num_class, lib/HDML.py cross_entropy"),
    "model.head_bn_updates": _authors("main_*.py (BN1 twice a step; the race made "
                                      "deterministic: docs/method.md)"),
    "optim.adam_epsilon": _authors("lib/nn_Ops.py training (tf.train.AdamOptimizer)"),
    "optim.lr_decay_steps": _authors("main_*.py (step in [5632, 6848])"),
    "optim.lr_decay_factor": _authors("main_*.py (_lr * 0.5)"),
    "optim.lr_decay_rule": _authors("main_*.py (halved in the evaluation block)"),
    "train.steps": _authors("FLAGS.py max_steps"),
    "train.authors_selection": _authors("main_*.py (best test NMI saved)"),
    "train.kmeans_restarts": _authors("lib/evaluation.py (KMeans, n_init 10 then)"),
    "train.kmeans_seed": _authors("lib/evaluation.py (random_state=1)"),
    "train.ks": _ours("the paper's Recall@K (their code computes K = 1 ... 32)"),
}

# Per dataset: the embedding, the optimisers, the losses' factors (config key ->
# FLAGS.py name), and the evaluation interval after step 5000.
_FLAGS_NAMES = {"model.embedding_dim": "embedding_size",
                "optim.lr_metric": "init_learning_rate", "model.weight_decay": "Regular_factor",
                "model.l2_reg": "loss_l2_reg", "model.beta": "beta", "optim.lr_gen": "lr_gen",
                "optim.lr_cls": "s_lr", "train.authors_eval_every": "batch_per_epoch",
                "train.authors_eval_every_initial": "init_batch_per_epoch"}


def _flags(commit, how, keys=tuple(_FLAGS_NAMES)):
    return {key: _authors(f"FLAGS.py {_FLAGS_NAMES[key]} {how}", commit) for key in keys}


_DATASET = {
    "cars196": _flags(HEAD, "(default)"),
    "cub200": dict(_flags(CUB_FLAGS, "(help text: cub200 / other)"),
                   **_flags(HEAD, "(default)", ("optim.lr_cls",
                                                "train.authors_eval_every_initial"))),
    "sop": _flags(SOP_FLAGS, "(help text: products / others)"),
}

_LOSS = {
    "npair": {
        "model.loss": _authors("main_npair.py"),
        "data.batch_size": _authors("FLAGS.py batch_size"),
        "model.nonfinite_syn": _authors("lib/Loss_ops.py new_npair_loss (NaN -> 0)"),
    },
    "triplet": {
        "model.loss": _authors("main_triplet.py (run with the FLAGS.py defaults)",
                               TRIPLET_MAIN),
        "model.margin": _authors("lib/Loss_ops.py triplet_loss (margin=1.0)"),
        "model.nonfinite_syn": _authors("main_triplet.py, lib/nn_Ops.py training "
                                        "(a NaN J_metric -> 0)", TRIPLET_MAIN),
        "data.batch_size": _ours("no triplet run configuration was released; their "
                                 "default 128 fails TripletLossScheme's batch_size % 3 "
                                 "assert and Loss() halves the batch, so a multiple of 6: "
                                 "120 (the FLAGS.py default at e6dfab3)"),
    },
}


def paper_provenance(dataset, loss, ours=None):
    """``config key -> Source`` of a paper preset (see the module docstring).

    Args:
      dataset: "cars196", "cub200" or "sop".
      loss: "npair" or "triplet".
      ours: ``key -> reason`` of the preset's own choices (they replace the table's).
    """
    sources = dict(_COMMON)
    sources.update(_DATASET[dataset])
    sources.update(_LOSS[loss])
    sources.update({key: _ours(why) for key, why in (ours or {}).items()})
    return sources


def paper_config(name, dataset, *, embedding_dim, lr_metric, weight_decay, l2_reg, beta,
                 lr_gen, lr_cls, steps, loss="npair", lr_decay_steps=(5632, 6848),
                 alpha=90.0, ks=(1, 2, 4, 8), paper=None):
    """GoogLeNet at 227 px, batch 128 (N-pair) or 120 (triplet), the authors' settings.

    ``lr_decay_steps`` are ``main_npair.py``'s; under their rule
    (``optim.lr_decay_rule="authors"``) only the steps their evaluation schedule
    (``config.AUTHORS_EVAL_EVERY`` [dataset]) evaluates after halve the rate.
    """
    config = config_lib.ExperimentConfig(name=name, paper=dict(paper or {}))
    d, m, o, t = config.data, config.model, config.optim, config.train
    d.name, d.resize, d.crop = dataset, 256, 227
    d.batch_size = 128 if loss == "npair" else 120
    d.val_fraction = 0.0  # the authors train on every training class
    d.sampler, d.center_crop_rounding = "authors", "ceil"
    m.backbone, m.loss, m.embedding_dim = "inception_v1", loss, embedding_dim
    m.alpha, m.beta, m.weight_decay, m.l2_reg = alpha, beta, weight_decay, l2_reg
    m.lrn, m.weight_decay_scope = "authors", "authors"
    m.classifier_extra_class, m.head_bn_updates = True, "prestep"
    m.nonfinite_syn = config_lib.AUTHORS_NONFINITE_SYN[loss]
    o.lr_metric, o.lr_gen, o.lr_cls = lr_metric, lr_gen, lr_cls
    o.lr_decay_steps, o.lr_decay_factor = tuple(lr_decay_steps), 0.5
    o.lr_decay_rule = "authors"
    o.adam_epsilon = 1e-8  # TF1's AdamOptimizer default
    t.steps, t.steps_per_epoch, t.eval_every, t.ks = steps, 100, 0, tuple(ks)
    t.authors_selection, t.kmeans_restarts, t.kmeans_seed = True, 10, 1
    t.authors_eval_every_initial, t.authors_eval_every = config_lib.AUTHORS_EVAL_EVERY[
        dataset]
    t.export_name = name
    return config
