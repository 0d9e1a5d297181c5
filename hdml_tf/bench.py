"""``hdml-tf bench``: how fast will a preset train on this machine?

Measures, on whatever machine it runs and without any dataset (generated images at
the preset's batch and crop size), and prints one table:

* the baseline and HDML training steps at the preset's batch and image size, in each
  precision that applies to the device found (GPU: float32, mixed_float16,
  mixed_float16 + XLA; CPU: float32, mixed_bfloat16; ``--xla`` adds XLA rows there): ms per
  step (median over repeats after warm-up), images/s, the HDML / baseline ratio and
  the steps skipped for non-finite values;
* the input pipeline's images/s decoding generated JPEGs of the dataset's typical
  size, with and without the decoded cache (``hdml_tf.data.decoded_cache``);
* peak memory (GPU: ``tf.config.experimental.get_memory_info``; CPU: the process's
  peak resident set size, which only grows, so later rows include earlier ones);
* the expected wall time of the preset's full run (what it includes is printed).

    hdml-tf bench --config cub200_npair            # the preset's real sizes
    hdml-tf bench --config cub200_npair --smoke    # tiny sizes, seconds (CI)
    hdml-tf bench --config cars196_npair --set data.batch_size=64

The model is built exactly as ``hdml-tf train`` builds it (``experiment.build_model``,
compiled with the three optimizers); the step is ``model.train_step`` inside one
``tf.function`` (``jit_compile=True`` for the XLA rows), fed a batch already in
device memory, so the step is measured alone; the pipeline rows say whether the
input pipeline can keep up with it.

The developer scripts in ``benchmarks/`` measure with the same pieces instead of their
own: `bench_config`, `dataset_facts`, `step_function`, `synthetic_batch`,
`seconds_per_step`, `write_jpeg_folder`, `pipeline_rates` and `load_average`.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import os
import platform
import resource
import statistics
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from hdml_tf import config as config_lib
from hdml_tf import data, experiment, params
from hdml_tf.data import preprocess

# Approximate facts per dataset, for the estimate only: training / evaluated images,
# training classes, typical stored image size (w, h) of the JPEGs. CUB and Cars images
# are photos of about 500x375 and 700x480; SOP product photos about 500x500; In-Shop's
# are 256x256 (they come as 256-pixel JPEGs); Fashion-MNIST is 28x28 in memory.
DATASETS = {
    "cub200": dict(train=5864, test=5924, classes=100, size=(500, 375)),
    "cars196": dict(train=8054, test=8131, classes=98, size=(700, 480)),
    "sop": dict(train=59551, test=60502, classes=11318, size=(500, 500)),
    "inshop": dict(train=25882, test=26830, classes=3997, size=(256, 256)),
    "fashion_mnist": dict(train=35000, test=35000, classes=5, size=(28, 28)),
    "digits": dict(train=900, test=897, classes=5, size=(8, 8)),
    # glyphs_npair's folder (docs/results.md): 1,350 train characters x 26 faces and
    # 1,500 test characters x 15 held-out faces, 16x16 PNGs. The class count sets the classifier's width, which at 64
    # classes a batch (4,160 synthetic rows) is a real share of the step.
    "glyphs": dict(train=35100, test=22500, classes=1350, size=(16, 16)),
}
_DEFAULT_FACTS = dict(train=10000, test=10000, classes=100, size=(500, 375))
# `hdml-tf bench --smoke`: tiny sizes (seconds, for CI); the user's --set still applies.
SMOKE_OVERRIDES = ["model.backbone=small_cnn", "model.lrn=caffe",
                   "data.resize=36", "data.crop=32", "model.embedding_dim=16",
                   "model.generator_hidden=32", "data.eval_batch_size=8"]
SMOKE_TIMING = dict(warmup=1, repeats=2, steps=1)


def dataset_facts(name):
    """A copy of the `DATASETS` facts of dataset ``name``; for a dataset not listed,
    10,000 training and test images of 100 classes, 500x375."""
    return dict(DATASETS.get(name, _DEFAULT_FACTS))


@dataclasses.dataclass
class Variant:
    name: str  # e.g. "mixed_bfloat16 + XLA"
    policy: str  # keras dtype policy
    xla: bool


def variants_for(device_type: str, xla: bool = True):
    """The precisions that apply: GPU float16, CPU (and TPU) bfloat16; ``xla=False``
    leaves out the XLA row (its compile takes longer than a smoke run)."""
    half = "mixed_float16" if device_type == "GPU" else "mixed_bfloat16"
    return [Variant("float32", "float32", False), Variant(half, half, False)] + (
        [Variant(f"{half} + XLA", half, True)] if xla else [])


def load_average():
    """The machine's 1-minute load average (NaN where the system reports none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def write_jpeg_folder(root: str, num_classes: int, per_class: int, size, seed: int = 0,
                      quality: int = 90) -> str:
    """root/class_XXX/NNNN.jpg: textured JPEGs of (w, h) = ``size`` at ``quality``.

    Smooth gradients plus noise compress (and decode) like photographs, not like flat
    colour, so decoding costs about what it costs on the real data.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for c in range(num_classes):
        d = os.path.join(root, f"class_{c:03d}")
        os.makedirs(d, exist_ok=True)
        base = rng.uniform(40, 200, size=3)
        for k in range(per_class):
            fx, fy = rng.uniform(0.005, 0.05, size=2)
            pattern = 40 * np.sin(xx * fx + k)[..., None] + 40 * np.cos(yy * fy + c)[..., None]
            noise = rng.normal(0, 12, size=(h, w, 3))
            img = np.clip(base + pattern + noise, 0, 255).astype(np.uint8)
            Image.fromarray(img).save(os.path.join(d, f"{k:04d}.jpg"), quality=quality)
    return root


def pipeline_rates(root, *, pairs, resize, crop, preprocessing="caffe", batches=2,
                   repeats=3, storage="memory"):
    """Images/s of the N-pair training pipeline on the folder dataset at ``root``,
    decoding JPEGs every time and with the decoded cache.

    Each repeat runs each pipeline alone from a fresh iterator, timed from its
    creation to its ``batches``-th batch (start-up included: a lower bound, but no
    batch decoded before the clock started is counted), and closes it before the
    other starts: an open
    iterator keeps decoding into its prefetch buffer in the background, which would
    steal the cores from the one being timed and then hand over batches decoded
    earlier. The two alternate, so a change in the machine's load hits both alike.

    Returns dict: "jpeg" and "cached" -> median images/s over ``repeats``;
    "cache_build_s" -> seconds to decode the cache once; "images" -> images found.
    """

    train = data.load_dataset("folder", "all", root=root)
    common = dict(seed=0, resize=resize, crop=crop, preprocessing=preprocessing)
    datasets = {"jpeg": data.npair_dataset(train, pairs, cache=False, **common)}
    start = time.perf_counter()
    datasets["cached"] = data.npair_dataset(train, pairs, cache=storage, **common)
    build = time.perf_counter() - start
    rates = {name: [] for name in datasets}
    for _ in range(repeats):
        for name, ds in datasets.items():
            start = time.perf_counter()
            it = iter(ds)
            for _ in range(batches):
                (a, p), _ = next(it)
                np.asarray(a)  # the batch is ready on the host
            rates[name].append(batches * 2 * pairs / (time.perf_counter() - start))
            del it
            gc.collect()  # closes the iterator: no decoding in the background
    out = {name: statistics.median(r) for name, r in rates.items()}
    out.update(cache_build_s=build, images=len(train))
    return out


def _set_precision(config, variant):
    """The variant's precision and XLA setting in the config (``train.precision``)."""
    config.train.precision, config.train.xla = variant.policy, variant.xla


def _peak_memory(device_type):
    if device_type == "GPU":
        return tf.config.experimental.get_memory_info("GPU:0")["peak"]

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def synthetic_batch(tuples, crop, num_classes, groups=2, seed=0):
    """A generated training batch in tensors, ``((images, ...), (labels, ...))``:
    ``groups`` groups of ``tuples`` images, N-pair (2: anchors, positives) or triplet
    (3: anchors, positives, negatives), each tuple's anchor of its own class (``tuples``
    distinct classes of ``num_classes``), its negative of the previous tuple's class. The
    images are ``crop`` x ``crop`` Caffe-scaled noise (BGR minus the mean, so roughly
    [-128, 128])."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(num_classes, tuples, replace=False).astype(np.int32)
    group_labels = [labels, labels, np.roll(labels, 1)][:groups]
    images = tuple(rng.uniform(-120, 120, (tuples, crop, crop, 3)).astype(np.float32)
                   for _ in group_labels)
    return tf.nest.map_structure(tf.constant, (images, tuple(group_labels)))


def step_function(config, num_classes, jit_compile=False):
    """(model, step, batch): the model as ``hdml-tf train`` builds it (seeded by
    ``train.seed``), its ``train_step`` in one ``tf.function`` and a
    :func:`synthetic_batch` of the preset's layout and crop."""
    keras.utils.set_random_seed(config.train.seed)
    model = experiment.build_model(config, num_classes)
    step = tf.function(model.train_step, jit_compile=jit_compile)
    batch = synthetic_batch(config_lib.classes_per_batch(config), config.data.crop,
                            num_classes, params.tuple_size(config.model.loss))
    return model, step, batch


def seconds_per_step(step, batch, count):
    """Mean seconds of ``count`` (at least 1) calls ``step(batch)`` of a training step
    returning its logs; the last call's ``j_m`` is fetched, so the device has finished."""
    start = time.perf_counter()
    for _ in range(count):
        logs = step(batch)
    float(logs["j_m"])  # wait for the device
    return (time.perf_counter() - start) / count


def time_step(config, variant, num_classes, *, warmup, repeats, steps, eval_batch,
              device_type):
    """Median seconds per train step and per embedder forward of ``eval_batch``
    images, skipped steps and peak memory, for one model and precision."""

    config = copy.deepcopy(config)
    previous = keras.config.dtype_policy()
    if device_type == "GPU":
        tf.config.experimental.reset_memory_stats("GPU:0")
    try:
        _set_precision(config, variant)
        model, step, batch = step_function(config, num_classes, jit_compile=variant.xla)
    finally:
        keras.config.set_dtype_policy(previous)
    embed = tf.function(lambda x: model.embedder(x, training=False), jit_compile=variant.xla)
    eval_images = tf.concat(batch[0], 0)[:eval_batch]
    seconds_per_step(step, batch, warmup)
    times = [seconds_per_step(step, batch, steps) for _ in range(repeats)]
    embed(eval_images).numpy()
    fwd = []
    for _ in range(repeats):
        start = time.perf_counter()
        embed(eval_images).numpy()
        fwd.append((time.perf_counter() - start) / int(eval_images.shape[0]))
    ran = warmup + repeats * steps
    skipped = int(model.nonfinite_steps.numpy())
    lso = [opt for opt in (model.metric_optimizer, getattr(model, "generator_optimizer", None),
                           getattr(model, "classifier_optimizer", None))
           if isinstance(opt, keras.optimizers.LossScaleOptimizer)]
    # A LossScaleOptimizer skips on its own (overflow): its inner optimizer does not count.
    if lso:
        skipped += max(ran - int(opt.inner_optimizer.iterations.numpy()) for opt in lso)
    result = dict(step_s=statistics.median(times), forward_s_per_image=statistics.median(fwd),
                  skipped=skipped, steps_run=ran, peak_bytes=_peak_memory(device_type),
                  preprocessing=model.embedder.preprocessing)
    del model, step, embed
    gc.collect()
    return result


def _hms(seconds):
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def expected_run_seconds(config, facts, step_s, forward_s_per_image, jpeg_rate, cached_rate):
    """The preset's full run: (seconds, what is included).

    Steps: ``train.steps`` x max(step, batch / pipeline rate), as the pipeline runs
    ahead of the step (prefetch); with ``data.cache`` the pipeline rate is the cached
    one and decoding the training split once is added. Evaluation: every
    ``train.eval_every`` steps on the val split (``data.val_fraction`` of the training
    images) and once at the end on the test split, each image decoded (no cache) and
    embedded, the slower of the two. Not included: start-up, retrieval scoring,
    checkpoints and export.
    """
    d, t = config.data, config.train
    rate = cached_rate if d.cache else jpeg_rate
    per_step = max(step_s, d.batch_size / rate)
    total = t.steps * per_step
    parts = [f"{t.steps} steps x {1e3 * per_step:.0f} ms"]
    if d.cache:
        total += facts["train"] / jpeg_rate
        parts.append("decoding the cache once")
    per_image = max(forward_s_per_image, 1.0 / jpeg_rate)
    val_images = int(facts["train"] * d.val_fraction)
    evals = (t.steps // t.eval_every) if t.eval_every and val_images else 0
    test_images = min(facts["test"], d.max_eval_images or facts["test"])
    total += (evals * val_images + test_images) * per_image
    parts.append(f"{evals} val evaluations of {val_images} images + 1 test evaluation of "
                 f"{test_images} images at {1e3 * per_image:.1f} ms/image")
    return total, "; ".join(parts)


def run_bench(config, *, smoke=False, warmup=2, repeats=3, steps=2, xla=None, out=print):
    """Measure, print the table, and return the rows (dicts) for callers and tests."""

    d = config.data
    facts = dataset_facts(d.name)
    gpus = tf.config.list_logical_devices("GPU")
    device_type = "GPU" if gpus else "CPU"
    tuples = config_lib.classes_per_batch(config)
    pairs = d.batch_size // 2  # the input pipeline is timed with N-pair batches
    num_classes = max(tuples, int(round(facts["classes"] * (1 - d.val_fraction))))
    if smoke:
        facts["size"] = (64, 48)
    load_start = load_average()
    out(f"hdml-tf bench: {config.name} on {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{device_type}{' ' + gpus[0].name if gpus else ''}, TF {tf.__version__}, "
        f"load average {load_start:.1f} at start")
    out(f"step: {config.model.backbone}, batch {d.batch_size} ({tuples} {'pairs' if config.model.loss == 'npair' else 'triplets'}), "
        f"{d.crop}x{d.crop} px, {num_classes} classes; {warmup} warm-up + {repeats} x "
        f"{steps} timed steps per row, median repeat")
    if xla is None:  # XLA rows where users train: on a GPU (on a CPU the compile dominates)
        xla = device_type == "GPU" and not smoke
    rows, preprocessing = _step_rows(config, device_type, num_classes, xla, out, timing=dict(
        warmup=warmup, repeats=repeats, steps=steps,
        eval_batch=min(d.eval_batch_size, d.batch_size)))
    rates = _pipeline_measurement(d, facts["size"], pairs, preprocessing, smoke, repeats, out)
    rows += _pipeline_rows(d, facts["size"], rates)
    best = _add_estimates(config, facts, rows, rates)
    _print_table(rows, d.batch_size, device_type, out)
    _print_notes(config, best, rates, device_type, load_start, out)
    return rows


def _step_rows(config, device_type, num_classes, xla, out, timing):
    """One row per (precision, baseline / HDML) step measured by :func:`time_step`, the
    HDML row with its ``ratio`` to the baseline; also the backbone's preprocessing mode."""
    rows = []
    started = time.perf_counter()
    preprocessing = config.model.backbone
    for variant in variants_for(device_type, xla=xla):
        pair = {}
        for hdml in (False, True):
            c = copy.deepcopy(config)
            c.model.hdml = hdml
            try:
                r = time_step(c, variant, num_classes, device_type=device_type, **timing)
            except Exception as error:  # noqa: BLE001 - a precision the device lacks
                out(f"  {variant.name}, {'HDML' if hdml else 'baseline'}: not measured "
                    f"({type(error).__name__}: {str(error).splitlines()[0][:120]})")
                continue
            r.update(kind="step", model="HDML" if hdml else "baseline", variant=variant.name,
                     ms=round(1e3 * r["step_s"], 2))
            preprocessing = r.pop("preprocessing")
            out(f"  {variant.name}, {r['model']}: {r['ms']:.1f} ms/step "
                f"({time.perf_counter() - started:.0f} s so far)")
            pair[r["model"]] = r
            rows.append(r)
        if len(pair) == 2:
            pair["HDML"]["ratio"] = pair["HDML"]["ms"] / pair["baseline"]["ms"]
    return rows, preprocessing


def _pipeline_measurement(d, size, pairs, preprocessing, smoke, repeats, out):
    """:func:`pipeline_rates` on generated JPEGs of ``size``; infinite rates (the
    estimate then assumes the pipeline keeps up) when it cannot be measured."""

    try:
        with tempfile.TemporaryDirectory(prefix="hdml_bench_") as tmp:
            root = write_jpeg_folder(tmp, max(pairs, 2), 2 if smoke else 4, size)
            return pipeline_rates(root, pairs=pairs, resize=d.resize, crop=d.crop,
                                  preprocessing=preprocess.preprocessing_mode(preprocessing),
                                  batches=1 if smoke else 3, repeats=max(repeats, 3))
    except Exception as error:  # noqa: BLE001 - still print the step measurements
        out(f"  input pipeline: not measured ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[-1][:160]}); the estimate assumes it keeps up")
        return dict(jpeg=float("inf"), cached=float("inf"), cache_build_s=float("nan"),
                    images=0)


def _pipeline_rows(d, size, rates):
    w, h = size
    rows = []
    for name, label in (("jpeg", f"decode {w}x{h} JPEGs"), ("cached", "decoded cache")):
        if rates[name] == float("inf"):
            continue
        rows.append(dict(kind="pipeline", model=f"input pipeline, {label}",
                         variant=f"{d.resize}->{d.crop}", ms=round(1e3 * d.batch_size
                                                                  / rates[name], 2)))
    return rows


def _add_estimates(config, facts, rows, rates):
    """Sets each step row's ``expected_s`` (:func:`expected_run_seconds`); returns the
    fastest row of the config's own model (HDML or baseline) with what it includes."""
    best = {}
    for r in rows:
        if r["kind"] == "step":
            total, included = expected_run_seconds(
                config, facts, r["ms"] / 1e3, r["forward_s_per_image"], rates["jpeg"],
                rates["cached"])
            r["expected_s"] = total
            if r["model"] == ("HDML" if config.model.hdml else "baseline"):
                if not best or total < best["expected_s"]:
                    best = dict(r, included=included)
    return best


def _print_table(rows, batch_size, device_type, out):
    memory = "GPU peak" if device_type == "GPU" else "peak RSS"
    out("")
    out(f"| measurement | precision | ms/step | images/s | HDML/baseline | skipped "
        f"| {memory} GiB | expected full run |")
    out("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ips = batch_size / (r["ms"] / 1e3)
        if r["kind"] == "step":
            ratio = f"{r['ratio']:.3f}" if "ratio" in r else "-"
            out(f"| {r['model']} step | {r['variant']} | {r['ms']:.2f} | {ips:.1f} | {ratio} "
                f"| {r['skipped']}/{r['steps_run']} | {r['peak_bytes'] / 2**30:.2f} "
                f"| {_hms(r['expected_s'])} |")
        else:
            out(f"| {r['model']} | {r['variant']} | {r['ms']:.2f} | {ips:.1f} | - | - | - "
                f"| - |")
    out("")


def _print_notes(config, best, rates, device_type, load_start, out):
    d = config.data
    if best:
        out(f"expected full run of {config.name} ({'HDML' if config.model.hdml else 'baseline'}"
            f", data.cache={d.cache}): {_hms(best['expected_s'])} at {best['variant']} "
            f"({best['included']}; not included: start-up, retrieval scoring, checkpoints, "
            f"export)")
    out(f"pipeline: {rates['images']} generated JPEGs, decoded cache {rates['cached']:.0f} vs "
        f"JPEG decoding {rates['jpeg']:.0f} images/s = {rates['cached'] / rates['jpeg']:.1f}x "
        f"(building the cache took {rates['cache_build_s']:.1f} s); use --set data.cache=true "
        f"when the JPEG rate is below the step's images/s")
    memory = "GPU peak" if device_type == "GPU" else "peak RSS"
    source = ("tf.config.experimental.get_memory_info" if device_type == "GPU"
              else "the process's peak resident set, cumulative down the table")
    out(f"memory: {memory} ({source}); "
        f"skipped = non-finite steps of the steps run (warm-up included); "
        f"load average {load_start:.1f} at start, {load_average():.1f} at the end")


def bench_config(spec, overrides=(), smoke=False):
    """The config ``hdml-tf bench`` measures: a preset name or JSON file, then (with
    ``smoke``) :data:`SMOKE_OVERRIDES`, then the user's overrides.

    Raises:
        hdml_tf.config.ConfigError: unknown preset, bad override or invalid config.
    """

    overrides = list(overrides)
    if smoke:
        # Four tuples: 8 images for N-pair, 12 for triplet.
        size = 4 * params.tuple_size(config_lib.load_config(spec).model.loss)
        overrides = SMOKE_OVERRIDES + [f"data.batch_size={size}"] + overrides
    return config_lib.load_config(spec, overrides, smoke=smoke)
