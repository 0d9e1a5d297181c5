"""Score a glyph run two ways.

  python benchmarks/glyphs_protocol.py evaluate WORKDIR [--split test] [--json FILE]

The final model of an `hdml-tf train` workdir on a split of its glyph folder (written
by ``hdml-tf data glyphs``), embedded once and scored two ways: leave-one-out over every
face of the split (what `hdml-tf train` reports) and across typeface families (each
query searched only against the faces of the other families of manifest.json;
hdml_tf.evaluation.cross_group).
"""

import argparse
import json
import os
import sys

import numpy as np


def evaluate_workdir(workdir, split_name="test"):
    """Leave-one-out and across-family retrieval metrics of a workdir's final model."""
    from hdml_tf import checkpoints
    from hdml_tf import config as config_lib
    from hdml_tf.data import glyphs, pipeline
    from hdml_tf.evaluation import evaluate_embeddings
    from hdml_tf.evaluation.cross_group import evaluate_across_groups
    from hdml_tf.evaluation.protocol import embed

    with open(os.path.join(workdir, "config.json")) as f:
        config = config_lib.from_dict(json.load(f)["config"])
    d = config.data
    split = glyphs.load(split_name, d.root)
    embedder = checkpoints.restore_model(workdir).embedder
    data = pipeline.eval_dataset(split, batch_size=d.eval_batch_size, resize=d.resize,
                                 crop=d.crop, preprocessing=embedder.preprocessing)
    embeddings, labels = embed(embedder, data)
    group_of = {f["id"]: f["group"] for f in glyphs.read_manifest(d.root)["faces"]}
    groups = np.array([group_of[i] for i in glyphs.image_faces(split)])
    metrics = ("recall", "map@r", "r_precision")
    return {"split": split_name, "images": len(split), "classes": split.num_classes,
            "faces": len(set(glyphs.image_faces(split))), "groups": len(set(groups)),
            "leave_one_out": evaluate_embeddings(embeddings, labels, config.train.ks,
                                                 metrics),
            "across_families": evaluate_across_groups(embeddings, labels, groups,
                                                      config.train.ks, metrics)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate")
    ev.add_argument("workdir")
    ev.add_argument("--split", default="test", choices=("train", "val", "test"))
    ev.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    results = evaluate_workdir(args.workdir, args.split)
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
