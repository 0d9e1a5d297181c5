"""CJK glyphs in the paper's regime: a pretrained backbone fine-tuned on 100 characters.

Run:  hdml-tf data glyphs --out ~/hdml_data/glyphs_finetune --max-chars 0 --counts 100,100,1000
      hdml-tf pretrain --config glyphs_finetune_npair --classes 1000   (once: the weights)
      hdml-tf train --config glyphs_finetune_npair --workdir runs/finetune_npair_hdml
      (baseline: add --set model.hdml=false)
The folder ($HDML_GLYPHS_FINETUNE_DIR, else $HDML_DATA_DIR/glyphs_finetune) holds every
character the installed faces share: 100 fine-tuning characters drawn by the training
faces (as CUB-200-2011 has 100 training classes), 100 validation and 1,000 unseen test
characters drawn only by the held-out typeface families, and the ~5,000 others, drawn by
a few of the training faces only (--pretrain-faces), for pretraining. The backbone
(model.weights, $HDML_PRETRAINED_DIR, else $HDML_DATA_DIR/pretrained) is the small CNN
pretrained on those (`hdml-tf pretrain`, a softmax over each batch's classes), so every
seed starts from the same meaningful embedding, as an ImageNet GoogLeNet does on CUB. Batch 128 = 64 classes per
N-pair batch, as in the paper. The protocol and why each number: docs/results.md,
"Glyphs, fine-tuned". The settings are the search's choice on the validation characters
(benchmarks/glyphs_search.py --config glyphs_finetune_npair, the table in
docs/results.md), each arm its own: both l2_reg 1e-2; the baseline lr_metric 1e-3; HDML
lr_metric 1e-4, λ fitted to start at 0.2 and w at 0.95, the generator's learning rate
1e-3.
"""

import os

from hdml_tf.configs import glyphs_npair
from hdml_tf.data import base

PRETRAINED = "glyphs_finetune_small_cnn.weights.h5"


def finetune_config(name, loss, batch_size):
    """The glyph preset's small-CNN recipe on the fine-tuning folder, starting from the
    pretrained backbone."""
    config = glyphs_npair.get_config()
    config.name = name
    d, m, o, t = config.data, config.model, config.optim, config.train
    d.root = base.default_root("HDML_GLYPHS_FINETUNE_DIR", "glyphs_finetune")
    d.batch_size = batch_size
    m.loss = loss
    m.weights = os.path.join(base.default_root("HDML_PRETRAINED_DIR", "pretrained"),
                             PRETRAINED)
    # beta: the authors' CUB-200-2011 value (the constant their fine-tuning used).
    o.lr_cls, m.l2_reg, m.alpha, m.beta = 1e-3, 3e-3, 90.0, 5e3
    t.steps, t.steps_per_epoch = 300, 100
    t.export_name = name.replace("_finetune", "_finetune_hdml")
    return config


def get_config():
    config = finetune_config("glyphs_finetune_npair", "npair", 128)
    o, m = config.optim, config.model
    o.lr_metric, o.lr_gen, m.l2_reg = 1e-4, 1e-3, 1e-2
    m.lambda_start, m.w_start = 0.2, 0.95
    config.baseline = {"optim.lr_metric": "1e-3"}
    return config
