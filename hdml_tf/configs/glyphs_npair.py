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

The learning rate and HDML's α, β were chosen on the val characters only
(benchmarks/glyphs_search.py; its table is in docs/results.md, "Glyphs"). Not in the
paper: no reference numbers.
"""

from hdml_tf.configs import fashion_mnist_npair


def get_config():
    """The Fashion-MNIST preset's small-CNN N-pair recipe (backbone, embedding, decay,
    window, learning rates), on the glyph folder at the paper's batch."""
    config = fashion_mnist_npair.get_config()
    config.name = "glyphs_npair"
    d, m, t = config.data, config.model, config.train
    # 16 x 16 as rendered (a crop of the whole image); no flip (a mirrored glyph is no
    # glyph).
    d.name, d.resize, d.crop, d.flip, d.batch_size = "glyphs", 16, 16, False, 128
    d.eval_batch_size, d.max_eval_images = 1000, 0
    m.alpha, m.beta = 90.0, 1e4  # the paper's batch: the authors' constants
    t.steps, t.steps_per_epoch = 500, 250
    t.export, t.export_name = False, "glyphs_hdml"
    return config
