"""Protocols on the glyph benchmark (issue 25, item 2): measured, not guessed.

Two tools around `hdml-tf train` runs on a folder written by ``hdml-tf data glyphs``:

  python benchmarks/glyphs_protocol.py view ROOT OUT [--test-groups A,B] [--seed 0]
      A folder of symbolic links for "typefaces held out of training": the train
      characters drawn only by the faces outside the test groups, the val and test
      characters only by the faces of the test groups (default: a seeded choice of
      groups holding about a third of the faces). Train on it with data.root=OUT.

  python benchmarks/glyphs_protocol.py evaluate WORKDIR [--split test] [--json FILE]
      The final model of a training workdir on a split of its glyph folder, embedded
      once and scored two ways: leave-one-out over every face (what `hdml-tf train`
      reports) and across typeface families (each query searched only against the faces
      of the other groups of manifest.json; hdml_tf.evaluation.cross_group).
"""

import argparse
import json
import os
import sys

import numpy as np


def make_view(root, out, test_groups=None, seed=0):
    """Write the held-out-typefaces view of glyph folder ``root`` to ``out``; returns
    the sorted test groups."""
    from hdml_tf.data import glyphs

    manifest = glyphs.read_manifest(root)
    faces = {f["id"]: f["group"] for f in manifest["faces"]}
    groups = sorted(set(faces.values()))
    if test_groups is None:
        order = np.random.default_rng(seed).permutation(groups).tolist()
        test_groups, held = [], 0
        while held < len(faces) / 3:
            test_groups.append(order.pop(0))
            held = sum(g in test_groups for g in faces.values())
    unknown = set(test_groups) - set(groups)
    if unknown:
        raise SystemExit(f"unknown groups {sorted(unknown)}; the folder has {groups}")
    split = glyphs.folder.read_split_file(os.path.join(root, glyphs.SPLIT_FILE))
    os.makedirs(out)
    for char, part in sorted(split.items()):
        wanted = {i for i, g in faces.items() if (g in test_groups) == (part != "train")}
        os.makedirs(os.path.join(out, char))
        for face in sorted(wanted):
            os.symlink(os.path.join(os.path.abspath(root), char, face + ".png"),
                       os.path.join(out, char, face + ".png"))
    with open(os.path.join(root, glyphs.SPLIT_FILE), encoding="utf-8") as f:
        text = f.read()
    with open(os.path.join(out, glyphs.SPLIT_FILE), "w", encoding="utf-8") as f:
        f.write(text)
    manifest["view"] = {"of": os.path.abspath(root), "test_groups": sorted(test_groups),
                        "train_faces": sorted(i for i, g in faces.items()
                                              if g not in test_groups),
                        "test_faces": sorted(i for i, g in faces.items() if g in test_groups)}
    with open(os.path.join(out, glyphs.MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f, ensure_ascii=False, indent=1, sort_keys=True)
    return sorted(test_groups)


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
    view = sub.add_parser("view")
    view.add_argument("root")
    view.add_argument("out")
    view.add_argument("--test-groups", default=None, help="comma-separated group names")
    view.add_argument("--seed", type=int, default=0)
    ev = sub.add_parser("evaluate")
    ev.add_argument("workdir")
    ev.add_argument("--split", default="test", choices=("train", "val", "test"))
    ev.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.command == "view":
        groups = args.test_groups.split(",") if args.test_groups else None
        print("test groups:", ", ".join(make_view(args.root, args.out, groups, args.seed)))
        return 0
    results = evaluate_workdir(args.workdir, args.split)
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
