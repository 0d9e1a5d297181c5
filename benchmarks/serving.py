"""Throughput of the exported SavedModel against Keras ``embedder.predict``.

Run:  python benchmarks/serving.py                         (GoogLeNet, 227 px, random weights)
      python benchmarks/serving.py --smoke                 (tiny sizes, seconds)
      python benchmarks/serving.py --checkpoint runs/cub   (a trained workdir or .keras)
      python benchmarks/serving.py --refusals [--smoke]    (the serving limits, below)

What is timed, on the same batches of float32 RGB images (0-255, crop size):
  * keras predict: ``embedder.predict(normalize(batch), batch_size=len(batch))``, one
    call per batch; the normalisation is timed with it because the SavedModel does it
    in its graph;
  * SavedModel serving_default: ``loaded.signatures["serving_default"](images=batch)``
    after ``tf.saved_model.load`` of the export;
  * SavedModel serve_bytes: the same images JPEG-encoded at the resize size, so this
    row also pays decoding, resizing and cropping inside the graph (Keras gets its
    images already decoded, so this ratio is not like for like; it is the cost of the
    bytes API).
Each path runs once untimed (tracing, first-call allocation), then once timed over all
batches: one run, no repetition. The outputs of the first batch are compared (max
absolute difference) so that a fast but wrong path cannot win.

The machine is shared (2 cores), so absolute numbers are noisy; the ratio is the
figure of merit (target: the SavedModel is not slower than Keras).

``--refusals`` instead times what ``serve_bytes`` does with inputs over its limits
(see docs/serving.md, "Limits"): huge declared sizes (PNGs of zero rows, a small JPEG
whose frame header claims 60,000 x 60,000; made by the helpers of
tests/test_serving_limits.py), an unreadable header and a batch over ``max_batch``,
each sent beside a normal image, next to an accepted request of one normal image. Each
runs once untimed, then ``--repeats`` times; the table gives the median and the
largest time and, for the whole set of refusals, the growth of the process's peak
resident memory (``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def build_embedder(backbone, crop, embedding_dim):
    from hdml_tf.backbones import build_backbone
    from hdml_tf import Embedder

    embedder = Embedder(build_backbone(backbone, input_shape=(crop, crop, 3)), embedding_dim)
    embedder.build((None, crop, crop, 3))
    return embedder


def timed(fn, batches):
    fn(batches[0])  # untimed: tracing and first-call allocation
    start = time.perf_counter()
    outputs = [fn(b) for b in batches]
    return time.perf_counter() - start, outputs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None,
                        help="training workdir or .keras (default: a random-weight model)")
    parser.add_argument("--backbone", default="inception_v1")
    parser.add_argument("--embedding-dim", type=int, default=512)
    parser.add_argument("--resize", type=int, default=256)
    parser.add_argument("--crop", type=int, default=227)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--smoke", action="store_true",
                        help="small backbone input and batches: a seconds-long check")
    parser.add_argument("--refusals", action="store_true",
                        help="time refusals of inputs over the serving limits instead")
    parser.add_argument("--repeats", type=int, default=20,
                        help="timed calls per row of --refusals")
    args = parser.parse_args(argv)
    if args.smoke:
        args.resize, args.crop, args.batch_size, args.batches = 80, 64, 4, 2

    from hdml_tf import export
    from hdml_tf.data import preprocess

    if args.checkpoint:
        loaded_ckpt = export.load_checkpoint(args.checkpoint)
        embedder = loaded_ckpt["embedder"]
        data = (loaded_ckpt["config"] or {}).get("data") or {}
        args.resize = data.get("resize") or args.resize
        args.crop = data.get("crop") or args.crop
    else:
        embedder = build_embedder(args.backbone, args.crop, args.embedding_dim)
    mode = preprocess.preprocessing_mode(embedder.preprocessing)

    work = tempfile.mkdtemp(prefix="hdml_serving_bench_")
    try:
        path = export.export_embedder(embedder, os.path.join(work, "model"),
                                      resize=args.resize, crop=args.crop,
                                      preprocessing=mode, warmup="skip", verify=False)
        # Keras side: the same float32 weights the export serves.
        keras_embedder = export.serving_embedder(embedder, (args.crop, args.crop))
        loaded = tf.saved_model.load(path)
        images_fn = loaded.signatures[export.SIGNATURE_IMAGES]
        bytes_fn = loaded.signatures[export.SIGNATURE_BYTES]

        rng = np.random.default_rng(0)
        batches = [rng.uniform(0, 255, (args.batch_size, args.crop, args.crop, 3))
                   .astype(np.float32) for _ in range(args.batches)]
        # For serve_bytes: the batch images padded to the resize size and JPEG-encoded.
        pad = (args.resize - args.crop) // 2
        widths = ((pad, args.resize - args.crop - pad),) * 2 + ((0, 0),)
        encoded = [[tf.io.encode_jpeg(tf.cast(np.pad(img, widths, mode="edge"), tf.uint8),
                                      quality=95).numpy() for img in b] for b in batches]

        if args.refusals:
            return refusals(bytes_fn, encoded[0][0], args.repeats, path)

        def keras_predict(batch):
            return keras_embedder.predict(preprocess.normalize(batch, mode),
                                          batch_size=len(batch), verbose=0)

        def saved_images(batch):
            return images_fn(images=tf.constant(batch))[export.OUTPUT_EMBEDDING].numpy()

        def saved_bytes(contents):
            return bytes_fn(image_bytes=tf.constant(contents))[export.OUTPUT_EMBEDDING].numpy()

        rows = []
        keras_s, keras_out = timed(keras_predict, batches)
        for name, fn, inputs in (("keras embedder.predict", None, None),
                                 ("SavedModel serving_default", saved_images, batches),
                                 ("SavedModel serve_bytes (+JPEG decode)", saved_bytes,
                                  encoded)):
            if fn is None:
                seconds, out = keras_s, keras_out
            else:
                seconds, out = timed(fn, inputs)
            # JPEG is lossy, so the bytes row's outputs are not a parity check.
            diff = None if fn is saved_bytes else float(np.max(np.abs(out[0] - keras_out[0])))
            rows.append((name, seconds, diff))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    n = args.batch_size * args.batches
    source = args.checkpoint or f"{args.backbone} (random weights)"
    print(f"model: {source}, input {args.crop}x{args.crop} (resize {args.resize}), "
          f"{args.batches} batches of {args.batch_size}; TF {tf.__version__}, "
          f"{os.cpu_count()} CPUs visible")
    print()
    print("| path | seconds | images/s | ratio vs Keras | max abs diff vs Keras |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds, diff in rows:
        shown = "n/a (lossy JPEG)" if diff is None else f"{diff:.1e}"
        print(f"| {name} | {seconds:.2f} | {n / seconds:.1f} | {keras_s / seconds:.2f} | "
              f"{shown} |")
    return 0


def refusals(bytes_fn, normal, repeats, path):
    """Print the refusal-time table (see the module docstring); returns 0."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from hdml_tf import export
    from tests.test_serving_limits import jpeg_declaring, zero_png

    max_batch = export.DEFAULT_MAX_BATCH
    png = zero_png(20_000, 20_000)
    cases = [
        ("accepted: 1 normal JPEG", [normal], True),
        (f"PNG 20,000 x 20,000 ({len(png) // 1000} KB)", [normal, png], False),
        ("PNG 40,000 x 40,000", [normal, zero_png(40_000, 40_000)], False),
        ("JPEG declaring 60,000 x 60,000", [normal, jpeg_declaring(60_000, 60_000)], False),
        ("unreadable header (truncated PNG)", [normal, png[:20]], False),
        (f"{max_batch + 1} normal JPEGs (max_batch {max_batch})", [normal] * (max_batch + 1),
         False),
    ]
    rows, peak_growth = [], 0.0
    for name, contents, accepted in cases:
        tensor = tf.constant(contents)

        def call():
            try:
                bytes_fn(image_bytes=tensor)
                return True
            except tf.errors.InvalidArgumentError:
                return False

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        outcome = call()  # untimed first call (its memory is counted)
        assert outcome == accepted, f"{name}: expected accepted={accepted}"
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        if not accepted:
            peak_growth = max(peak_growth, grown)
        rows.append((name, "served" if accepted else "refused", np.median(times) * 1e3,
                     max(times) * 1e3, grown))
    print(f"model: {path}; TF {tf.__version__}, {os.cpu_count()} CPUs visible, "
          f"{repeats} timed calls per row")
    print()
    print("| request | outcome | median ms | max ms | peak RSS growth MB |")
    print("|---|---|---:|---:|---:|")
    for name, outcome, median, worst, grown in rows:
        print(f"| {name} | {outcome} | {median:.1f} | {worst:.1f} | {grown:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
