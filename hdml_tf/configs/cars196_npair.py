"""Cars196, HDML N-pair, the authors' settings (paper R@1 79.1).

Run:  hdml-tf train --config cars196_npair --set data.root=/data/cars196 --workdir runs/cars196_npair
      (baseline: add --set model.hdml=false)
Paper (HDML N-pair, Cars196): Recall@1/2/4/8 = 79.1 / 87.1 / 92.1 / 95.5 (the official
code's run was reported at R@1 80.1, NMI 70.3).
Backbone weights: --set model.weights=googlenet.weights.h5 (from `hdml-tf weights import`).
"""

from hdml_tf.configs._common import paper_config, paper_provenance


def get_config():
    return paper_config(
        "cars196_npair", "cars196", embedding_dim=128, lr_metric=7e-5,
        weight_decay=5e-3, l2_reg=3e-3, beta=1e4,
        lr_gen=1e-2, lr_cls=1e-3, steps=8000,
        paper={"recall@1": 79.1, "recall@2": 87.1, "recall@4": 92.1, "recall@8": 95.5})


def get_provenance():
    return paper_provenance("cars196", "npair")
