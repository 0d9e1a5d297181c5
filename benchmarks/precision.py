"""Mixed precision on the Fashion-MNIST preset: skipped steps and final metrics vs float32.

Targets: HDML steps skipped under ``mixed_float16`` (0 once the loss scale
has settled, i.e. at most the first ~10 steps) and under ``mixed_bfloat16`` (0), and the
same runs' final metrics within noise of float32.

For every precision and seed, one full ``training.train`` run of the preset (the
backbone computes in the precision; the embedding head, the generator, the classifier
and every loss stay float32), read back from its ``metrics.json``:

* skipped: steps each optimizer skipped over the whole run (``*_skipped_steps``: a
  non-finite objective) and the metric optimizer's loss-scale skips (float16 only: the
  ``LossScaleOptimizer`` lowering its scale after an overflow); and how many of all
  those came after step 10, when the loss scale has settled (``schedule_log.csv``'s
  cumulative counts);
* the final test metrics; each half precision's paired difference to float32 (same
  seed, so the same batches), mean and two-sided 95% Student t interval over seeds.

On a CPU, float16 runs through XLA (``--set train.xla=true`` is added for it): without
XLA TensorFlow's CPU float16 kernels take ~2.3 s a step on this preset (measured: 2316
ms vs 34 ms with XLA), an hour per run. GPUs run float16 natively either way.

    python benchmarks/precision.py                       # seeds 0 1 2, all three precisions
    python benchmarks/precision.py --seeds 0 --precisions float32 mixed_bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "f1")
SKIPS = ("metric_skipped_steps", "generator_skipped_steps", "classifier_skipped_steps",
         "metric_loss_scale_skips")


def run(config_name, precision, seed, workdir, extra):
    """One training run (skipped if its metrics.json exists); its metrics.json."""
    import keras

    from hdml_tf import config as config_lib
    from hdml_tf import training

    path = os.path.join(workdir, "metrics.json")
    if not os.path.exists(path):
        overrides = [f"train.precision={precision}", f"train.seed={seed}",
                     "train.export=false", "train.verbose=0", *extra]
        if precision == "mixed_float16":
            import tensorflow as tf

            if not tf.config.list_physical_devices("GPU"):
                overrides.append("train.xla=true")
        config = config_lib.load_config(config_name, overrides)
        keras.backend.clear_session()
        training.train(config, workdir, log=lambda *a: None)
    with open(path) as f:
        return json.load(f)


def late_skips(workdir, after=10):
    """Loss-scale and objective skips after step ``after`` (``schedule_log.csv``'s
    cumulative counts, written every ``train.log_every`` steps), or None without a log."""
    import csv

    path = os.path.join(workdir, "schedule_log.csv")
    if not os.path.exists(path):
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "loss_scale_skips" not in rows[0]:
        return None  # a log written before the skip columns existed
    at = [r for r in rows if int(r["step"]) <= after]
    base = at[-1] if at else {"loss_scale_skips": 0, "skipped_steps": 0}
    return sum(int(float(rows[-1][k])) - int(float(base[k]))
               for k in ("loss_scale_skips", "skipped_steps"))


def interval(differences):
    """Mean and two-sided 95% t interval of paired differences."""
    from scipy import stats

    n = len(differences)
    mean = statistics.mean(differences)
    if n < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(differences) / n ** 0.5
    return mean, mean - half, mean + half


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="fashion_mnist_npair")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--precisions", nargs="+",
                    default=["float32", "mixed_bfloat16", "mixed_float16"])
    ap.add_argument("--workdir", default="/tmp/hdml_precision")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    from hdml_tf.bench import load_average

    results = {p: {} for p in args.precisions}
    late = {p: {} for p in args.precisions}
    for seed in args.seeds:  # seeds outer: a load change hits every precision alike
        for precision in args.precisions:
            start = time.time()
            workdir = os.path.join(args.workdir, precision, f"seed{seed}")
            results[precision][seed] = run(args.config, precision, seed, workdir, args.set)
            late[precision][seed] = late_skips(workdir)
            print(f"  {precision}, seed {seed}: "
                  f"{results[precision][seed]['train_seconds']:.0f} s training "
                  f"({time.time() - start:.0f} s with set-up and evaluation)", flush=True)
    print(f"\n{args.config}, seeds {args.seeds}, overrides {args.set or 'none'}; "
          f"load average {load_average():.1f} at the end")
    print("\n| precision | steps | " + " | ".join(SKIPS)
          + " | any skip after step 10 | train s (median) |")
    print("|---|---:|" + "---:|" * len(SKIPS) + "---:|---:|")
    for precision, runs in results.items():
        stats_ = [r["statistics"] for r in runs.values()]
        skips = [", ".join(f"{int(s.get(k, 0))}" for s in stats_) for k in SKIPS]
        after = ", ".join("?" if v is None else str(v) for v in late[precision].values())
        print(f"| {precision} | {runs[args.seeds[0]]['steps']} | " + " | ".join(skips)
              + f" | {after} | "
              f"{statistics.median(r['train_seconds'] for r in runs.values()):.0f} |")
    print("(skips: one value per seed, over the whole run; 'after step 10' from "
          "schedule_log.csv, '?' for a run logged before it had skip columns)")
    print("\n| metric | " + " | ".join(f"{p} mean" for p in args.precisions)
          + " | " + " | ".join(f"{p} - float32 [95% t]" for p in args.precisions
                               if p != "float32") + " |")
    print("|---|" + "---:|" * (2 * len(args.precisions) - 1))
    for metric in METRICS:
        values = {p: [100 * results[p][s]["test"][metric] for s in args.seeds]
                  for p in args.precisions}
        cells = [f"{statistics.mean(v):.2f}" for v in values.values()]
        for p in args.precisions:
            if p == "float32" or "float32" not in values:
                continue
            mean, low, high = interval([a - b for a, b in zip(values[p], values["float32"])])
            cells.append(f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]")
        print(f"| {metric} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
