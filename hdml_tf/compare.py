"""``hdml-tf compare``: does HDML beat its baseline on this setting, beyond seed noise?

For each seed s, trains the config twice through ``training.train`` with
``train.seed = s``: HDML (``model.hdml=true``) and its baseline (``model.hdml=false``).
The two runs of a seed see the same batches in the same order (the samplers are pure
functions of ``train.seed`` and the batch number), so they are compared as a pair.
Per metric it reports each arm's mean ± sample std over seeds, the mean paired
difference HDML − baseline with a two-sided 95% Student t interval over the per-seed
differences (n − 1 degrees of freedom), and a verdict in words:

  hdml-tf compare --config fashion_mnist_npair --seeds 5 --workdir runs/compare_fmnist

Workdir layout (resumable: run the same command again):
  seed<S>/hdml/, seed<S>/baseline/   one training workdir per (arm, seed); a run whose
                                     metrics.json exists is reused, a killed one resumes
                                     from its last checkpoint (``training.train``)
  compare.md                         the table, the command, the seeds, the method
  compare.json                       every per-seed value and every statistic, unrounded
  compare.png                        per-seed points (joined by seed) and means per metric
"""

import json
import math
import os

import keras
import numpy as np

from hdml_tf import config as config_lib
from hdml_tf import training
from hdml_tf.workdir import WorkdirLock, atomic_write, write_json

ARMS = ("hdml", "baseline")
LABELS = {"hdml": "HDML", "baseline": "baseline"}
# Table order; metrics a run did not compute are left out.
METRIC_ORDER = ("recall@1", "recall@2", "recall@4", "recall@8", "recall@16", "recall@32",
                "nmi", "f1", "map@r", "r_precision")
METHOD = ("mean ± std: sample standard deviation (ddof = 1) over seeds. Interval: "
          "two-sided {conf:.0f}% Student t interval of the mean paired difference "
          "HDML − baseline over the {n} per-seed differences (t quantile with n − 1 = "
          "{dof} degrees of freedom, scipy.stats.t). Verdict: 'HDML better' if the whole "
          "interval is above 0, 'baseline better' if below, otherwise 'no difference "
          "detected at {n} seeds'. Metrics in %.")


def paired_interval(hdml, baseline, confidence=0.95):
    """Mean paired difference and its Student t confidence interval.

    Args:
      hdml, baseline: 1-D sequences of the same length n, entry i from seed i.
      confidence: coverage of the two-sided interval.

    Returns:
      dict with ``n``, ``mean_diff``, ``std_diff`` (ddof = 1), ``low``, ``high`` and
      ``t`` (the t quantile); the interval is ``mean_diff ± t * std_diff / sqrt(n)``.
      With n < 2 the spread is unknown: std, t, low and high are NaN.
    """
    from scipy import stats

    a, b = np.asarray(hdml, np.float64), np.asarray(baseline, np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired values need two equal 1-D non-empty sequences, "
                         f"got shapes {a.shape} and {b.shape}")
    d = a - b
    n = d.size
    mean = float(d.mean())
    if n < 2:
        return {"n": n, "mean_diff": mean, "std_diff": math.nan, "t": math.nan,
                "low": math.nan, "high": math.nan}
    std = float(d.std(ddof=1))
    t = float(stats.t.ppf(0.5 + confidence / 2, n - 1))
    half = t * std / math.sqrt(n)
    return {"n": n, "mean_diff": mean, "std_diff": std, "t": t,
            "low": mean - half, "high": mean + half}


def verdict(interval):
    """Words for a ``paired_interval`` result.

    When every paired difference is the same (discrete metrics on small test sets) the
    sample std is 0 and the t-interval is a single point: the verdict says so, since
    two equal differences are weak evidence however the interval looks.
    """
    n = interval["n"]
    caveat = (f" (all {n} differences equal: zero-width interval)"
              if n > 1 and interval["std_diff"] == 0 else "")
    if interval["low"] > 0:
        return "HDML better" + caveat
    if interval["high"] < 0:
        return "baseline better" + caveat
    return f"no difference detected at {n} seed{'s' if n != 1 else ''}"


def summarize(per_seed, confidence=0.95, metrics=None):
    """Statistics per metric from ``{arm: {seed: test-metrics dict}}``.

    Seeds are paired; only seeds where both arms finished count. Returns
    ``{"seeds": [...], "metrics": {name: {...}}}`` with each arm's values, mean and
    std (ddof = 1, NaN for one seed) and the ``paired_interval`` fields and verdict.
    """
    seeds = sorted(set(per_seed["hdml"]) & set(per_seed["baseline"]))
    if not seeds:
        raise ValueError("no seed has finished runs of both arms")
    available = set.intersection(*(set(per_seed[a][s]) for a in ARMS for s in seeds))
    names = metrics or [m for m in METRIC_ORDER if m in available]
    out = {"seeds": seeds, "confidence": confidence, "metrics": {}}
    for name in names:
        row = {}
        for arm in ARMS:
            values = np.array([float(per_seed[arm][s][name]) for s in seeds])
            row[arm] = {"values": values.tolist(), "mean": float(values.mean()),
                        "std": float(values.std(ddof=1)) if len(values) > 1 else math.nan}
        row.update(paired_interval(row["hdml"]["values"], row["baseline"]["values"],
                                   confidence))
        row["verdict"] = verdict(row)
        out["metrics"][name] = row
    return out


def _pct(x, signed=False):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def format_table(summary):
    """A Markdown table of ``summarize``'s output, values in %."""
    conf = f"{100 * summary['confidence']:.0f}%"
    header = ["metric", "HDML mean ± std", "baseline mean ± std", "HDML − baseline",
              f"{conf} t-interval", "verdict"]
    rows = []
    for name, r in summary["metrics"].items():
        rows.append([
            name,
            f"{_pct(r['hdml']['mean'])} ± {_pct(r['hdml']['std'])}",
            f"{_pct(r['baseline']['mean'])} ± {_pct(r['baseline']['std'])}",
            _pct(r["mean_diff"], signed=True),
            f"[{_pct(r['low'], True)}, {_pct(r['high'], True)}]",
            r["verdict"]])
    widths = [max(len(c) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in rows])


def method_text(summary):
    n = len(summary["seeds"])
    return METHOD.format(conf=100 * summary["confidence"], n=n, dof=n - 1)


def plot_compare(summary, path, title=None):
    """Per metric: each seed's baseline and HDML values joined by a line, arm means as
    bars (matplotlib Figure API: no pyplot state). Returns ``path``."""
    from matplotlib.figure import Figure

    names = list(summary["metrics"])
    ncols = min(4, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(3.2 * ncols, 3.3 * nrows), dpi=110)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    colours = {"baseline": "#7f7f7f", "hdml": "#1f77b4"}
    for ax, name in zip(axes.flat, names):
        r = summary["metrics"][name]
        base = 100 * np.asarray(r["baseline"]["values"])
        hd = 100 * np.asarray(r["hdml"]["values"])
        for b, h in zip(base, hd):
            ax.plot([0, 1], [b, h], color="0.75", lw=1, zorder=1)
        for x, arm, vals in ((0, "baseline", base), (1, "hdml", hd)):
            ax.scatter(np.full(vals.size, x), vals, s=22, color=colours[arm], zorder=2)
            ax.hlines(vals.mean(), x - 0.25, x + 0.25, color=colours[arm], lw=2.5, zorder=3)
        ax.set_xticks([0, 1], ["baseline", "HDML"])
        ax.set_xlim(-0.6, 1.6)
        ax.set_title(f"{name}\nΔ {_pct(r['mean_diff'], True)} "
                     f"[{_pct(r['low'], True)}, {_pct(r['high'], True)}]", fontsize=9)
        ax.set_ylabel("%")
        ax.grid(alpha=0.3, axis="y")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    n = len(summary["seeds"])
    fig.suptitle(title or f"HDML vs baseline, {n} seeds (points: seeds, joined by seed; "
                 f"bars: means)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _seed_list(seeds):
    if isinstance(seeds, int):
        return list(range(seeds))
    return [int(s) for s in seeds]


def run_config(config_spec, arm, seed, overrides=(), smoke=False):
    """The validated config of one run: the user's overrides, then the arm and seed."""
    for assignment in overrides:
        key = assignment.split("=", 1)[0].strip()
        if key in ("model.hdml", "train.seed"):
            raise config_lib.ConfigError(
                f"override {assignment!r}: compare sets {key} itself (per arm and seed)")
    # Compare runs are not exported and train quietly unless the overrides say so.
    defaults = ["train.export=false", "train.verbose=0"]
    forced = [f"model.hdml={'true' if arm == 'hdml' else 'false'}", f"train.seed={seed}"]
    config = config_lib.load_config(config_spec, [*defaults, *overrides, *forced],
                                    smoke=smoke)
    config.name = f"{config.name}_{arm}_seed{seed}"
    return config


def _finished(workdir, config):
    """The run's test metrics if it finished with this very config, else None."""
    metrics_path = os.path.join(workdir, "metrics.json")
    if not os.path.exists(metrics_path):
        return None
    with open(os.path.join(workdir, "config.json")) as f:
        previous = json.load(f)["config"]
    if previous != json.loads(config.to_json()):
        raise config_lib.ConfigError(
            f"{workdir} holds a finished run with a different config; use a new --workdir")
    with open(metrics_path) as f:
        return json.load(f)["test"]


def compare(config, seeds, workdir, overrides=(), smoke=False, confidence=0.95,
            metrics=None, command=None, log=print):
    """Train HDML and its baseline for every seed (or reuse finished runs) and compare.

    Args:
      config: a preset name or a JSON config file (as ``hdml-tf train --config``).
      seeds: an int N (seeds 0 .. N-1) or a sequence of seeds.
      workdir: one sub-folder per (seed, arm), plus compare.md/.json/.png.
      overrides: ``section.key=value`` strings applied to both arms (not model.hdml or
        train.seed, which compare sets).
      smoke: shrink every run (``config.shrink_for_smoke``), for checks.
      confidence: coverage of the paired t-interval.
      metrics: metric names to report (default: every standard one the runs computed).
      command: the command line to record in compare.md (default: this call).
      log: where progress and the table go.

    Returns:
      ``summarize``'s dict plus ``table`` (Markdown), ``paths`` and ``reused`` (the
      workdirs whose finished runs were reused rather than trained).
    """
    seeds = _seed_list(seeds)
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError(f"seeds must be distinct and non-empty, got {seeds}")
    overrides = list(overrides)
    if command is None:
        command = (f"hdml_tf.compare.compare({config!r}, seeds={seeds}, "
                   f"workdir={workdir!r}, overrides={overrides}, smoke={smoke})")
    # Validate every run's config before anything trains.
    configs = {(s, a): run_config(config, a, s, overrides, smoke) for s in seeds for a in ARMS}
    with WorkdirLock(workdir):  # one comparison at a time (each run locks its own too)
        per_seed, reused = _train_or_reuse(configs, seeds, workdir, log)
        summary = summarize(per_seed, confidence, metrics)
        table = format_table(summary)
        paths = _write_report(summary, table, config, seeds, workdir, overrides, smoke,
                              command, log)
    return {**summary, "table": table, "paths": paths, "reused": reused}


def _train_or_reuse(configs, seeds, workdir, log):
    """Each (seed, arm)'s test metrics: a finished run's, else from training it now.
    Returns ``({arm: {seed: metrics}}, reused workdirs)``."""

    per_seed = {arm: {} for arm in ARMS}
    reused = []
    # Seed by seed, so an interrupted comparison holds complete pairs.
    for seed in seeds:
        for arm in ARMS:
            run_dir = os.path.join(workdir, f"seed{seed}", arm)
            cfg = configs[(seed, arm)]
            done = _finished(run_dir, cfg)
            if done is not None:
                log(f"seed {seed} {LABELS[arm]}: finished run reused ({run_dir})")
                reused.append(run_dir)
            else:
                log(f"seed {seed} {LABELS[arm]}: training in {run_dir}")
                # Fresh Keras name counters: variable paths, which name checkpoint
                # entries, must not depend on how many runs this process built before
                # (a killed run resumes in a new process).
                keras.backend.clear_session()
                done = training.train(cfg, run_dir, log=log)["test"]
            per_seed[arm][seed] = done
    return per_seed, reused


def _write_report(summary, table, config, seeds, workdir, overrides, smoke, command, log):
    """Logs the table and writes compare.md, compare.json and compare.png; returns
    their paths."""
    method = method_text(summary)
    base = config_lib.load_config(config, overrides, smoke=smoke)
    header = (f"HDML vs baseline on {base.name} ({base.data.name}, {base.model.loss}, "
              f"{base.train.steps} steps), {len(seeds)} seeds: {', '.join(map(str, seeds))}")
    log(f"\n{header}\n\n{table}\n\n{method}")
    paths = {"markdown": os.path.join(workdir, "compare.md"),
             "json": os.path.join(workdir, "compare.json"),
             "picture": os.path.join(workdir, "compare.png")}
    markdown = (f"# {header}\n\nCommand:\n\n```\n{command}\n```\n\n"
                f"Seeds: {', '.join(map(str, seeds))} (train.seed; the two arms of a seed "
                f"see the same batches). Overrides: {', '.join(overrides) or 'none'}.\n\n"
                f"{table}\n\n{method}\n\n![per-seed values](compare.png)\n")
    atomic_write(paths["markdown"], lambda f: f.write(markdown))
    write_json(paths["json"], {**summary, "command": command, "overrides": overrides,
                               "config": config, "smoke": smoke})
    plot_compare(summary, paths["picture"], title=f"{header}\n(points: seeds, joined by "
                 "seed; bars: means)")
    log(f"wrote {paths['markdown']}, {paths['json']}, {paths['picture']}")
    return paths
