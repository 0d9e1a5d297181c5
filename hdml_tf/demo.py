"""``hdml-tf demo``: HDML N-pair vs the N-pair baseline on Fashion-MNIST, on a CPU.

The README's main job. Trains the ``fashion_mnist_npair`` preset on classes 0-4 twice
(HDML on, HDML off), evaluates both on the unseen classes 5-9, prints the table,
writes the pictures and exports the HDML embedder for TF Serving:

  runs/demo/{hdml,baseline}/         workdirs (checkpoints, logs, metrics.json)
  runs/demo/results.md               the table
  runs/demo/*.png                    embedding map, retrieval grid, training curves
  saved_models/fashion_mnist_hdml/N/ the SavedModel (N = next free version)

Run again with the same --out and it resumes (finished runs are only re-evaluated).
"""

import os
import sys
import time

from hdml_tf import config as config_lib
from hdml_tf import data as data_lib
from hdml_tf import training
from hdml_tf.data import pipeline
from hdml_tf.evaluation import embed, plots
from hdml_tf.export import display_path

TABLE_KEYS = ("map@r", "r_precision", "recall@1", "recall@2", "recall@4", "recall@8", "nmi",
              "f1")


def _data_or_explain():
    try:
        return data_lib.load_dataset("fashion_mnist", "test")
    except data_lib.DatasetNotFoundError as error:
        print(f"hdml-tf demo: Fashion-MNIST not found.\n{error}", file=sys.stderr)
        return None


def run_demo(out_dir="runs/demo", export_dir="saved_models", smoke=False, steps=None,
             log=print):
    """Both runs, the table, the pictures and the export; returns the results dict."""

    test_split = _data_or_explain()
    if test_split is None:
        return None
    started = time.time()
    runs = {}
    models = {}
    for name, hdml in (("HDML", True), ("baseline", False)):
        config = demo_config(hdml, export_dir, smoke=smoke, steps=steps)
        log(f"\n=== {name}: {config.train.steps} steps ===")
        workdir = os.path.join(out_dir, "hdml" if hdml else "baseline")
        runs[name], models[name] = training.train(config, workdir, log=log,
                                                  return_model=True)

    table = training.summary_table({n: r["test"] for n, r in runs.items()},
                                   keys=list(TABLE_KEYS))
    # The runs share their data settings; `config` is the last run's.
    evaluated = min(len(test_split), config.data.max_eval_images or len(test_split))
    log("\nFashion-MNIST, trained on classes 0-4, evaluated on the unseen classes 5-9\n"
        f"({evaluated} of {len(test_split)} images, a fixed random subset), in %:\n{table}")
    pictures = _pictures(models, test_split, config.data, out_dir)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write("# Fashion-MNIST demo: HDML N-pair vs N-pair baseline\n\n"
                f"Trained on classes 0-4, evaluated on the unseen classes 5-9 ({evaluated} "
                f"of {len(test_split)} images, a fixed random subset), in %.\n\n"
                f"```\n{table}\n```\n")
    elapsed = time.time() - started
    log(f"\npictures in {out_dir}:")
    for path in sorted(str(p) for p in pictures.values() if p):
        log(f"  {os.path.basename(path)}")
    if runs["HDML"].get("export"):

        log(f"exported HDML embedder under {display_path(runs['HDML']['export'])}/")
    log(f"demo finished in {elapsed / 60:.1f} min")
    return {"runs": runs, "table": table, "pictures": pictures, "seconds": elapsed}


def demo_config(hdml, export_dir="saved_models", smoke=False, steps=None):
    """The ``fashion_mnist_npair`` preset for one arm of the demo (HDML on or off); only
    the HDML run is exported."""
    config = config_lib.get_preset("fashion_mnist_npair")
    config.name = f"fashion_mnist_npair_{'hdml' if hdml else 'baseline'}"
    config.model.hdml = hdml
    config.train.export = hdml
    config.train.export_dir = export_dir
    config.train.verbose = 2
    if smoke:
        config_lib.shrink_for_smoke(config)
    if steps:
        config.train.steps = int(steps)
    config_lib.validate(config)
    return config


def _pictures(models, test_split, data_config, out_dir):
    """Per model: t-SNE map, retrieval grid and training curves of a fixed subset of the
    test classes (2,000 images keep t-SNE and the grid quick). Returns name -> path."""

    small = training.subsample_split(test_split, 2000, seed=0)
    pictures = {}
    for name, model in models.items():
        ev = pipeline.eval_dataset(small, batch_size=500, resize=data_config.resize,
                                   crop=data_config.crop,
                                   preprocessing=model.embedder.preprocessing)
        embeddings, labels = embed(model.embedder, ev)
        tag = name.lower()
        pictures[f"embedding_map_{tag}"] = plots.plot_embedding_2d(
            embeddings, labels, os.path.join(out_dir, f"embedding_map_{tag}.png"),
            class_names=list(small.class_names),
            title=f"Fashion-MNIST unseen classes, {name} (t-SNE)")
        pictures[f"retrieval_{tag}"] = plots.plot_retrieval_grid(
            small.images, labels, embeddings, os.path.join(out_dir, f"retrieval_{tag}.png"),
            k=6, num_queries=8, class_names=list(small.class_names))
        pictures[f"curves_{tag}"] = plots.plot_training_curves(
            os.path.join(out_dir, "hdml" if name == "HDML" else "baseline", "train_log.csv"),
            os.path.join(out_dir, f"training_curves_{tag}.png"),
            title=f"{name}: loss terms per epoch")
    return pictures
