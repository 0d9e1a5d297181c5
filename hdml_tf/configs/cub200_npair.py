"""CUB-200-2011, HDML N-pair, the authors' settings (paper R@1 53.7).

Run:  hdml-tf train --config cub200_npair --set data.root=/data/CUB_200_2011 --workdir runs/cub200_npair
      (baseline: add --set model.hdml=false)
Paper (HDML N-pair, CUB-200-2011): Recall@1/2/4/8 = 53.7 / 65.7 / 76.7 / 85.7.
Backbone weights: --set model.weights=googlenet.weights.h5 (from `hdml-tf weights import`).
"""

from hdml_tf.configs._common import paper_config, paper_provenance


def get_config():
    return paper_config(
        "cub200_npair", "cub200", embedding_dim=256, lr_metric=6e-5, weight_decay=1e-3,
        l2_reg=1.5e-2, beta=5e3, lr_gen=1e-2, lr_cls=1e-3, steps=8000,
        paper={"recall@1": 53.7, "recall@2": 65.7, "recall@4": 76.7, "recall@8": 85.7})


def get_provenance():
    return paper_provenance("cub200", "npair")
