"""How far is HDML's step from the arithmetic its maths asks for? The matrix products of
HDML's extra work, timed alone at their shapes, against the two training steps.

HDML adds to the baseline's step the synthetic tuple (N-pair: P + P^2 rows at P classes
a batch; triplet: 3T rows) through the generator, the embedding head and the classifier,
forward and backward, and the classifier over the real features. Every matrix product of
that work is listed below with its shape; each is timed alone (a ``tf.function`` of one
``tf.matmul`` on inputs already in memory) and their sum is the time the extra work cannot
go below on this machine, with these kernels, without changing the maths: what is left of
the measured extra is BatchNorm, the softmax, the synthesis, the losses and the optimizers.

The products of the extra work (R real rows, S synthetic rows; d the embedding, h the
generator's hidden units, f the backbone's features, C the classifier's outputs):

  forward    generator fc1 (R+S, d) @ (d, h); fc2 (R+S, h) @ (h, f); head fc (S, f) @ (f, d);
             classifier (S, f) @ (f, C) and (R, f) @ (f, C)
  J_metric   back through the head (input and weights) and the generator (inputs only):
             (S, d) @ (d, f), (f, S) @ (S, d), (S, f) @ (f, h), (S, h) @ (h, d)
  J_gen      the classifier's input gradient (S, C) @ (C, f); the generator's weights
             (h, R+S) @ (R+S, f), (d, R+S) @ (R+S, h) and fc2's input (R+S, f) @ (f, h)
  J_cls      the classifier's weights on the real rows (f, R) @ (R, C)

The baseline step, the HDML step and the products are measured in the same run, their
repeats interleaved (baseline, HDML, products, baseline, ...), medians shown:

    python benchmarks/hdml_floor.py --config glyphs_npair [--repeats 7] [--steps 10]
"""

import argparse
import statistics
import sys
import time

import tensorflow as tf

from hdml_tf import bench


def products(config, feature_dim, num_classes):
    """(name, (m, k, n)) of every matrix product HDML adds to the baseline's step."""
    batch = config.data.batch_size
    if config.model.loss == "npair":
        p = batch // 2
        real, synthetic = 2 * p, p + p * p
    else:
        real = synthetic = batch
    d, h, f = config.model.embedding_dim, config.model.generator_hidden, feature_dim
    c = num_classes + int(config.model.classifier_extra_class)
    rows = real + synthetic
    return [
        ("generator fc1, forward", (rows, d, h)),
        ("generator fc2, forward", (rows, h, f)),
        ("head fc on the synthetic rows, forward", (synthetic, f, d)),
        ("classifier on the synthetic rows, forward", (synthetic, f, c)),
        ("classifier on the real rows, forward", (real, f, c)),
        ("J_metric: head fc, input gradient", (synthetic, d, f)),
        ("J_metric: head fc, weight gradient", (f, synthetic, d)),
        ("J_metric: generator fc2, input gradient", (synthetic, f, h)),
        ("J_metric: generator fc1, input gradient", (synthetic, h, d)),
        ("J_gen: classifier, input gradient", (synthetic, c, f)),
        ("J_gen: generator fc2, weight gradient", (h, rows, f)),
        ("J_gen: generator fc2, input gradient", (rows, f, h)),
        ("J_gen: generator fc1, weight gradient", (d, rows, h)),
        ("J_cls: classifier, weight gradient", (f, real, c)),
    ]


def product_timer(shape, steps):
    """A function timing ``steps`` runs of one (m, k) @ (k, n) product: seconds per run."""
    m, k, n = shape
    a, b = tf.random.normal([m, k]), tf.random.normal([k, n])
    product = tf.function(lambda: tf.matmul(a, b))
    product().numpy()

    def run():
        start = time.perf_counter()
        for _ in range(steps):
            out = product()
        out.numpy()
        return (time.perf_counter() - start) / steps

    return run


def step_timer(config, hdml, num_classes, steps):
    """A function timing ``steps`` training steps of one arm: seconds per step."""
    config = bench.bench_config(config, [f"model.hdml={str(hdml).lower()}"])
    model, step, batch = bench.step_function(config, num_classes)
    for _ in range(2):
        float(step(batch)["j_m"])
    return (lambda: bench.seconds_per_step(step, batch, steps)), model.embedder.feature_dim


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a preset name or JSON config")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10, help="steps (or products) a repeat")
    parser.add_argument("--classes", type=int, default=None,
                        help="training classes (default: the bench's facts of the dataset)")
    args = parser.parse_args(argv)
    config = bench.bench_config(args.config)
    classes = args.classes or bench.dataset_facts(config.data.name)["classes"]
    base, _ = step_timer(args.config, False, classes, args.steps)
    hdml, feature_dim = step_timer(args.config, True, classes, args.steps)
    shapes = products(config, feature_dim, classes)
    timers = [product_timer(shape, args.steps) for _, shape in shapes]
    times = {"baseline": [], "HDML": [], "products": [[] for _ in shapes]}
    for _ in range(args.repeats):
        times["baseline"].append(base())
        times["HDML"].append(hdml())
        for record, timer in zip(times["products"], timers):
            record.append(timer())
    ms = {arm: 1000 * statistics.median(times[arm]) for arm in ("baseline", "HDML")}
    each = [1000 * statistics.median(t) for t in times["products"]]
    floor = sum(each)
    print(f"{args.config}: batch {config.data.batch_size}, {config.data.crop} px, "
          f"{classes} training classes, feature dim {feature_dim}; medians of "
          f"{args.repeats} interleaved repeats of {args.steps} steps")
    print("\n| product (m, k, n) | ms | GFLOP/s |\n|---|---:|---:|")
    for (name, (m, k, n)), t in zip(shapes, each):
        print(f"| {name} ({m}, {k}, {n}) | {t:.2f} | {2 * m * k * n / t / 1e6:.0f} |")
    extra = ms["HDML"] - ms["baseline"]
    print("\n| measurement | ms/step | / baseline |\n|---|---:|---:|")
    print(f"| baseline step | {ms['baseline']:.1f} | 1.00 |")
    print(f"| HDML step | {ms['HDML']:.1f} | {ms['HDML'] / ms['baseline']:.2f} |")
    print(f"| HDML's extra (HDML - baseline) | {extra:.1f} | {extra / ms['baseline']:.2f} |")
    print(f"| its matrix products alone (the floor) | {floor:.1f} | "
          f"{floor / ms['baseline']:.2f} |")
    print(f"| baseline + floor: the least HDML step without other maths | "
          f"{ms['baseline'] + floor:.1f} | {(ms['baseline'] + floor) / ms['baseline']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
