"""The tf.data pipelines: seeded training batches from a sampler, and the evaluation pipeline.

Training (``training_pipeline``; ``npair_dataset``, ``triplet_dataset`` and
``m_per_class_dataset`` name its three layouts): find the undecodable images first
(``hdml_tf.data.corrupt_images``), build the sampler (``hdml_tf.data.samplers``)
without them, then index batches from the sampler -> one inner dataset per batch
that decodes and augments its images in parallel -> normalise -> structure.
``eval_dataset`` is the ordered, unaugmented pipeline for computing embeddings.

Batch structures (what ``hdml_tf.models.HDML.train_step`` consumes):

* N-pair: ``((anchors, positives), (anchor_labels, positive_labels))``; images
  float32 (P, H, W, 3), labels int32 (P,); the P anchors are of P distinct classes
  and ``positives[i]`` is another image of ``anchors[i]``'s class.
* Triplet: ``((anchors, positives, negatives), (anchor_labels, positive_labels,
  negative_labels))``, T each, anchors of distinct classes, negatives of another class.
* m per class: ``(images, labels)``, K classes x m images, grouped by class.

The nested layout is deliberate: ``tf.distribute`` splits every leaf along its first
axis, so replica r receives anchors[r*P/R:(r+1)*P/R] together with the *matching*
positives. A flat ``[anchors; positives]`` batch would be split into replica 0 =
anchors, replica 1 = positives, silently breaking the pairs. Choose P (or T, K)
divisible by the number of replicas.
"""

from __future__ import annotations

import warnings

import numpy as np
import tensorflow as tf

from hdml_tf.data import corrupt_images, decoded_cache, preprocess, samplers
from hdml_tf.data.base import DataWarning, ImageDataset

AUTOTUNE = tf.data.AUTOTUNE


# The authors' sizes (resize 256, random crop 227): GoogLeNet at the paper's resolution.
SPEC_RESIZE, SPEC_CROP = 256, 227
# Warn when the pipeline enlarges the images by more than this per side.
_UPSAMPLING_WARNING = 2.0
_HEADER_SAMPLE = 16  # files whose header gives the typical size of a file dataset


def image_sizes(data: ImageDataset, preprocessing=None, resize="auto", crop="auto",
                what="pipeline", stacklevel=1):
    """``(resize, crop)`` for a pipeline over ``data``: given, or following the model
    and the data.

    ``"auto"`` (the pipelines' default): ``crop`` is the input size the backbone was
    built for when ``preprocessing`` is a built backbone of a fixed size, else the
    images' own size when they are pixels in memory (Fashion-MNIST: 28), else the
    authors' 227; ``resize`` is ``crop`` scaled by their 256 / 227 (28 -> 32). Either
    way, a resize that enlarges the data's images by more than 2x per side warns once,
    naming the factor: it costs time (28 px to 256 px is 84x the pixels) and adds no
    information.

    Args:
      data: the ImageDataset the pipeline reads.
      preprocessing: a backbone object, a backbone name or a ``normalize`` mode.
      resize, crop: int, (H, W), None (keep the stored size / no crop) or "auto".
      what: the pipeline's name, for the warning.
      stacklevel: the warning names the caller this many frames above the caller.

    Returns:
      ``(resize, crop)`` as the pipeline's transforms take them.
    """
    if crop == "auto":
        crop = _backbone_size(preprocessing) or _stored_size(data) or SPEC_CROP
        crop = crop[0] if isinstance(crop, tuple) and crop[0] == crop[1] else crop
    if resize == "auto" and crop is None:
        resize = SPEC_RESIZE
    elif resize == "auto":
        resize = tuple(round(c * SPEC_RESIZE / SPEC_CROP) for c in preprocess.size_pair(crop))
        resize = resize[0] if isinstance(crop, int) else resize
    message = _upsampling(data, resize)
    if message:
        warnings.warn(f"{what}: {message}", DataWarning, stacklevel=stacklevel + 1)
    return resize, crop


def _backbone_size(backbone):
    """(H, W) a built backbone takes, if it was built for one fixed size."""
    build = getattr(backbone, "get_build_config", None)
    shape = (build() or {}).get("input_shape") if callable(build) else None
    if shape is None or len(shape) != 4 or None in tuple(shape)[1:3]:
        return None
    return (int(shape[1]), int(shape[2]))


def _stored_size(data):
    """(H, W) of in-memory pixels, else None."""
    if data.images is None:
        return None
    return (int(data.images.shape[1]), int(data.images.shape[2]))


def _typical_size(data):
    """(H, W) of the data's images: the pixels' shape, else the median of the sizes
    the first files' headers declare (None when no header can be read)."""
    stored = _stored_size(data)
    if stored or len(data) == 0:
        return stored
    if data.encoded is not None:
        heads = [bytes(c[:65536]) for c in data.encoded[:_HEADER_SAMPLE]]
    else:
        heads = []
        for path in data.paths[:_HEADER_SAMPLE]:
            try:
                with open(path, "rb") as f:
                    heads.append(f.read(65536))
            except OSError:
                continue
    sizes = [s for s in preprocess.encoded_image_size(tf.constant(heads, tf.string))
             .numpy().tolist() if min(s) > 0] if heads else []
    return tuple(int(v) for v in np.median(sizes, axis=0)) if sizes else None


def _upsampling(data, resize):
    """What to say when ``resize`` enlarges the data's images by over 2x, else None."""
    size = _typical_size(data) if resize is not None else None
    if size is None:
        return None
    target = preprocess.size_pair(resize)
    factor = max(t / s for t, s in zip(target, size))
    if factor <= _UPSAMPLING_WARNING:
        return None
    return (f"the {size[0]}x{size[1]} images of {data.name!r} are resized to "
            f"{target[0]}x{target[1]} ({factor:.1f}x per side, {factor ** 2:.0f}x the pixels "
            f"to compute on); pass resize= and crop= near their size (e.g. resize="
            f"{round(size[0] * SPEC_RESIZE / SPEC_CROP)}, crop={size[0]}) or a backbone built "
            "for it")


def training_pipeline(data: ImageDataset, layout: str, per_batch: int, *,
                      images_per_class: int | None = None, sampler: str = "queue",
                      seed: int = 0, resize="auto", crop="auto", flip: bool = True,
                      preprocessing="caffe", cache=False, strict: bool = False,
                      num_parallel_calls=AUTOTUNE,
                      prefetch=AUTOTUNE, start_batch: int = 0) -> tf.data.Dataset:
    """Infinite, seeded training batches: a pure function of (seed, batch number, files).

    Args:
        data: an ImageDataset (``load_dataset(...)``), usually the "train" split.
        layout, per_batch, images_per_class, sampler: the batches
            (``samplers.make_sampler``): "npair" with P = per_batch (official HDML:
            64, i.e. 128 images), "triplet" with T = per_batch (40, 120 images), or
            "m_per_class" with K = per_batch classes x images_per_class; sampler
            "queue" or "authors" (``AuthorsSampler``, the authors' code).
        seed: fixes the class/image draw and the augmentation: the same seed gives
            the same batches, pixel for pixel.
        resize: int or (H, W) resize before cropping (256 in the authors' code); None to keep
            the stored size (images must then share one size); "auto" (default):
            ``crop`` scaled by 256 / 227 (see ``image_sizes``).
        crop: int or (h, w) random crop (227 in the authors' code); None for no crop; "auto"
            (default): the backbone's input size, else the images' own size when in
            memory, else 227 (``image_sizes``). A resize that enlarges the images by
            more than 2x per side warns, naming the factor.
        flip: random horizontal flips.
        preprocessing: ``normalize`` mode, backbone name or backbone object
            (``backbone.preprocessing``), e.g. "caffe" for inception_v1.
        cache: decode and resize every image once before training (uint8, N *
            resize^2 * 3 bytes), so an epoch only crops, flips and normalises. True
            (or "auto") keeps the pixels in memory when they fit the budget, else on
            disk; "memory" / "disk" force one (``hdml_tf.data.decoded_cache``).
            Without the cache every image is still decoded once before the first
            batch, to find the undecodable ones (``corrupt_images.scan``).
        strict: raise (naming the file) on an undecodable image instead of skipping.
        num_parallel_calls, prefetch: tf.data tuning (AUTOTUNE by default).
        start_batch: begin at this batch of the seeded stream (resuming training):
            the result equals the stream from batch 0 with ``start_batch`` batches
            skipped, without decoding them.

    Returns:
        tf.data.Dataset of the layout's batches (module docstring), images float32
        (batch, crop, crop, 3), labels int32.
    """
    mode = preprocess.preprocessing_mode(preprocessing)
    resize, crop = image_sizes(data, preprocessing, resize, crop, what=f"{layout} batches",
                               stacklevel=3)  # the caller of npair_dataset & co.

    def make(exclude=None):
        return samplers.make_sampler(layout, data.labels, per_batch,
                                     images_per_class=images_per_class, kind=sampler,
                                     seed=seed, class_names=data.class_names, exclude=exclude)

    stream = make()  # checks the arguments before any image is decoded
    source, bad = _decodable(data, resize, cache, strict, num_parallel_calls)
    if bad:
        stream = _without(stream, make, bad, data.class_names)
    return _batches(data, source, stream, resize=None if cache else resize, crop=crop,
                    flip=flip, mode=mode, seed=seed,
                    num_parallel_calls=num_parallel_calls, prefetch=prefetch,
                    start_batch=start_batch)


def npair_dataset(data: ImageDataset, num_pairs: int, **options) -> tf.data.Dataset:
    """Infinite, seeded N-pair batches for HDML (official HDML: P = 64, 128 images).

    Args:
        num_pairs: P, distinct classes per batch; under ``tf.distribute`` choose P
            divisible by the number of replicas.
        data, **options: as ``training_pipeline``.

    Returns:
        tf.data.Dataset of ``((anchors, positives), (anchor_labels, positive_labels))``:
        float32 (P, crop, crop, 3) and int32 (P,).
    """
    return training_pipeline(data, "npair", num_pairs, **options)


def triplet_dataset(data: ImageDataset, num_triplets: int, **options) -> tf.data.Dataset:
    """Infinite, seeded triplet batches (official HDML triplet: T = 40, 120 images).

    Args:
        num_triplets: T.
        data, **options: as ``training_pipeline``.

    Returns:
        tf.data.Dataset of ``((anchors, positives, negatives), (anchor_labels,
        positive_labels, negative_labels))``: float32 (T, crop, crop, 3), int32 (T,).
    """
    return training_pipeline(data, "triplet", num_triplets, **options)


def m_per_class_dataset(data: ImageDataset, classes_per_batch: int, images_per_class: int,
                        **options) -> tf.data.Dataset:
    """Infinite, seeded batches of K classes x m images (semi-hard / lifted losses).

    Args:
        classes_per_batch, images_per_class: K and m.
        data, **options: as ``training_pipeline`` (the queue sampler only).

    Returns:
        tf.data.Dataset of ``(images, labels)``: float32 (K*m, crop, crop, 3), int32
        (K*m,), class k in rows k*m .. k*m + m - 1.
    """
    return training_pipeline(data, "m_per_class", classes_per_batch,
                             images_per_class=images_per_class, **options)


def _decodable(data, resize, cache, strict, num_parallel_calls):
    """The source the batches read and the undecodable images, found now, before any
    batch is drawn: by decoding every image once, or by building the decoded cache."""
    files = corrupt_images.ImageSource(data)
    if not cache:
        return files, corrupt_images.scan(files, strict=strict,
                                          num_parallel_calls=num_parallel_calls)
    cached = decoded_cache.build(files, resize, strict=strict,
                                 storage="auto" if cache is True else cache,
                                 num_parallel_calls=num_parallel_calls)
    return cached, frozenset(cached.bad)


def _without(stream, make, bad, class_names):
    """``make(bad)``, naming the classes the undecodable images left with < 2 images
    (``stream``, the sampler over every image, named the others already)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        kept = make(bad)
    lost = sorted(set(stream.classes.tolist()) - set(kept.classes.tolist()))
    if lost:
        warnings.warn(f"{len(lost)} class(es) with fewer than 2 decodable images left out of "
                      f"training batches: {[class_names[c] for c in lost]}", DataWarning,
                      stacklevel=4)
    return kept


def _flat(group) -> np.ndarray:
    return np.concatenate(group) if isinstance(group, tuple) else group


def _structure(groups):
    """(images, labels) of a whole batch -> the layout's structure (module docstring)."""
    if groups is None:
        return lambda images, labels: (images, labels)

    def split(images, labels):
        return tuple(tf.split(images, groups)), tuple(tf.split(labels, groups))

    return split


def _batches(data, source, sampler, *, resize, crop, flip, mode, seed, num_parallel_calls,
             prefetch, start_batch):
    """Index batches -> per-batch inner datasets that decode and augment in parallel ->
    normalise -> structure."""
    labels_t = tf.constant(data.labels, tf.int32)
    batch_size = sampler.batch_size

    def indices():
        for b, group in enumerate(sampler):
            # Resuming: drawing indices is cheap numpy, so the skipped batches cost no
            # decoding, and b keeps counting so augmentation seeds stay the same.
            if b >= start_batch:
                yield np.int64(b), _flat(group)

    ds = tf.data.Dataset.from_generator(indices, output_signature=(
        tf.TensorSpec((), tf.int64), tf.TensorSpec((batch_size,), tf.int64)))

    def load_one(index, counter):
        # Stateless per-image seeds (seed, running image number) make augmentation
        # reproducible whatever order the parallel map finishes in.
        image = preprocess.train_transform(
            source.load(index), resize=resize, crop=crop, flip=flip,
            seed=tf.stack([tf.constant(seed, tf.int64), counter]))
        return image, tf.gather(labels_t, index)

    def decode_batch(b, idx):
        counters = b * batch_size + tf.range(batch_size, dtype=tf.int64)
        inner = tf.data.Dataset.from_tensor_slices((idx, counters))
        inner = inner.map(load_one, num_parallel_calls=num_parallel_calls, deterministic=True)
        return inner.batch(batch_size, drop_remainder=True).map(lambda x, y: (b, x, y))

    # Two batches in flight keep both cores busy across batch boundaries.
    ds = ds.interleave(decode_batch, cycle_length=2, block_length=1,
                       num_parallel_calls=2, deterministic=True)
    if source.can_fail:
        # Every image decoded in the scan: a failure now is an error naming the file.
        tracker = corrupt_images.Tracker(source, True, lambda b: _flat(sampler.batch(b)),
                                         scanned=True, first=start_batch)
        ds = ds.ignore_errors().map(lambda b, x, y: (tracker.check(b), x, y))
    structure = _structure(sampler.groups)
    ds = ds.map(lambda b, images, labels: structure(preprocess.normalize(images, mode), labels),
                num_parallel_calls=num_parallel_calls, deterministic=True)
    return ds.prefetch(prefetch)


def _sentinel_image(size):
    """A black image big enough to pass the transforms (for end-of-data sentinels)."""
    h, w = (size, size) if isinstance(size, int) else (size if size is not None else (1, 1))
    return tf.zeros([h, w, 3], tf.uint8)


def eval_dataset(
    data: ImageDataset,
    batch_size: int = 128,
    *,
    resize="auto",
    crop="auto",
    preprocessing="caffe",
    crop_rounding: str = "floor",
    strict: bool = False,
    num_parallel_calls=AUTOTUNE,
    prefetch=AUTOTUNE,
) -> tf.data.Dataset:
    """Every image of ``data`` once, in order: resize, centre crop, normalise.

    Undecodable images are skipped (named in a warning and in ``data.skipped``), so
    use the labels this dataset yields, not ``data.labels``, to score retrieval.

    Args:
        data: an ImageDataset, usually a "test", "val", "query" or "gallery" split.
        batch_size: images per batch.
        resize, crop: resize to ``resize`` then take the centre ``crop`` (the authors': 256,
            227); with both None the stored images must share one size; "auto"
            (default) as in ``training_pipeline`` (``image_sizes``).
        preprocessing: ``normalize`` mode, backbone name or backbone object.
        crop_rounding: the centre crop's offset rounding (``preprocess.center_crop``).
        strict: as for ``training_pipeline``.
        num_parallel_calls, prefetch: tf.data tuning.

    Returns:
        tf.data.Dataset of ``(images, labels)``: float32 (<=batch_size, crop, crop, 3),
        int32; the last batch may be smaller.
    """
    mode = preprocess.preprocessing_mode(preprocessing)
    resize, crop = image_sizes(data, preprocessing, resize, crop, what="eval_dataset",
                               stacklevel=2)
    source = corrupt_images.ImageSource(data)
    labels_t = tf.constant(data.labels, tf.int32)
    n = len(data)

    def load_one(index):
        if source.can_fail:
            # index n is a sentinel that lets the tracker notice a bad last image
            image = tf.cond(index < n, lambda: source.load(tf.minimum(index, n - 1)),
                            lambda: _sentinel_image(crop or resize))
        else:
            image = source.load(index)
        image = preprocess.eval_transform(image, resize=resize, crop=crop,
                                          crop_rounding=crop_rounding)
        label = tf.gather(labels_t, tf.minimum(index, n - 1))
        return index, preprocess.normalize(image, mode), label

    count = n + 1 if source.can_fail else n
    ds = tf.data.Dataset.range(count).map(load_one, num_parallel_calls=num_parallel_calls,
                                          deterministic=True)
    if source.can_fail:
        tracker = corrupt_images.Tracker(source, strict, lambda j: (j,))
        ds = ds.ignore_errors().map(lambda i, x, y: (tracker.check(i), x, y))
        ds = ds.filter(lambda i, x, y: i < n)
    ds = ds.map(lambda i, x, y: (x, y))
    return ds.batch(batch_size).prefetch(prefetch)
