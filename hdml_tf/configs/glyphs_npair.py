"""CJK glyphs, HDML N-pair on a small CNN at the paper's batch regime.

Run:  hdml-tf data glyphs                      (once: the folder, ~/hdml_data/glyphs)
      hdml-tf train --config glyphs_npair --workdir runs/glyphs_hdml
      hdml-tf compare --config glyphs_npair --seeds 16 --workdir runs/glyphs
Class = character, instance = typeface (hdml_tf.data.glyphs): with Debian 12's CJK
packages (their apt line: docs/results.md) 41 faces draw the 3,000 characters
`hdml-tf data glyphs` keeps by default, split 1,350 train / 150 val / 1,500 unseen test
characters, 16 x 16 pixels; a third of the faces (whole typeface families) draw only
the val and test characters, the others only the train characters. Batch 128 = 64
classes per N-pair batch, as in the paper.

Settings chosen on the val characters only, each arm with the same budget
(benchmarks/glyphs_search.py; every run in docs/results.md, "Glyphs"): both arms
lr_metric 2e-3 and l2_reg 3e-3; HDML λ fitted to start at 0.5 when the first window
completes (model.lambda_start; then λ = 0.5 ** (J_avg_1 / J_avg), near 0 by the end),
β = 1e4 as given (w about 0.85), lr_gen 1e-2. The head's moving statistics follow the
real features only (model.head_bn_updates=real, the default). Not in the paper: no
reference numbers.
"""

from hdml_tf.configs import fashion_mnist_npair


def get_config():
    """The Fashion-MNIST preset's small-CNN N-pair recipe (backbone, embedding, decay,
    window), on the glyph folder at the paper's batch, with the searched settings."""
    config = fashion_mnist_npair.get_config()
    config.name = "glyphs_npair"
    d, m, t = config.data, config.model, config.train
    # 16 x 16 as rendered (a crop of the whole image); no flip (a mirrored glyph is no
    # glyph).
    d.name, d.resize, d.crop, d.flip, d.batch_size = "glyphs", 16, 16, False, 128
    d.eval_batch_size, d.max_eval_images = 1000, 0
    m.lambda_start, m.beta = 0.5, 1e4
    config.optim.lr_metric, config.optim.lr_gen = 2e-3, 1e-2
    t.steps, t.steps_per_epoch = 500, 250
    t.export, t.export_name = False, "glyphs_hdml"
    return config
