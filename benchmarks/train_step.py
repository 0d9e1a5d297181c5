"""How much does HDML cost on top of its baseline? Images/s of the two training steps.

Measures, in one run, at the same N-pair batch and image size and on the same
synthetic in-memory batches:

1. the HDML N-pair step (``HDML(..., loss="npair", hdml=True)``: backbone + head,
   P + P^2 synthetic rows through the generator and the shared head, the classifier,
   three optimizers);
2. the baseline step (``hdml=False``: backbone + head, J_m, the metric optimizer);

and prints a table with ms/step, images/s and the ratio HDML / baseline (time per
step) with the overhead in %. Target: HDML costs at most 15% more than the
baseline at batch 128, 227 px with ``inception_v1``. No input pipeline is involved
(``benchmarks/input_pipeline.py`` measures that): the batch is already in memory, so
this is the step alone.

How it is timed: ``model.train_step`` inside one ``tf.function`` per model (what
``hdml-tf train`` runs; ``--xla`` adds ``jit_compile=True``) on a batch generated as
``hdml-tf bench`` generates its own (``hdml_tf.bench.synthetic_batch``), ``--warmup``
untimed steps first (tracing, optimizer slots), then ``--repeats`` repeats of
``--steps`` timed steps (``hdml_tf.bench.seconds_per_step``); the repeats of the two
models are interleaved (H, B, H, B, ...) so that a change in the load of a shared machine
hits both alike, and the table shows the median repeat.

    python benchmarks/train_step.py                                  # CPU: batch 32, 128 px
    python benchmarks/train_step.py --backbone small_cnn --size 64 --batch 64
    python benchmarks/train_step.py --batch 128 --size 227 --steps 20 --repeats 5   # GPU,
                                                                     # the target's size
    python benchmarks/train_step.py --breakdown   # also time the HDML-only parts alone

``--breakdown`` times, on the backbone features of one batch (so without the
backbone), the HDML-only work: the generator + head + classifier forward over the
P + P^2 synthetic rows and the two extra gradient calls, which is what HDML adds.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build(backbone_name, hdml, size, embedding_dim, num_classes, seed=0):
    """One compiled HDML (or baseline) model; the same seed gives the same weights."""
    import keras

    import hdml_tf.backbones.small_cnn  # noqa: F401  (registers "small_cnn")
    from hdml_tf.backbones import build_backbone
    from hdml_tf import HDML, Embedder

    keras.utils.set_random_seed(seed)
    backbone = build_backbone(backbone_name, input_shape=(size, size, 3))
    # HDML's and compile's defaults (hdml_tf.params) are Cars196's official settings,
    # so both steps carry the weight decay and the N-pair L2 term of a real run.
    model = HDML(Embedder(backbone, embedding_dim=embedding_dim), num_classes=num_classes,
                 loss="npair", hdml=hdml)
    model.compile()  # Adam 7e-5 (metric), 1e-2 (generator), 1e-3 (classifier)
    model.build((None, size, size, 3))  # and the optimizers (compiled first)
    return model


def breakdown(model, batch, repeats, steps):
    """Time the HDML-only work alone, on fixed backbone features (no backbone).

    Returns rows (name, median ms). Each part is its own tf.function; the features are
    computed once, outside the timing.
    """
    import tensorflow as tf

    from hdml_tf import synthesis

    (a, p), (la, lp) = batch
    y = model.embedder.features(tf.concat([a, p], 0), training=False)
    y = tf.constant(y.numpy())
    labels = tf.constant(np.concatenate([la, lp]))
    pairs = int(a.shape[0])
    head, gen, cls = model.embedder.head, model.generator, model.classifier
    lam = tf.constant(0.5)

    def synth_rows(z):
        z_a, z_p = z[:pairs], z[pairs:]
        return tf.concat([z_a, synthesis.npair_candidates(z_a, z_p, lam)], 0)

    @tf.function
    def head_only(y):  # what the baseline does after the backbone
        with tf.GradientTape() as tape:
            z = head(y, training=True)
            loss = tf.reduce_sum(z * z)
        return tape.gradient(loss, head.trainable_variables)

    @tf.function
    def hdml_forward(y):
        z = head(y, training=True)
        synthetic = synth_rows(z)
        y_gen = gen(tf.concat([z, synthetic], 0), training=True)
        y_tilde = y_gen[2 * pairs:]
        z_tilde = head(y_tilde, training=True)
        logits = cls(y_tilde)
        return tf.reduce_sum(z_tilde) + tf.reduce_sum(logits) + tf.reduce_sum(cls(y))

    @tf.function
    def hdml_forward_backward(y):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(y)
            z = head(y, training=True)
            synthetic = synth_rows(z)
            y_gen = gen(tf.concat([z, synthetic], 0), training=True)
            y_prime, y_tilde = y_gen[:2 * pairs], y_gen[2 * pairs:]
            z_tilde = head(y_tilde, training=True)
            j_metric = tf.reduce_sum(z_tilde * z_tilde)
            j_gen = tf.reduce_sum(tf.square(y_prime - y)) + tf.reduce_sum(cls(y_tilde))
            j_cls = tf.reduce_sum(cls(y))
        # The metric gradient reaches the backbone through y, as in train_step.
        g = tape.gradient(j_metric, head.trainable_variables + [y])
        g += tape.gradient(j_gen, gen.trainable_variables)
        g += tape.gradient(j_cls, cls.trainable_variables)
        return g

    rows = []
    for name, fn in (("head alone, fwd+bwd (baseline's share)", head_only),
                     (f"HDML extra forward: {pairs + pairs * pairs} synthetic rows "
                      "through G, H, C", hdml_forward),
                     ("HDML extra forward + 3 gradient calls", hdml_forward_backward)):
        fn(y)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(steps):
                out = fn(y)
                tf.nest.map_structure(lambda t: t.numpy(), out)
            times.append(1e3 * (time.perf_counter() - start) / steps)
        rows.append((name, statistics.median(times)))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="inception_v1",
                    help="registry name (inception_v1, small_cnn, resnet50, ...)")
    ap.add_argument("--batch", type=int, default=32,
                    help="N-pair batch 2P (spec: 128); P classes per batch")
    ap.add_argument("--size", type=int, default=128, help="image size (spec: 227)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per repeat")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first, per model")
    ap.add_argument("--repeats", type=int, default=3, help="repeats; the median is shown")
    ap.add_argument("--embedding-dim", type=int, default=128)
    ap.add_argument("--num-classes", type=int, default=98,
                    help="classifier width (Cars196 trains on 98 classes)")
    ap.add_argument("--xla", action="store_true", help="jit_compile the step")
    ap.add_argument("--threads", type=int, default=0,
                    help="intra-op threads (0: TensorFlow's default)")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time the HDML-only parts on fixed features")
    args = ap.parse_args(argv)
    if args.batch % 2 or args.batch < 4:
        ap.error("--batch must be an even N-pair batch 2P with P >= 2")
    pairs = args.batch // 2
    if pairs > args.num_classes:
        ap.error(f"--batch {args.batch} needs {pairs} distinct classes; "
                 f"--num-classes is {args.num_classes}")

    import tensorflow as tf

    from hdml_tf.bench import load_average, seconds_per_step, synthetic_batch

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    devices = [d.device_type for d in tf.config.list_logical_devices()]
    on_gpu = "GPU" in devices
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores visible, "
          f"load average {load_average():.1f} at start, TF {tf.__version__}, "
          f"devices {devices}")
    print(f"step: N-pair batch {args.batch} (P = {pairs}, {pairs * pairs} synthetic "
          f"rows), {args.size}x{args.size} px, backbone {args.backbone}, "
          f"d = {args.embedding_dim}, {args.num_classes} classes, "
          f"{'XLA' if args.xla else 'tf.function'}; {args.warmup} warmup + "
          f"{args.repeats} x {args.steps} timed steps per model, interleaved")
    if (args.batch, args.size, args.backbone) != (128, 227, "inception_v1"):
        print("NOTE: the 15% target is at batch 128, 227 px, inception_v1"
              + ("" if on_gpu else "; this CPU run uses a smaller size") + ".")

    batch = synthetic_batch(pairs, args.size, args.num_classes)
    models, steps = {}, {}
    for name, hdml in (("HDML", True), ("baseline", False)):
        t0 = time.perf_counter()
        models[name] = build(args.backbone, hdml, args.size, args.embedding_dim,
                             args.num_classes)
        steps[name] = tf.function(models[name].train_step, jit_compile=args.xla)
        if args.warmup:
            seconds_per_step(steps[name], batch, args.warmup)
        print(f"  {name}: built, traced and warmed up in {time.perf_counter() - t0:.1f}s")

    times = {name: [] for name in models}
    loads = []
    for _ in range(args.repeats):
        for name in models:
            times[name].append(seconds_per_step(steps[name], batch, args.steps))
        loads.append(load_average())
    nonfinite = {n: int(m.nonfinite_steps.numpy()) for n, m in models.items()}

    med = {n: statistics.median(t) for n, t in times.items()}
    # Per-repeat ratios: each HDML repeat against the baseline repeat right after it.
    paired = [h / b for h, b in zip(times["HDML"], times["baseline"])]
    ratio = med["HDML"] / med["baseline"]

    print()
    print(f"| step ({args.backbone}, batch {args.batch}, {args.size} px) "
          "| ms/step (median) | min - max ms | images/s |")
    print("|---|---:|---:|---:|")
    for name in models:
        t = times[name]
        print(f"| {name} | {1e3 * med[name]:.1f} | {1e3 * min(t):.1f} - {1e3 * max(t):.1f} "
              f"| {args.batch / med[name]:.1f} |")
    print()
    paired_ratio = statistics.median(paired)
    verdict = "within" if ratio <= 1.15 else "ABOVE"
    print(f"HDML / baseline time per step = {ratio:.3f} -> overhead {100 * (ratio - 1):+.1f}% "
          f"({verdict} the 15% target)")
    print(f"median of the paired per-repeat ratios = {paired_ratio:.3f} "
          f"({100 * (paired_ratio - 1):+.1f}%); per-repeat: "
          + ", ".join(f"{r:.3f}" for r in paired)
          + (" (these disagree: the load changed during the run, repeat with more "
             "--repeats on a quieter machine)" if max(paired) / min(paired) > 1.3 else ""))
    print(f"load average during the timed repeats: {min(loads):.1f} - {max(loads):.1f} "
          f"(on {os.cpu_count()} cores); non-finite steps skipped: {nonfinite}")

    if args.breakdown:
        print()
        print("HDML-only work on fixed backbone features (no backbone), median ms:")
        rows = breakdown(models["HDML"], batch, args.repeats, max(args.steps, 5))
        for name, ms in rows:
            print(f"  {name:<62} {ms:8.1f} ms")
        extra = rows[2][1] - rows[0][1]
        delta = 1e3 * (med["HDML"] - med["baseline"])
        print(f"  => HDML's extra head/generator/classifier work ~ {extra:.1f} ms of the "
              f"{delta:.1f} ms measured between the two full steps "
              f"({100 * extra / (1e3 * med['baseline']):.1f}% of a baseline step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
