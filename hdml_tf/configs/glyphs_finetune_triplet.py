"""CJK glyphs in the paper's regime, triplet loss: the authors' batch of 120 = 40 triplets.

Run:  hdml-tf train --config glyphs_finetune_triplet --workdir runs/finetune_triplet_hdml
      (the folder and the pretrained backbone of glyphs_finetune_npair; baseline: add
      --set model.hdml=false). The protocol: docs/results.md, "Glyphs, fine-tuned". The
      settings are where the search on the validation characters starts, not its
      choice: that search is not finished.
"""

from hdml_tf.configs.glyphs_finetune_npair import finetune_config


def get_config():
    return finetune_config("glyphs_finetune_triplet", "triplet", 120)
