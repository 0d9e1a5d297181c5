"""What re-estimating the head's statistics from the real training images changes.

  python benchmarks/head_statistics.py WORKDIR [WORKDIR ...] [--json FILE]

For each finished `hdml-tf train` workdir (e.g. ``runs/glyphs/seed*/*`` of a compare):
its final model's test metrics as trained (``metrics.json``) against the same model
with the head's BatchNorm moving statistics set to the moments of the real training
features (`hdml_tf.training.head_statistics.reestimate`), and the median ratio of the
old moving variance to the real features' variance. With ``model.head_bn_updates=real``
(the default) the two should differ by little: the moving statistics then follow only
real features, and what is left is how an exponential average of batch statistics
lags the changing features.
"""

import argparse
import json
import os
import sys

METRICS = ("map@r", "r_precision", "recall@1")


def measure(workdir):
    from hdml_tf import checkpoints
    from hdml_tf import config as config_lib
    from hdml_tf.evaluation import evaluate
    from hdml_tf.training import evaluation_dataset, head_statistics, load_splits

    with open(os.path.join(workdir, "config.json")) as f:
        config = config_lib.from_dict(json.load(f)["config"])
    with open(os.path.join(workdir, "metrics.json")) as f:
        trained = json.load(f)["test"]
    model = checkpoints.restore_model(workdir)
    splits = load_splits(config)
    info = head_statistics.reestimate(model, config, splits["train"])
    # The retrieval metrics only: k-means for NMI and F1 would cost most of the time.
    data = evaluation_dataset(config, splits["test"], model.embedder.preprocessing)
    real = evaluate(model.embedder, data, ks=config.train.ks,
                    metrics=("recall", "map@r", "r_precision"))
    return {"workdir": workdir, "head_bn_updates": config.model.head_bn_updates,
            "hdml": config.model.hdml, **info, "as_trained": trained,
            "reestimated": real}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    results = []
    for workdir in args.workdirs:  # one line each as it goes: a long list takes a while
        results.append(measure(workdir))
        r = results[-1]
        print(f"{workdir}: MAP@R {100 * r['as_trained']['map@r']:.2f} -> "
              f"{100 * r['reestimated']['map@r']:.2f}", flush=True)
    print("| run | head_bn_updates | variance ratio | " + " | ".join(
        f"{m} as trained | re-estimated | Δ" for m in METRICS) + " |")
    print("|---|---|---:|" + "---:|---:|---:|" * len(METRICS))
    for r in results:
        cells = []
        for m in METRICS:
            a, b = 100 * r["as_trained"][m], 100 * r["reestimated"][m]
            cells += [f"{a:.2f}", f"{b:.2f}", f"{b - a:+.2f}"]
        name = r["workdir"] if r["hdml"] else r["workdir"] + " (baseline)"
        print(f"| {name} | {r['head_bn_updates']} | {r['variance_ratio']:.2f} | "
              + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
