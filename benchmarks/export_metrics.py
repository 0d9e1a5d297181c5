"""The exported embedder's test metrics against the trained model's.

  python benchmarks/export_metrics.py WORKDIR [WORKDIR ...]

Each finished `hdml-tf train` workdir is exported as `hdml-tf export` does (into a
temporary model base directory; the head's statistics re-estimated when they carry
synthetic features), its test images are sent as encoded files to the SavedModel's
``serve_bytes`` signature (decoded, resized and cropped in the graph, as TF Serving
would), and the embeddings are scored as `hdml-tf train` scores them. Prints, per run,
the run's own test metrics (``metrics.json``: ``test_real_head_statistics`` where the
export re-estimated the head, else ``test``) beside the exported model's.
"""

import argparse
import json
import os
import sys
import tempfile

METRICS = ("map@r", "r_precision", "recall@1", "nmi", "f1")


def measure(workdir):
    from hdml_tf import config as config_lib
    from hdml_tf import serving_tools, training
    from hdml_tf.evaluation import evaluate_embeddings

    with open(os.path.join(workdir, "config.json")) as f:
        config = config_lib.from_dict(json.load(f)["config"])
    with open(os.path.join(workdir, "metrics.json")) as f:
        metrics = json.load(f)
    trained = metrics.get("test_real_head_statistics", metrics["test"])
    split = training.load_splits(config)["test"]
    with tempfile.TemporaryDirectory() as base:
        version = training.export_checkpoint(workdir, os.path.join(base, "m"),
                                             log=lambda *_: None, warmup="skip")
        model = serving_tools.load_model(version)
        images = [open(path, "rb").read() for path in split.paths]
        embeddings = serving_tools.embed(model, images)
    t = config.train
    exported = evaluate_embeddings(embeddings, split.labels, t.ks,
                                   ("recall", "nmi", "f1", "map@r", "r_precision"),
                                   kmeans_nredo=t.kmeans_restarts, seed=t.kmeans_seed)
    return {"workdir": workdir, "trained": trained, "exported": exported}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+")
    args = parser.parse_args(argv)
    print("| run | " + " | ".join(f"{m} trained | exported" for m in METRICS) + " |")
    print("|---|" + "---:|---:|" * len(METRICS))
    for workdir in args.workdirs:
        r = measure(workdir)
        cells = [f"{100 * r[k][m]:.2f}" for m in METRICS for k in ("trained", "exported")]
        print(f"| {workdir} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
