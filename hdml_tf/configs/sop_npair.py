"""Stanford Online Products, HDML N-pair, the authors' settings of e6dfab3 (paper R@1 68.7).

Run:  hdml-tf train --config sop_npair --set data.root=/data/Stanford_Online_Products --workdir runs/sop_npair
      (baseline: add --set model.hdml=false)
Paper (HDML N-pair, SOP): Recall@1/10/100 = 68.7 / 83.2 / 92.4.
The authors' files give no step count for SOP; 40,000 steps (about 43 epochs of the 59,551
training images at batch 128) is this preset's choice: override with train.steps.
"""

from hdml_tf.configs._common import paper_config, paper_provenance


def get_config():
    config = paper_config(
        "sop_npair", "sop", embedding_dim=512, lr_metric=2e-5, weight_decay=9e-3,
        l2_reg=3e-3, beta=5e4, lr_gen=5e-4, lr_cls=1e-3, steps=40000,
        ks=(1, 10, 100, 1000),
        paper={"recall@1": 68.7, "recall@10": 83.2, "recall@100": 92.4})
    # The authors' test-set schedule (every 4650 steps, every 465 from step 9300) over
    # 60,502 test images would cost more than the training: off here (--set
    # train.authors_selection=true turns it on).
    config.train.authors_selection = False
    return config


def get_provenance():
    return paper_provenance("sop", "npair", ours={
        "train.steps": "the authors' files give no step count for SOP",
        "train.authors_selection": "their schedule over 60,502 test images would cost "
                                   "more than the training",
        "train.ks": "the paper's Recall@K (their products_neighbours: 1, 10, 1000)"})
