"""CJK glyphs in the paper's regime, triplet loss: the authors' batch of 120 = 40 triplets.

Run:  as glyphs_finetune_npair (the same folder and pretrained backbone), with
      --config glyphs_finetune_triplet. The protocol: docs/results.md, "Glyphs,
      fine-tuned"; the settings were chosen there on the validation characters.
"""

from hdml_tf.configs.glyphs_finetune_npair import finetune_config


def get_config():
    return finetune_config("glyphs_finetune_triplet", "triplet", 120)
