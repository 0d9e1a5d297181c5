"""Where a preset's training step spends its time: the baseline and HDML steps, by part.

  python benchmarks/step_profile.py --config glyphs_npair [--steps 10] [--set K=V ...]

Both steps are built as ``hdml-tf bench`` builds them (`hdml_tf.bench`: the preset's
model and batch, generated images), traced with the TensorFlow profiler over ``--steps``
steps each after two warm-up steps, and every op's self time is assigned to a part by
its name: the backbone, the embedding head, the generator, the classifier (HDML only),
everything else ("losses, synthesis, optimizers"), each split into forward and backward
(the ops under ``gradient_tape/``). Self times are summed over the CPU's threads, so a
row is CPU time per step, not wall time; the shares are what to read. Also printed:
each step's wall time (median of the traced steps), to put the shares in milliseconds.
"""

import argparse
import glob
import json
import os
import statistics
import sys
import tempfile
import time

import tensorflow as tf

from hdml_tf import bench

OTHER = "losses, synthesis, optimizers"


def part_of(name, backbone):
    """(part, "backward" | "forward") of a traced op name; ``backbone``: the backbone
    layer's name. Ops are named after their layer scope with Keras' instance suffix
    (``generator_1/fc2_1/BiasAdd``, ``gradient_tape/head_3/fc_1/MatMul/MatMul_1``)."""
    direction = "backward" if name.startswith("gradient_tape") else "forward"
    scope = name.removeprefix("gradient_tape/").split("/", 1)[0]
    scopes = {scope, scope.rsplit("_", 1)[0]}
    for layer, part in (("classifier", "classifier"), ("generator", "generator"),
                        ("head", "head"), (backbone, "backbone")):
        if layer in scopes:
            return part, direction
    return OTHER, direction


def op_times(logdir):
    """Op name -> total self time in µs, from the newest trace under ``logdir``."""
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    path = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))[-1]
    data, ok = plugin.xspace_to_tools_data([path], "framework_op_stats", {})
    if not ok:
        raise SystemExit(f"step_profile: the profiler could not read {path}: {data[:200]}")
    table = json.loads(data)[0]
    cols = [c["id"] for c in table["cols"]]
    times = {}
    for row in table["rows"]:
        values = dict(zip(cols, [c.get("v") for c in row["c"]]))
        if values["type"] != "IDLE":
            times[values["operation"]] = times.get(values["operation"], 0.0) + float(
                values["total_self_time"])
    return times


def profile_arm(config_spec, hdml, overrides, steps, num_classes):
    """({(part, direction): ms of CPU per step}, median wall ms per step, op name -> µs
    over the traced steps) for one arm."""
    config = bench.bench_config(config_spec, [f"model.hdml={str(hdml).lower()}",
                                              *overrides])
    model, step, batch = bench.step_function(config, num_classes)
    for _ in range(2):
        float(step(batch)["j_m"])
    walls = []
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(steps):
            start = time.perf_counter()
            float(step(batch)["j_m"])
            walls.append(1000 * (time.perf_counter() - start))
        tf.profiler.experimental.stop()
        times = op_times(logdir)
    parts = {}
    for name, us in times.items():
        key = part_of(name, model.embedder.backbone.name)
        parts[key] = parts.get(key, 0.0) + us / 1000 / steps
    return parts, statistics.median(walls), times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--top", type=int, default=0, help="also list the N costliest ops")
    parser.add_argument("--classes", type=int, default=None,
                        help="training classes (default: the bench's facts of the dataset)")
    args = parser.parse_args(argv)
    config = bench.bench_config(args.config, args.set)
    classes = args.classes or bench.dataset_facts(config.data.name)["classes"]
    results = {arm: profile_arm(args.config, arm == "HDML", args.set, args.steps, classes)
               for arm in ("baseline", "HDML")}
    keys = sorted({k for parts, _, _ in results.values() for k in parts})
    print(f"{args.config}, {classes} training classes, batch {config.data.batch_size}, "
          f"{config.data.crop} px, {args.steps} traced steps per arm; CPU ms per step")
    print("| part | direction | baseline | HDML | HDML share |")
    print("|---|---|---:|---:|---:|")
    total = sum(results["HDML"][0].values())
    for key in keys:
        b, h = (results[arm][0].get(key, 0.0) for arm in ("baseline", "HDML"))
        print(f"| {key[0]} | {key[1]} | {b:.1f} | {h:.1f} | {100 * h / total:.1f}% |")
    sums = [sum(results[arm][0].values()) for arm in ("baseline", "HDML")]
    print(f"| all | | {sums[0]:.1f} | {sums[1]:.1f} | 100% |")
    walls = [results[arm][1] for arm in ("baseline", "HDML")]
    print(f"\nwall ms per step (median, traced): baseline {walls[0]:.1f}, HDML "
          f"{walls[1]:.1f}, ratio {walls[1] / walls[0]:.2f}")
    for arm in ("baseline", "HDML") if args.top else ():
        times = results[arm][2]
        print(f"\n{arm}: the {args.top} costliest ops, CPU ms per step")
        for name in sorted(times, key=times.get, reverse=True)[:args.top]:
            print(f"  {times[name] / 1000 / args.steps:8.1f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
