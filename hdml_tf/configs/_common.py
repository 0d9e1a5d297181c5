"""Shared building blocks of the paper presets: the authors' code, step for step.

Every paper preset runs in the ``authors`` fidelity mode (docs/method.md): the authors'
LRN, their weight-decay scope, Adam epsilon 1e-8, their batch samplers, k-means with 10
restarts and seed 1 for NMI, training on all training classes, the classifier's extra
class, their centre crop, their learning-rate rule, their head BatchNorm updates, their
non-finite J_syn rule and their test-set selection reported beside (never instead of)
the final checkpoint's numbers. Each of these is a documented config key; ``--set``
switches it back (e.g. ``model.lrn=caffe``).
"""

from hdml_tf import config as config_lib


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
