"""Is the input pipeline fast enough to keep HDML's training step fed?

Measures, in one run and at one image size:

1. the N-pair training pipeline alone (``hdml_tf.data.npair_dataset``: JPEG read,
   parallel decode, resize, random crop, flip, caffe normalisation), in images/s;
2. the HDML training step alone (InceptionV1 + head + generator + classifier, three
   optimizers; ``train_on_batch`` on batches already in memory), in images/s;
3. ``fit`` fed by the pipeline (both sharing the CPU), in images/s;

and prints the ratio pipeline / step. Target: >= 2x, so the pipeline is never the
bottleneck. On a CPU-only machine the step is slow, so a smaller crop (128 by default
here instead of the authors' 227) keeps the run short; the ratio is what matters.

    python benchmarks/input_pipeline.py                       # generated JPEG folder
    python benchmarks/input_pipeline.py --resize 256 --crop 227 --pairs 32
    python benchmarks/input_pipeline.py --image-dir /data/my_folder_dataset

The generated folder mimics CUB: JPEGs of about 500x375 pixels (override with
``--source-size``), so decoding costs what it costs on the real data.

``--compare-cache`` measures instead the decoded cache (``cache=True``,
hdml_tf/data/decoded_cache.py) against JPEG decoding: the same N-pair pipeline at the
authors' sizes (batch 128, 256 -> 227) on a generated tree of a few hundred ~500x400
JPEGs at quality 90, the two pipelines' repeats interleaved, medians shown with the
load average, and both rates divided by a stated GPU step rate (``--gpu-rate``):

    python benchmarks/input_pipeline.py --compare-cache
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def time_pipeline(dataset, batches: int, warmup: int) -> tuple:
    it = iter(dataset)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    images = 0
    for _ in range(batches):
        (a, p), _ = next(it)
        images += int(a.shape[0]) + int(p.shape[0])
    return images / (time.perf_counter() - start), images


def build_model(num_classes: int, backbone: str, embedding_dim: int):
    import keras

    from hdml_tf.backbones import build_backbone
    from hdml_tf import HDML, Embedder

    embedder = Embedder(build_backbone(backbone), embedding_dim=embedding_dim)
    model = HDML(embedder, num_classes=num_classes, loss="npair", hdml=True)
    model.compile(metric_optimizer=keras.optimizers.Adam(7e-5),
                  generator_optimizer=keras.optimizers.Adam(1e-2),
                  classifier_optimizer=keras.optimizers.Adam(1e-3))
    return model


def time_step(model, batches, steps: int, warmup: int) -> float:
    """train_on_batch on batches already in memory: the step alone."""
    for i in range(warmup):
        model.train_on_batch(*batches[i % len(batches)])
    start = time.perf_counter()
    images = 0
    for i in range(steps):
        x, y = batches[i % len(batches)]
        model.train_on_batch(x, y)
        images += int(x[0].shape[0]) * 2
    return images / (time.perf_counter() - start)


def time_fit(model, dataset, steps: int) -> float:
    import keras

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 1:  # exclude the first step (tracing, pipeline start-up)
                self.start = time.perf_counter()

        def on_train_end(self, logs=None):
            self.elapsed = time.perf_counter() - self.start

    timer = Timer()
    model.fit(dataset, steps_per_epoch=steps + 1, epochs=1, verbose=0, shuffle=False,
              callbacks=[timer])
    return timer.elapsed


# The GPU rate the pipeline must keep up with, until `hdml-tf bench` reports one from a
# user's GPU: Inception-V1 (GoogLeNet) forward + backward at batch 16, 224 px takes
# 39.14 ms on a Pascal Titan X with cuDNN 5.1 (jcjohnson/cnn-benchmarks, Torch), i.e.
# 409 images/s. A T4 has ~0.7x that card's float32 FLOPs but tensor cores under
# mixed_float16, so 409 images/s is taken as the assumed T4 rate; HDML's step costs
# ~5% more than that bare backbone (benchmarks/train_step.py).
ASSUMED_GPU_RATE = 409.0


def compare_cache(args) -> int:
    """Decoded cache vs JPEG decoding at the authors' sizes: one table with the ratio."""
    import statistics

    import tensorflow as tf

    from hdml_tf.bench import load_average, pipeline_rates, write_jpeg_folder

    w, h = (int(v) for v in args.source_size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="hdml_bench_") as tmp:
        t0 = time.perf_counter()
        root = write_jpeg_folder(tmp, args.num_classes, args.images_per_class, (w, h),
                                 quality=90)
        n = args.num_classes * args.images_per_class
        print(f"generated {n} JPEGs of {w}x{h} (quality 90) in "
              f"{time.perf_counter() - t0:.1f}s")
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores visible, "
              f"load average {load_average():.1f} at start, TF {tf.__version__}")
        print(f"pipeline: N-pair batch {2 * args.pairs}, resize {args.resize} -> crop "
              f"{args.crop}, {args.preprocessing} normalisation; {args.repeats} alternating "
              f"repeats of "
              f"{args.pipeline_batches} batches, each from a fresh iterator (start-up "
              f"included)")
        runs, loads = [], []
        for _ in range(args.rounds):  # fresh pipelines each round: rebuild cost seen too
            runs.append(pipeline_rates(root, pairs=args.pairs, resize=args.resize,
                                       crop=args.crop, batches=args.pipeline_batches,
                                       repeats=args.repeats,
                                       preprocessing=args.preprocessing))
            loads.append(load_average())
    jpeg = statistics.median(r["jpeg"] for r in runs)
    cached = statistics.median(r["cached"] for r in runs)
    build = statistics.median(r["cache_build_s"] for r in runs)
    gpu = args.gpu_rate
    print()
    print("| pipeline (2 cores) | images/s (median) | per round | / GPU rate |")
    print("|---|---:|---|---:|")
    for name, rate, key in (("JPEG decode each epoch", jpeg, "jpeg"),
                            ("decoded cache (uint8 256x256 in memory)", cached, "cached")):
        per = ", ".join(f"{r[key]:.0f}" for r in runs)
        print(f"| {name} | {rate:.0f} | {per} | {rate / gpu:.2f} |")
    print()
    print(f"decoded cache / JPEG decoding = {cached / jpeg:.2f}x; building the cache of {n} "
          f"images took {build:.1f} s (median), i.e. {n / build:.0f} images/s once")
    print(f"GPU rate: {gpu:.0f} images/s (assumed: Inception-V1 fwd+bwd on a Pascal Titan X, "
          f"jcjohnson/cnn-benchmarks, taken for a T4 in mixed precision; `hdml-tf bench` "
          f"measures the real one); the pipeline keeps a GPU fed when the ratio >= 1")
    print(f"load average after each round: {', '.join(f'{x:.1f}' for x in loads)} "
          f"(on {os.cpu_count()} cores)")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compare-cache", action="store_true",
                    help="decoded cache vs JPEG decoding at the authors' sizes (see above)")
    ap.add_argument("--gpu-rate", type=float, default=ASSUMED_GPU_RATE,
                    help="images/s of the GPU step to compare with (default: assumed, "
                         "see ASSUMED_GPU_RATE)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="--compare-cache: rounds of fresh pipelines (median shown)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="--compare-cache: alternating repeats per round")
    ap.add_argument("--preprocessing", default="caffe",
                    help="--compare-cache: normalize mode (caffe for inception_v1; none "
                         "leaves normalisation out, to see decoding alone)")
    ap.add_argument("--image-dir",
                    help="folder dataset (<root>/<class>/*.jpg); default: generate one")
    ap.add_argument("--num-classes", type=int, default=32)
    ap.add_argument("--images-per-class", type=int, default=8)
    ap.add_argument("--source-size", default="500x375", help="generated JPEG size WxH")
    ap.add_argument("--resize", type=int, default=146, help="resize before cropping (spec: 256)")
    ap.add_argument("--crop", type=int, default=128, help="training crop (spec: 227)")
    ap.add_argument("--pairs", type=int, default=16, help="P: classes per N-pair batch (2P images)")
    ap.add_argument("--pipeline-batches", type=int, default=30)
    ap.add_argument("--steps", type=int, default=6, help="timed training steps")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--cache", action="store_true", help="decode all images once up front")
    ap.add_argument("--backbone", default="inception_v1")
    ap.add_argument("--embedding-dim", type=int, default=128)
    ap.add_argument("--skip-step", action="store_true", help="time the pipeline only")
    args = ap.parse_args(argv)
    if args.compare_cache:
        defaults = ap.parse_args([])
        for key, value in (("resize", 256), ("crop", 227), ("pairs", 64),
                           ("num_classes", 64), ("images_per_class", 5),
                           ("source_size", "500x400"), ("pipeline_batches", 4)):
            if getattr(args, key) == getattr(defaults, key):  # not set on the command line
                setattr(args, key, value)
        return compare_cache(args)

    import tensorflow as tf

    from hdml_tf import data
    from hdml_tf.bench import load_average, write_jpeg_folder

    tmp = None
    root = args.image_dir
    if root is None:
        tmp = tempfile.TemporaryDirectory(prefix="hdml_bench_")
        w, h = (int(v) for v in args.source_size.lower().split("x"))
        t0 = time.perf_counter()
        root = write_jpeg_folder(tmp.name, args.num_classes, args.images_per_class, (w, h))
        print(f"generated {args.num_classes * args.images_per_class} JPEGs of {w}x{h} in "
              f"{time.perf_counter() - t0:.1f}s under {root}")
    train = data.load_dataset("folder", "all", root=root)
    pipeline = data.npair_dataset(train, args.pairs, seed=0, resize=args.resize, crop=args.crop,
                                  preprocessing="caffe", cache=args.cache)

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores visible, "
          f"load average {load_average():.1f}, TF {tf.__version__}, "
          f"devices {[d.device_type for d in tf.config.list_logical_devices()]}")
    print(f"images: resize {args.resize} -> random crop {args.crop} (spec: 256 -> 227), "
          f"N-pair batch {2 * args.pairs} ({args.pairs} pairs), cache={args.cache}")

    pipe_ips, _ = time_pipeline(pipeline, args.pipeline_batches, args.warmup)
    rows = [("input pipeline alone (read+decode+augment+normalise)", pipe_ips)]

    step_ips = fit_ips = None
    if not args.skip_step:
        try:
            model = build_model(train.num_classes, args.backbone, args.embedding_dim)
        except ImportError as e:
            print(f"training step not measured: {e} (hdml_tf.models / backbones missing)")
        else:
            batches = list(pipeline.take(2))
            step_ips = time_step(model, batches, args.steps, args.warmup)
            rows.append((f"HDML train step alone ({args.backbone}, train_on_batch)", step_ips))
            elapsed = time_fit(model, pipeline, args.steps)
            fit_ips = args.steps * 2 * args.pairs / elapsed
            rows.append(("fit() fed by the pipeline (sharing the CPU)", fit_ips))

    width = max(len(r[0]) for r in rows)
    print()
    print(f"| {'measurement'.ljust(width)} | images/s |")
    print(f"|{'-' * (width + 2)}|---------:|")
    for name, ips in rows:
        print(f"| {name.ljust(width)} | {ips:8.1f} |")
    if step_ips:
        ratio = pipe_ips / step_ips
        verdict = "OK" if ratio >= 2.0 else "BELOW TARGET"
        print(f"\npipeline / step = {ratio:.1f}x (target >= 2x): {verdict}")
        if fit_ips is not None:
            print(f"fit() reaches {100 * fit_ips / step_ips:.0f}% of the step-alone rate")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
