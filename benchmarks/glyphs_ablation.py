"""What each change of the glyph preset does to HDML, paired by seed with a compare.

  python benchmarks/glyphs_ablation.py COMPARE_WORKDIR ABLATION_WORKDIR --seeds 8

COMPARE_WORKDIR is `hdml-tf compare --config glyphs_npair` with the preset as it is
(HDML: the searched settings, the head's statistics from the real pass). This trains,
for the same seeds, HDML under two more settings into ABLATION_WORKDIR/<variant>/seed<S>
(`hdml-tf train`, the same batches as the compare's runs of that seed):

* ``neither``: the preset before the fair-measurement changes: α = 90, β = 1e4, every
  learning rate 1e-3, l2_reg 3e-3, and the synthetic pass moving the head's statistics
  (``model.head_bn_updates=sequential``);
* ``schedule``: the preset's searched settings, the head as in ``neither``.

A "sequential" run trains the same weights as a "real" one (the moving statistics are
never read in training) and `hdml-tf train` reports its test metrics as trained and with
the head's statistics re-estimated from the real training images, so each variant gives
two rows. Prints, per metric, each row's mean and its paired difference from the
baseline and from ``neither`` as trained (95% Student t intervals), in %.
"""

import argparse
import json
import os
import subprocess
import sys

from hdml_tf import compare

NEITHER = ["model.alpha=90", "model.beta=1e4", "model.lambda_start=none",
           "model.w_start=none", "optim.lr_metric=1e-3", "optim.lr_gen=1e-3",
           "optim.lr_cls=1e-3", "model.l2_reg=3e-3", "model.head_bn_updates=sequential"]
SCHEDULE = ["model.head_bn_updates=sequential"]
VARIANTS = {"neither": NEITHER, "schedule": SCHEDULE}
METRICS = ("map@r", "r_precision", "recall@1", "nmi", "f1")


def train(workdir, variant, seed):
    out = os.path.join(workdir, variant, f"seed{seed}")
    if not os.path.exists(os.path.join(out, "metrics.json")):
        cmd = ["hdml-tf", "train", "--config", "glyphs_npair", "--workdir", out,
               "--set", f"train.seed={seed}", "--set", "train.verbose=0"]
        for s in VARIANTS[variant]:
            cmd += ["--set", s]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


def _compare_run(workdir, seed, arm):
    path = os.path.join(workdir, f"seed{seed}", arm, "metrics.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)["test"]


def table(rows, seeds):
    """Markdown: per metric, each row's mean and paired differences, in %."""
    lines = ["| metric | HDML variant | mean | − baseline [95% t] | − neither as trained "
             "[95% t] |", "|---|---|---:|---|---|"]
    for metric in METRICS:
        base = [100 * rows["baseline"][s][metric] for s in seeds]
        ref = [100 * rows["neither, as trained"][s][metric] for s in seeds]
        for name, per_seed in rows.items():
            if name == "baseline":
                lines.append(f"| {metric} | (baseline) | {sum(base) / len(base):.2f} | | |")
                continue
            values = [100 * per_seed[s][metric] for s in seeds]
            cells = []
            for other in (base, ref):
                if values == other:
                    cells.append("")
                    continue
                i = compare.paired_interval(values, other)
                cells.append(f"{i['mean_diff']:+.2f} [{i['low']:+.2f}, {i['high']:+.2f}]")
            lines.append(f"| {metric} | {name} | {sum(values) / len(values):.2f} | "
                         f"{cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("compare_workdir")
    parser.add_argument("workdir")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--table-only", action="store_true",
                        help="train nothing; the table of the seeds finished everywhere")
    args = parser.parse_args(argv)
    rows = {"neither, as trained": {}, "neither, head re-estimated": {},
            "schedule, as trained": {}, "schedule, head re-estimated": {},
            "both (the preset)": {}, "baseline": {}}
    for seed in range(args.seeds):
        both = _compare_run(args.compare_workdir, seed, "hdml")
        baseline = _compare_run(args.compare_workdir, seed, "baseline")
        runs = {}
        for variant in VARIANTS:
            done = os.path.join(args.workdir, variant, f"seed{seed}", "metrics.json")
            if args.table_only and not os.path.exists(done):
                break
            runs[variant] = train(args.workdir, variant, seed)
        if both is None or baseline is None or len(runs) < len(VARIANTS):
            continue
        for variant, metrics in runs.items():
            rows[f"{variant}, as trained"][seed] = metrics["test"]
            rows[f"{variant}, head re-estimated"][seed] = metrics["test_real_head_statistics"]
        rows["both (the preset)"][seed], rows["baseline"][seed] = both, baseline
    seeds = sorted(rows["baseline"])
    if len(seeds) < 2:
        raise SystemExit("fewer than 2 seeds finished in both workdirs")
    print(f"Test characters, seeds {', '.join(map(str, seeds))}, paired by seed:\n")
    print(table(rows, seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
