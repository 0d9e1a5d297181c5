"""HDML in the paper's regime: the glyph fine-tuning protocol, three arms paired by seed.

  python benchmarks/glyphs_finetune.py WORKDIR --config glyphs_finetune_npair
      [--min-seeds 4] [--max-seeds 16] [--half-width 1.0] [--table-only]

With the fine-tuning folder and the pretrained backbone of the preset in place
(docs/results.md, "Glyphs, fine-tuned"), trains for each seed (`hdml-tf train`, the
same batches for the three arms of a seed) into WORKDIR/seed<S>/<arm>:

* ``baseline``: the preset with HDML off (its settings chosen on the val characters);
* ``hdml``: the preset (the settings the same search chose for HDML, the head's
  statistics from the real features, λ fitted to start where the search chose);
* ``hdml_authors``: the preset with the authors' HDML settings as they are: α = 90,
  their β, both passes moving the head's statistics before the step
  (``model.head_bn_updates=prestep``), the learning rates and l2_reg of ``hdml``.

Seeds are added until every HDML arm's paired MAP@R difference from the baseline has a
95% interval narrower than ``--half-width`` points on each side (at least
``--min-seeds``, at most ``--max-seeds``): the stopping rule is fixed here, before any
test number. The first row of the table is the pretrained backbone itself (its pooled
features, L2-normalised, before any fine-tuning): the headroom fine-tuning has.
Prints markdown (also WORKDIR/finetune.md): each arm's mean and its paired difference
from the baseline, MAP@R and R-precision first.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

from hdml_tf import compare

ARMS = {
    "baseline": ["model.hdml=false"],
    "hdml": [],
    "hdml_authors": ["model.alpha=90", "model.lambda_start=none", "model.w_start=none",
                     "model.head_bn_updates=prestep"],
}
METRICS = ("map@r", "r_precision", "recall@1", "recall@2", "recall@4", "recall@8", "nmi",
           "f1")


def train(workdir, config, arm, seed, extra=()):
    out = os.path.join(workdir, f"seed{seed}", arm)
    if not os.path.exists(os.path.join(out, "metrics.json")):
        cmd = ["hdml-tf", "train", "--config", config, "--workdir", out,
               "--set", f"train.seed={seed}", "--set", "train.verbose=0",
               "--set", "train.export=false"]
        for s in ARMS[arm] + list(extra):
            cmd += ["--set", s]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)["test"]


def pretrained_metrics(workdir, config_name, extra=()):
    """The pretrained backbone's test metrics (cached in WORKDIR/pretrained.json)."""
    path = os.path.join(workdir, "pretrained.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    import tensorflow as tf

    from hdml_tf import config as config_lib
    from hdml_tf import data as data_lib
    from hdml_tf.backbones import build_backbone
    from hdml_tf.evaluation import evaluate
    from hdml_tf.training.report import EVAL_METRICS

    config = config_lib.load_config(config_name, list(extra))
    d = config.data
    backbone = build_backbone(config.model.backbone, config.model.weights,
                              input_shape=(d.crop, d.crop, 3))
    test = data_lib.load_dataset(d.name, "test", d.root)
    data = data_lib.eval_dataset(test, batch_size=d.eval_batch_size, resize=d.resize,
                                 crop=d.crop, preprocessing=backbone.preprocessing)
    metrics = evaluate(lambda x: tf.math.l2_normalize(backbone(x, training=False), -1),
                       data, ks=config.train.ks, metrics=EVAL_METRICS,
                       kmeans_nredo=config.train.kmeans_restarts,
                       seed=config.train.kmeans_seed)
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(metrics, f, indent=1)
    return metrics


def half_widths(runs, seeds):
    """MAP@R 95% half-width (points) of each HDML arm's paired difference."""
    out = {}
    for arm in ARMS:
        if arm != "baseline":
            i = compare.paired_interval([runs[arm][s]["map@r"] for s in seeds],
                                        [runs["baseline"][s]["map@r"] for s in seeds])
            out[arm] = 100 * (i["high"] - i["low"]) / 2
    return out


def table(runs, seeds, pretrained, config):
    lines = [f"{config}: test characters, seeds {seeds[0]}-{seeds[-1]} ({len(seeds)}), "
             "paired by seed; in %, 95% Student t intervals.", "",
             "| metric | pretrained backbone | baseline | HDML | HDML − baseline | "
             "HDML, authors' settings | authors' − baseline |",
             "|---|---:|---:|---:|---|---:|---|"]
    for metric in METRICS:
        base = [runs["baseline"][s][metric] for s in seeds]
        cells = [f"{100 * pretrained[metric]:.2f}", f"{100 * np.mean(base):.2f}"]
        for arm in ("hdml", "hdml_authors"):
            values = [runs[arm][s][metric] for s in seeds]
            i = compare.paired_interval(values, base)
            cells += [f"{100 * np.mean(values):.2f}",
                      f"{100 * i['mean_diff']:+.2f} [{100 * i['low']:+.2f}, "
                      f"{100 * i['high']:+.2f}]"]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    below = {arm: sum(runs[arm][s]["map@r"] < runs["baseline"][s]["map@r"] for s in seeds)
             for arm in ("hdml", "hdml_authors")}
    lines += ["", f"MAP@R below the baseline's in {below['hdml']} of {len(seeds)} seeds "
              f"(HDML) and {below['hdml_authors']} (authors' settings)."]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--config", default="glyphs_finetune_npair")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to every run")
    parser.add_argument("--min-seeds", type=int, default=4)
    parser.add_argument("--max-seeds", type=int, default=16)
    parser.add_argument("--half-width", type=float, default=1.0,
                        help="stop when every MAP@R interval is narrower (points)")
    parser.add_argument("--table-only", action="store_true",
                        help="train nothing; the table of the seeds finished")
    args = parser.parse_args(argv)
    pretrained = pretrained_metrics(args.workdir, args.config, args.set)
    runs = {arm: {} for arm in ARMS}
    for seed in range(args.max_seeds):
        done = all(os.path.exists(os.path.join(args.workdir, f"seed{seed}", arm,
                                                "metrics.json")) for arm in ARMS)
        if args.table_only and not done:
            break
        for arm in ARMS:
            runs[arm][seed] = train(args.workdir, args.config, arm, seed, args.set)
        seeds = sorted(runs["baseline"])
        if len(seeds) >= max(2, args.min_seeds) and not args.table_only:
            widths = half_widths(runs, seeds)
            print(f"after {len(seeds)} seeds, MAP@R half-widths: "
                  + ", ".join(f"{a} ±{w:.2f}" for a, w in widths.items()), flush=True)
            if max(widths.values()) < args.half_width:
                break
    seeds = sorted(runs["baseline"])
    if len(seeds) < 2:
        raise SystemExit("fewer than 2 seeds finished")
    text = table(runs, seeds, pretrained, args.config)
    print(text)
    with open(os.path.join(args.workdir, "finetune.md"), "w") as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
