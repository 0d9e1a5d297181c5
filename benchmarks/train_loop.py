"""What does the loop around the HDML step cost? ``hdml-tf train`` at N = 1 vs N steps
per execution, against the bare step.

Target: the loop's overhead (the ms/step ``hdml-tf train`` runs at, minus the
bare step) falls by at least half from ``train.steps_per_execution`` N = 1 to N = 50.

Measured in one process, for each N (the repeats interleaved N = 1, N = 50, N = 1, ...
so a change in a shared machine's load hits both alike; the table shows medians):

* loop ms/step: ``training.train`` (what ``hdml-tf train`` runs: the real input
  pipeline, callbacks, progress bar, checkpoints every ``train.steps_per_epoch`` steps)
  on a fresh workdir for ``--short`` and for ``--long`` steps; the difference of the
  two runs' training seconds over ``long - short`` steps. The difference removes what
  both runs pay once (tracing, the first batches); the per-epoch checkpoints of the
  extra steps stay in, as a user pays them.
* bare ms/step: the same model's ``train_step`` in one ``tf.function`` on one batch
  already in memory, 50 steps per call (no host sync, no pipeline, no callbacks),
  measured at the start of every repeat.

Every boundary a callback acts on ends a call (a log row every ``train.log_every``
steps, an evaluation, a checkpoint), so a call runs at most that many steps: the
table's "steps/call" column is the mean measured from the run's own call sizes.

    python benchmarks/train_loop.py                        # Fashion-MNIST preset, N = 1 vs 50
    python benchmarks/train_loop.py --set train.log_every=50     # calls of 50 steps
    python benchmarks/train_loop.py --config cub200_npair --set data.name=folder \\
        --set data.root=DIR --short 2 --long 6 --repeats 2 --bare-steps 4   # slow on CPU
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def configured(spec, overrides, steps, per_execution):
    from hdml_tf import config as config_lib

    config = config_lib.load_config(spec, overrides)
    config.train.steps = steps
    config.train.steps_per_execution = per_execution
    config.train.eval_every = 0
    config.train.export = False
    config.train.authors_selection = False
    config_lib.validate(config)
    return config


def train_seconds(spec, overrides, steps, per_execution):
    """Training seconds of one fresh ``train()`` run, and its mean steps per call."""
    import keras

    from hdml_tf import training
    from hdml_tf.training import loop

    config = configured(spec, overrides, steps, per_execution)
    calls = []
    count = loop.steps_to_boundary

    def counted(*args):
        n = count(*args)
        calls.append(n)
        return n

    keras.backend.clear_session()
    loop.steps_to_boundary = counted
    try:
        with tempfile.TemporaryDirectory() as workdir, open(os.devnull, "w") as sink, \
                contextlib.redirect_stdout(sink):  # the progress bar still runs
            results = training.train(config, workdir, log=lambda *a: None)
    finally:
        loop.steps_to_boundary = count
    return results["train_seconds"], statistics.mean(calls)


def bare_step_ms(spec, overrides, per_call=50, repeats=1):
    """The preset's train_step alone: one batch in memory, ``per_call`` steps a call."""
    import keras
    import tensorflow as tf

    from hdml_tf import experiment, training

    config = configured(spec, overrides, 1, 1)
    keras.backend.clear_session()
    keras.utils.set_random_seed(config.train.seed)
    splits = training.load_splits(config)
    model = experiment.build_model(config, splits["train"].num_classes)
    data = training.inputs.training_dataset(config, splits["train"],
                                            model.embedder.preprocessing)
    batch = next(iter(data))

    @tf.function
    def steps(count):
        logs = model.train_step(batch)
        for _ in tf.range(count - 1):
            logs = model.train_step(batch)
        return logs

    float(steps(tf.constant(2))["j_m"])  # trace, build the optimizer slots
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        float(steps(tf.constant(per_call))["j_m"])
        times.append(1e3 * (time.perf_counter() - start) / per_call)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="fashion_mnist_npair")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--per-execution", type=int, nargs="+", default=[1, 50])
    ap.add_argument("--short", type=int, default=100, help="steps of the short run")
    ap.add_argument("--long", type=int, default=400, help="steps of the long run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bare-steps", type=int, default=50,
                    help="steps per call of the bare step (fewer where a step takes seconds)")
    args = ap.parse_args(argv)
    if args.long <= args.short:
        ap.error("--long must exceed --short")
    from hdml_tf.bench import load_average

    overrides = list(args.set) or []
    if not any(s.startswith("train.steps_per_epoch") for s in overrides):
        overrides.append("train.steps_per_epoch=100")  # checkpoints in both runs
    if args.config == "fashion_mnist_npair" and not any(
            s.startswith("data.max_eval_images") for s in overrides):
        overrides.append("data.max_eval_images=500")  # the final evaluation is not timed
    load_start = load_average()
    bare = []
    loop = {n: [] for n in args.per_execution}
    per_call = {n: [] for n in args.per_execution}
    for repeat in range(args.repeats):
        bare.append(bare_step_ms(args.config, overrides, per_call=args.bare_steps))
        print(f"  repeat {repeat + 1}, bare step: {bare[-1]:.2f} ms", flush=True)
        for n in args.per_execution:
            short, _ = train_seconds(args.config, overrides, args.short, n)
            long, mean_call = train_seconds(args.config, overrides, args.long, n)
            loop[n].append(1e3 * (long - short) / (args.long - args.short))
            per_call[n].append(mean_call)
            print(f"  repeat {repeat + 1}, N={n}: {loop[n][-1]:.2f} ms/step "
                  f"(runs of {args.short} and {args.long} steps: {short:.1f} s, {long:.1f} s)",
                  flush=True)
    bare = statistics.median(bare)
    config = configured(args.config, overrides, args.long, 1)
    batch = config.data.batch_size
    print(f"\n{args.config}, batch {batch}, {config.data.crop} px, overrides {overrides}; "
          f"load average {load_start:.1f} -> {load_average():.1f}; {args.repeats} repeats, "
          "medians")
    print(f"bare step (one batch in memory, {args.bare_steps} steps a call): {bare:.2f} ms")
    print(f"\n| N (steps_per_execution) | steps/call | loop ms/step | images/s | "
          f"overhead ms/step | overhead / N={args.per_execution[0]} |")
    print("|---|---|---|---|---|---|")
    base = None
    for n in args.per_execution:
        ms = statistics.median(loop[n])
        overhead = ms - bare
        base = overhead if base is None else base
        print(f"| {n} | {statistics.median(per_call[n]):.1f} | {ms:.2f} | "
              f"{1e3 * batch / ms:.0f} | {overhead:.2f} | {overhead / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
