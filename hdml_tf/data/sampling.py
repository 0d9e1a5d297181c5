"""Class-balanced training batches for HDML, and the evaluation input pipeline.

Two layers:

* Samplers (pure numpy, seeded): infinite streams of image *indices* laid out as
  N-pair, triplet or "m per class" batches.
* ``npair_dataset``, ``triplet_dataset``, ``m_per_class_dataset``: tf.data pipelines
  that turn those indices into decoded, augmented, normalised images, decoding in
  parallel, with AUTOTUNE and prefetch. ``eval_dataset`` is the ordered, unaugmented
  pipeline for computing embeddings.

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

Bad images (``hdml_tf.data.corrupt_images``): every training image is decoded once
before the sampler is built (with ``cache=True``, building the decoded cache is that
pass). An undecodable one does not stop training: it is recorded in ``data.skipped``
(path -> reason), named in a ``CorruptImageWarning``, and the sampler is built
without it, so the batches stay a pure function of (seed, batch number, the files),
resumed or not. With ``strict=True`` the pipeline raises instead, naming the file.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Iterator

import numpy as np
import tensorflow as tf

from hdml_tf.data import corrupt_images, decoded_cache, preprocess
from hdml_tf.data.base import DataWarning, ImageDataset

AUTOTUNE = tf.data.AUTOTUNE


# ----------------------------------------------------------------------------- samplers


class _ClassPools:
    """Per-class image queues shared by the samplers.

    Classes with fewer than ``min_images`` usable images are left out, with one
    warning that lists them. Each class's images are drawn from a shuffled queue,
    so every image is used before any is repeated; classes are drawn the same way.
    """

    def __init__(self, labels, rng, class_names=None, min_images=2, exclude=None):
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
        self.rng = rng
        self.exclude = exclude if exclude is not None else set()
        self.min_images = min_images
        classes, counts = np.unique(labels, return_counts=True)
        small = classes[counts < min_images]
        if len(small):
            names = [class_names[c] if class_names is not None else str(c) for c in small]
            warnings.warn(
                f"{len(small)} class(es) with fewer than {min_images} images left out of "
                f"training batches: {names}",
                DataWarning,
                stacklevel=3,
            )
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], classes)
        members = np.split(order, bounds[1:])
        self.members = {int(c): m for c, m in zip(classes, members) if len(m) >= min_images}
        self.classes = np.array(sorted(self.members), dtype=np.int64)
        self._image_queues = {c: [] for c in self.members}
        self._class_queue: list = []

    def usable(self, c) -> np.ndarray:
        m = self.members[c]
        if self.exclude:
            m = np.array([i for i in m if int(i) not in self.exclude], dtype=np.int64)
        return m

    def next_classes(self, k: int, avoid=()) -> list:
        """k distinct classes (none in ``avoid``), from a reshuffled-when-empty queue."""
        out: list = []
        avoid = set(avoid)
        refills = 0
        while len(out) < k:
            if not self._class_queue:
                refills += 1
                if refills > 2:
                    raise ValueError(
                        f"cannot draw {k} distinct classes with >= {self.min_images} usable "
                        f"images; only {len(self.classes)} such classes exist"
                    )
                self._class_queue = list(self.rng.permutation(self.classes))
            c = int(self._class_queue.pop())
            if c in out or c in avoid:
                continue
            if self.exclude and len(self.usable(c)) < self.min_images:
                continue  # lost images to decoding errors
            out.append(c)
        return out

    def next_images(self, c: int, n: int) -> list:
        """n images of class c, distinct when the class has at least n."""
        pool = self.usable(c)
        q = self._image_queues[c]
        if self.exclude:
            q = [i for i in q if i not in self.exclude]
        out: list = []
        while len(out) < n:
            if not q:
                fresh = [int(i) for i in self.rng.permutation(pool) if int(i) not in out]
                if not fresh:  # fewer images than n: repeat (m-per-class only)
                    fresh = [int(i) for i in self.rng.permutation(pool)]
                q = fresh
            out.append(q.pop())
        self._image_queues[c] = q
        return out


class NPairSampler:
    """Infinite N-pair index batches: P distinct classes, one anchor + one positive each.

    Args:
        labels: int array (N,) of class labels.
        num_pairs: P, classes per batch (batch holds 2P images).
        seed: the stream is a function of ``seed`` alone: iterating twice gives the
            same batches.
        class_names: optional names for the warning about left-out classes.
        exclude: optional live set of image indices never to draw (bad files).

    Yields:
        int64 arrays (anchors (P,), positives (P,)).
    """

    def __init__(self, labels, num_pairs: int, seed: int = 0, class_names=None, exclude=None):
        self.labels = np.asarray(labels)
        self.num_pairs = int(num_pairs)
        self.seed = seed
        self.class_names = class_names
        self.exclude = exclude
        pools = _ClassPools(self.labels, np.random.default_rng(seed), class_names, 2, exclude)
        if self.num_pairs < 1 or self.num_pairs > len(pools.classes):
            raise ValueError(f"num_pairs={num_pairs} needs that many classes with >= 2 images; "
                             f"there are {len(pools.classes)}")

    def __iter__(self) -> Iterator:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)  # already warned in __init__
            pools = _ClassPools(self.labels, np.random.default_rng(self.seed), self.class_names,
                                2, self.exclude)
        while True:
            classes = pools.next_classes(self.num_pairs)
            pairs = np.array([pools.next_images(c, 2) for c in classes], dtype=np.int64)
            yield pairs[:, 0], pairs[:, 1]


class TripletSampler:
    """Infinite triplet index batches: T anchors of distinct classes, a positive of the
    anchor's class and a negative of a different class for each.

    Args and determinism as ``NPairSampler``; ``num_triplets`` is T.

    Yields:
        int64 arrays (anchors (T,), positives (T,), negatives (T,)).
    """

    def __init__(self, labels, num_triplets: int, seed: int = 0, class_names=None, exclude=None):
        self.labels = np.asarray(labels)
        self.num_triplets = int(num_triplets)
        self.seed = seed
        self.class_names = class_names
        self.exclude = exclude
        pools = _ClassPools(self.labels, np.random.default_rng(seed), class_names, 2, exclude)
        if len(pools.classes) < 2 or not 1 <= self.num_triplets <= len(pools.classes):
            raise ValueError(f"num_triplets={num_triplets} needs that many (and >= 2) classes "
                             f"with >= 2 images; there are {len(pools.classes)}")

    def __iter__(self) -> Iterator:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)
            pools = _ClassPools(self.labels, np.random.default_rng(self.seed), self.class_names,
                                2, self.exclude)
        rng = pools.rng
        while True:
            classes = pools.next_classes(self.num_triplets)
            a, p, n = [], [], []
            for c in classes:
                i, j = pools.next_images(c, 2)
                others = pools.classes[pools.classes != c]
                if pools.exclude:  # classes whose every image failed to decode
                    others = np.array([o for o in others if len(pools.usable(int(o)))], np.int64)
                neg_class = int(others[rng.integers(len(others))])
                a.append(i)
                p.append(j)
                n.append(pools.next_images(neg_class, 1)[0])
            yield np.array(a, np.int64), np.array(p, np.int64), np.array(n, np.int64)


class AuthorsSampler:
    """The HDML authors' batches (``datasets/data_provider.py``), drawn afresh per batch.

    N-pair (``groups=2``): P classes drawn without replacement, then two distinct
    images of each (``NPairLossScheme``). Triplet (``groups=3``): 2T distinct classes;
    triplet t takes two images of class t and one of class T + t, so no negative shares
    a class with any anchor of the batch (``TripletLossScheme``). Batches are drawn
    independently of each other: batch b uses a generator seeded with (seed, b), so it
    is a pure function of seed and batch number (their code used the global numpy and
    ``random`` states).

    Args:
        labels: int array (N,) of class labels.
        per_batch: P (N-pair) or T (triplet).
        groups: 2 (N-pair) or 3 (triplet).
        seed, class_names, exclude: as ``NPairSampler``.

    Yields:
        int64 arrays, one per group: anchors, positives[, negatives].
    """

    def __init__(self, labels, per_batch: int, groups: int = 2, seed: int = 0,
                 class_names=None, exclude=None):
        self.labels = np.asarray(labels)
        self.per_batch, self.groups, self.seed = int(per_batch), int(groups), seed
        self.exclude = exclude
        pools = _ClassPools(self.labels, np.random.default_rng(seed), class_names, 2, exclude)
        self.classes = pools.classes
        self._members = {int(c): np.flatnonzero(self.labels == c) for c in self.classes}
        need = self.per_batch * (groups - 1)
        if self.per_batch < 1 or need > len(self.classes):
            raise ValueError(f"{self.per_batch} {'pairs' if groups == 2 else 'triplets'} a "
                             f"batch need {need} classes with >= 2 images; there are "
                             f"{len(self.classes)}")

    def _usable(self, c):
        members = self._members[c]
        if self.exclude:
            members = np.array([i for i in members if int(i) not in self.exclude], np.int64)
        return members

    def batch(self, index: int):
        """Batch ``index`` of the stream."""
        rng = np.random.default_rng((int(self.seed), int(index)))
        classes = self.classes
        if self.exclude:  # only then can a class have lost images (a scan per batch)
            classes = [int(c) for c in classes if len(self._usable(int(c))) >= 2]
        chosen = rng.choice(classes, self.per_batch * (self.groups - 1), replace=False)
        pairs = np.array([rng.choice(self._usable(int(c)), 2, replace=False)
                          for c in chosen[:self.per_batch]], np.int64)
        out = [pairs[:, 0], pairs[:, 1]]
        if self.groups == 3:
            out.append(np.array([rng.choice(self._usable(int(c)))
                                 for c in chosen[self.per_batch:]], np.int64))
        return tuple(out)

    def __iter__(self) -> Iterator:
        index = 0
        while True:
            yield self.batch(index)
            index += 1


class MPerClassSampler:
    """Infinite batches of K classes x m images, grouped by class.

    Classes with fewer than 2 images are left out; a class with fewer than m images
    repeats some of them.

    Yields:
        int64 array (K * m,): class k occupies rows k*m .. k*m + m - 1.
    """

    def __init__(self, labels, classes_per_batch: int, images_per_class: int, seed: int = 0,
                 class_names=None, exclude=None):
        self.labels = np.asarray(labels)
        self.k = int(classes_per_batch)
        self.m = int(images_per_class)
        self.seed = seed
        self.class_names = class_names
        self.exclude = exclude
        pools = _ClassPools(self.labels, np.random.default_rng(seed), class_names, 2, exclude)
        if self.m < 2 or not 1 <= self.k <= len(pools.classes):
            raise ValueError(f"need images_per_class >= 2 and 1 <= classes_per_batch <= "
                             f"{len(pools.classes)} (classes with >= 2 images)")

    def __iter__(self) -> Iterator:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)
            pools = _ClassPools(self.labels, np.random.default_rng(self.seed), self.class_names,
                                2, self.exclude)
        while True:
            classes = pools.next_classes(self.k)
            yield np.array([i for c in classes for i in pools.next_images(c, self.m)], np.int64)


def _sentinel_image(size):
    """A black image big enough to pass the transforms (for end-of-data sentinels)."""
    h, w = (size, size) if isinstance(size, int) else (size if size is not None else (1, 1))
    return tf.zeros([h, w, 3], tf.uint8)


def _training_pipeline(
    data: ImageDataset,
    make_sampler,
    batch_size: int,
    structure,
    *,
    resize,
    crop,
    flip: bool,
    preprocessing,
    seed: int,
    cache: bool,
    strict: bool,
    num_parallel_calls,
    prefetch,
    start_batch: int = 0,
):
    """Shared tf.data plumbing: find the undecodable images, build the sampler
    (``make_sampler(exclude)``) without them, then sampled index batches -> per-batch
    inner dataset that decodes and augments its images in parallel -> normalise ->
    structure."""
    mode = preprocess.preprocessing_mode(preprocessing)
    sampler = make_sampler(frozenset())  # checks the arguments before any image is decoded
    files = corrupt_images.ImageSource(data)
    resize_now = resize
    if cache:
        # Decoded once, up front (hdml_tf/data/decoded_cache.py): that pass finds the
        # bad files.
        source = decoded_cache.build(
            files, resize, strict=strict, storage="auto" if cache is True else cache,
            num_parallel_calls=num_parallel_calls)
        bad = frozenset(source.bad)
        resize_now = None  # already at the resize size
    else:
        source = files
        bad = corrupt_images.scan(files, strict=strict, num_parallel_calls=num_parallel_calls)
    if bad:
        # Decided before the first batch, so the stream is a pure function of (seed,
        # batch number, the files); the left-out classes were named above already.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)
            sampler = make_sampler(bad)
    labels_t = tf.constant(data.labels, tf.int32)

    def flat(group):
        return np.concatenate(group) if isinstance(group, tuple) else group

    def indices():
        for b, group in enumerate(sampler):
            # Resuming: drawing indices is cheap numpy, so the skipped batches cost no
            # decoding, and b keeps counting so augmentation seeds stay the same.
            if b >= start_batch:
                yield np.int64(b), flat(group)

    ds = tf.data.Dataset.from_generator(indices, output_signature=(
        tf.TensorSpec((), tf.int64), tf.TensorSpec((batch_size,), tf.int64)))

    def load_one(index, counter):
        # Stateless per-image seeds (seed, running image number) make augmentation
        # reproducible whatever order the parallel map finishes in.
        image = preprocess.train_transform(
            source.load(index), resize=resize_now, crop=crop, flip=flip,
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
        tracker = corrupt_images.Tracker(
            source, True, lambda b: flat(next(itertools.islice(iter(sampler), b, None))),
            scanned=True, first=start_batch)
        ds = ds.ignore_errors().map(lambda b, x, y: (tracker.check(b), x, y))
    ds = ds.map(lambda b, images, labels: structure(preprocess.normalize(images, mode), labels),
                num_parallel_calls=num_parallel_calls, deterministic=True)
    return ds.prefetch(prefetch)


def _split(n_groups):
    def structure(images, labels):
        imgs = tuple(tf.split(images, n_groups))
        labs = tuple(tf.split(labels, n_groups))
        return imgs, labs

    return structure


def _tuple_sampler(kind, data, per_batch, groups, seed):
    """exclude -> the sampler named by ``kind`` ("queue" or "authors") for N-pair /
    triplet."""
    if kind not in ("queue", "authors"):
        raise ValueError(f"sampler={kind!r}: expected 'queue' or 'authors'")

    def make(exclude):
        common = dict(seed=seed, class_names=data.class_names, exclude=exclude)
        if kind == "authors":
            return AuthorsSampler(data.labels, per_batch, groups, **common)
        cls = NPairSampler if groups == 2 else TripletSampler
        return cls(data.labels, per_batch, **common)

    return make


def npair_dataset(
    data: ImageDataset,
    num_pairs: int,
    *,
    seed: int = 0,
    resize=256,
    crop=227,
    flip: bool = True,
    preprocessing="caffe",
    cache: bool = False,
    strict: bool = False,
    skip_corrupt: bool | None = None,
    num_parallel_calls=AUTOTUNE,
    prefetch=AUTOTUNE,
    start_batch: int = 0,
    sampler: str = "queue",
) -> tf.data.Dataset:
    """Infinite, seeded N-pair batches for HDML.

    Args:
        data: an ImageDataset (``load_dataset(...)``), usually the "train" split.
        num_pairs: P, distinct classes per batch (official HDML: 64, i.e. 128 images).
            Under ``tf.distribute`` choose P divisible by the number of replicas.
        seed: fixes the class/image draw and the augmentation: the same seed gives
            the same batches, pixel for pixel.
        resize: int or (H, W) resize before cropping (256 in the spec); None to keep
            the stored size (images must then share one size).
        crop: int or (h, w) random crop (227 in the spec); None for no crop.
        flip: random horizontal flips.
        preprocessing: ``normalize`` mode, backbone name or backbone object
            (``backbone.preprocessing``), e.g. "caffe" for inception_v1.
        cache: decode and resize every image once before training (uint8, N *
            resize^2 * 3 bytes), so an epoch only crops, flips and normalises. True
            (or "auto") keeps the pixels in memory when they fit the budget, else on
            disk; "memory" / "disk" force one
            (``hdml_tf.data.decoded_cache``). Without the cache every image is
            still decoded once before the first batch, to find the undecodable ones
            (``corrupt_images.scan``).
        strict: raise (naming the file) on an undecodable image instead of skipping.
        skip_corrupt: alias kept for callers that think in the opposite sense;
            when given, ``strict = not skip_corrupt``.
        num_parallel_calls, prefetch: tf.data tuning (AUTOTUNE by default).
        start_batch: begin at this batch of the seeded stream (resuming training):
            the result equals the stream from batch 0 with ``start_batch`` batches
            skipped, without decoding them.
        sampler: "queue" (classes from a shuffled queue, `NPairSampler` /
            `TripletSampler`) or "authors" (`AuthorsSampler`, the authors' code).

    Returns:
        tf.data.Dataset of ``((anchors, positives), (anchor_labels, positive_labels))``:
        float32 (P, crop, crop, 3) and int32 (P,).
    """
    strict = corrupt_images.strictness(strict, skip_corrupt)
    sampler = _tuple_sampler(sampler, data, num_pairs, 2, seed)
    return _training_pipeline(
        data, sampler, 2 * num_pairs, _split(2), resize=resize, crop=crop, flip=flip,
        preprocessing=preprocessing, seed=seed, cache=cache, strict=strict,
        num_parallel_calls=num_parallel_calls, prefetch=prefetch,
        start_batch=start_batch)


def triplet_dataset(
    data: ImageDataset,
    num_triplets: int,
    *,
    seed: int = 0,
    resize=256,
    crop=227,
    flip: bool = True,
    preprocessing="caffe",
    cache: bool = False,
    strict: bool = False,
    skip_corrupt: bool | None = None,
    num_parallel_calls=AUTOTUNE,
    prefetch=AUTOTUNE,
    start_batch: int = 0,
    sampler: str = "queue",
) -> tf.data.Dataset:
    """Infinite, seeded triplet batches (official HDML triplet: T = 40, 120 images).

    Arguments as ``npair_dataset``, with ``num_triplets`` = T.

    Returns:
        tf.data.Dataset of ``((anchors, positives, negatives), (anchor_labels,
        positive_labels, negative_labels))``: float32 (T, crop, crop, 3), int32 (T,).
    """
    strict = corrupt_images.strictness(strict, skip_corrupt)
    sampler = _tuple_sampler(sampler, data, num_triplets, 3, seed)
    return _training_pipeline(
        data, sampler, 3 * num_triplets, _split(3), resize=resize, crop=crop, flip=flip,
        preprocessing=preprocessing, seed=seed, cache=cache, strict=strict,
        num_parallel_calls=num_parallel_calls, prefetch=prefetch,
        start_batch=start_batch)


def m_per_class_dataset(
    data: ImageDataset,
    classes_per_batch: int,
    images_per_class: int,
    *,
    seed: int = 0,
    resize=256,
    crop=227,
    flip: bool = True,
    preprocessing="caffe",
    cache: bool = False,
    strict: bool = False,
    skip_corrupt: bool | None = None,
    num_parallel_calls=AUTOTUNE,
    prefetch=AUTOTUNE,
    start_batch: int = 0,
) -> tf.data.Dataset:
    """Infinite, seeded batches of K classes x m images (semi-hard / lifted losses).

    Arguments as ``npair_dataset``, with K = ``classes_per_batch`` and
    m = ``images_per_class``.

    Returns:
        tf.data.Dataset of ``(images, labels)``: float32 (K*m, crop, crop, 3), int32
        (K*m,), class k in rows k*m .. k*m + m - 1.
    """
    strict = corrupt_images.strictness(strict, skip_corrupt)

    def sampler(exclude):
        return MPerClassSampler(data.labels, classes_per_batch, images_per_class, seed=seed,
                                class_names=data.class_names, exclude=exclude)

    return _training_pipeline(
        data, sampler, classes_per_batch * images_per_class, lambda x, y: (x, y),
        resize=resize, crop=crop, flip=flip, preprocessing=preprocessing, seed=seed,
        cache=cache, strict=strict, num_parallel_calls=num_parallel_calls, prefetch=prefetch,
        start_batch=start_batch)


def eval_dataset(
    data: ImageDataset,
    batch_size: int = 128,
    *,
    resize=256,
    crop=227,
    preprocessing="caffe",
    strict: bool = False,
    skip_corrupt: bool | None = None,
    num_parallel_calls=AUTOTUNE,
    prefetch=AUTOTUNE,
) -> tf.data.Dataset:
    """Every image of ``data`` once, in order: resize, centre crop, normalise.

    Undecodable images are skipped (named in a warning and in ``data.skipped``), so
    use the labels this dataset yields, not ``data.labels``, to score retrieval.

    Args:
        data: an ImageDataset, usually a "test", "val", "query" or "gallery" split.
        batch_size: images per batch.
        resize, crop: resize to ``resize`` then take the centre ``crop`` (spec: 256,
            227); with both None the stored images must share one size.
        preprocessing: ``normalize`` mode, backbone name or backbone object.
        strict / skip_corrupt: as for ``npair_dataset``.
        num_parallel_calls, prefetch: tf.data tuning.

    Returns:
        tf.data.Dataset of ``(images, labels)``: float32 (<=batch_size, crop, crop, 3),
        int32; the last batch may be smaller.
    """
    strict = corrupt_images.strictness(strict, skip_corrupt)
    mode = preprocess.preprocessing_mode(preprocessing)
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
        image = preprocess.eval_transform(image, resize=resize, crop=crop)
        label = tf.gather(labels_t, tf.minimum(index, n - 1))
        return index, preprocess.normalize(image, mode), label

    if not source.can_fail:
        ds = tf.data.Dataset.range(n).map(load_one, num_parallel_calls=num_parallel_calls,
                                          deterministic=True)
    else:
        tracker = corrupt_images.Tracker(source, strict, lambda j: (j,))
        ds = tf.data.Dataset.range(n + 1).map(load_one, num_parallel_calls=num_parallel_calls,
                                              deterministic=True).ignore_errors()

        def track(i, x, y):
            return tracker.check(i), x, y

        def not_sentinel(i, x, y):
            return i < n

        ds = ds.map(track).filter(not_sentinel)

    def drop_index(i, x, y):
        return x, y

    ds = ds.map(drop_index)
    return ds.batch(batch_size).prefetch(prefetch)
