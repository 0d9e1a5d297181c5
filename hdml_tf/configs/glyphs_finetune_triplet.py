"""CJK glyphs in the paper's regime, triplet loss: the authors' batch of 120 = 40 triplets.

Run:  hdml-tf train --config glyphs_finetune_triplet --workdir runs/finetune_triplet_hdml
      (the folder and the pretrained backbone of glyphs_finetune_npair; baseline: add
      --set model.hdml=false). The protocol: docs/results.md, "Glyphs, fine-tuned".
The settings are the search's choice on the validation characters
(benchmarks/glyphs_search.py --config glyphs_finetune_triplet, the table in
docs/results.md): both arms the metric learning rate 3e-5 (a pretrained backbone
fine-tuned by the triplet loss lost val MAP@R at every rate above 1e-4); HDML's λ fitted
to start at 0.2, w at 0.95, the generator's learning rate 1e-2.
"""

from hdml_tf.configs.glyphs_finetune_npair import finetune_config


def get_config():
    config = finetune_config("glyphs_finetune_triplet", "triplet", 120)
    config.optim.lr_metric, config.optim.lr_gen = 3e-5, 1e-2
    config.model.lambda_start, config.model.w_start = 0.2, 0.95
    return config
