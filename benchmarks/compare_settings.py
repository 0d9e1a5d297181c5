"""What a setting changes: two ``hdml-tf compare`` workdirs of one preset under two
settings (float32 and mixed_bfloat16, the queue and the authors' sampler, ...), paired
by seed within each arm, with two-sided 95% Student t intervals of the mean difference.

``hdml-tf compare`` pairs HDML with its baseline; this pairs a setting with another:
the runs of seed s under both settings see the same batches (the samplers are pure
functions of ``train.seed``) unless the setting is the sampler itself. A seed counts for
an arm once that arm's run has finished in both workdirs (``seed<S>/<arm>/metrics.json``),
so a comparison still running can be read.

    hdml-tf compare --config glyphs_npair --seeds 4 --workdir runs/glyphs_bf16 \\
        --set train.precision=mixed_bfloat16
    python benchmarks/compare_settings.py runs/glyphs runs/glyphs_bf16
"""

import argparse
import glob
import json
import os
import re
import sys

from hdml_tf import compare


def finished_runs(workdir):
    """{arm: {seed: test metrics}} of the finished runs in a compare workdir."""
    runs = {arm: {} for arm in compare.ARMS}
    for path in glob.glob(os.path.join(workdir, "seed*", "*", "metrics.json")):
        seed_dir, arm = os.path.split(os.path.dirname(path))
        match = re.fullmatch(r"seed(\d+)", os.path.basename(seed_dir))
        if match and arm in runs:
            with open(path) as f:
                runs[arm][int(match.group(1))] = json.load(f)["test"]
    return runs


def settings_table(first, second, metrics=compare.METRIC_ORDER):
    """Markdown rows: per metric and arm, both means and second - first [95% t], in %."""
    names = (os.path.basename(os.path.normpath(first)),
             os.path.basename(os.path.normpath(second)))
    runs = finished_runs(first), finished_runs(second)
    for workdir, found in zip((first, second), runs):
        if not any(found.values()):
            raise SystemExit(f"{workdir}: no finished run (seed<S>/<arm>/metrics.json)")
    lines = [f"| metric | arm | seeds | {names[0]} | {names[1]} | {names[1]} - {names[0]} "
             "[95% t] |", "|---|---|---|---:|---:|---|"]
    for metric in metrics:
        for arm in compare.ARMS:
            seeds = sorted(s for s in set(runs[0][arm]) & set(runs[1][arm])
                           if metric in runs[0][arm][s] and metric in runs[1][arm][s])
            if not seeds:
                continue
            a, b = ([100 * r[arm][s][metric] for s in seeds] for r in runs)
            i = compare.paired_interval(b, a)
            lines.append(f"| {metric} | {compare.LABELS[arm]} | {len(seeds)} | "
                         f"{sum(a) / len(a):.2f} | {sum(b) / len(b):.2f} | "
                         f"{i['mean_diff']:+.2f} [{i['low']:+.2f}, {i['high']:+.2f}] |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", help="the reference compare workdir")
    parser.add_argument("second", help="the same preset under the other setting")
    parser.add_argument("--metrics", nargs="+", default=list(compare.METRIC_ORDER))
    args = parser.parse_args(argv)
    print(settings_table(args.first, args.second, args.metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
