"""The samplers: seeded, infinite streams of image *indices* laid out as training batches.

Pure numpy. A sampler is built over the images it may draw: the indices in ``exclude``
(images found undecodable before training, ``hdml_tf.data.corrupt_images``) are left
out when it is constructed, so its stream is a pure function of (labels, exclude,
seed, batch number), and iterating it twice gives the same batches.

* ``NPairSampler``: P distinct classes, an anchor and a positive of each.
* ``TripletSampler``: T anchors of distinct classes, a positive of the anchor's class
  and a negative of another class for each.
* ``AuthorsSampler``: the HDML authors' N-pair / triplet draws, batch by batch.
* ``MPerClassSampler``: K classes x m images, grouped by class.

``Sampler`` holds what they share (the class pools, iteration, ``batch(index)``);
each subclass implements one hook, ``_get_examples(draw, index)``, that makes batch
``index`` from ``draw``, the iteration's shuffled class and image queues (the hook's
name is TensorFlow Similarity's).
"""

from __future__ import annotations

import itertools
import warnings
from typing import Iterator

import numpy as np

from hdml_tf.data.base import DataWarning

class _ClassPools:
    """The images of each class a sampler may draw: its members not in ``exclude``.

    Classes with fewer than ``min_images`` such images are left out, with one warning
    that lists them.
    """

    def __init__(self, labels, exclude=frozenset(), class_names=None, min_images=2):
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
        self.min_images = min_images
        order = np.argsort(labels, kind="stable")
        if exclude:
            order = order[~np.isin(order, np.fromiter(exclude, np.int64))]
        classes = np.unique(labels)
        members = np.split(order, np.searchsorted(labels[order], classes)[1:])
        small = [c for c, m in zip(classes, members) if len(m) < min_images]
        if small:
            names = [class_names[c] if class_names is not None else str(c) for c in small]
            usable = " decodable" if exclude else ""
            warnings.warn(
                f"{len(small)} class(es) with fewer than {min_images}{usable} images left out "
                f"of training batches: {names}",
                DataWarning,
                stacklevel=4,
            )
        self.members = {int(c): m for c, m in zip(classes, members) if len(m) >= min_images}
        self.classes = np.array(sorted(self.members), dtype=np.int64)


class _Queues:
    """One iteration's shuffled queues over the pools: every image of a class is used
    before any is repeated, and every class before any class is repeated."""

    def __init__(self, pools: _ClassPools, rng: np.random.Generator):
        self.pools = pools
        self.rng = rng
        self._image_queues = {c: [] for c in pools.members}
        self._class_queue: list = []

    def next_classes(self, k: int) -> list:
        """k distinct classes, from a reshuffled-when-empty queue."""
        out: list = []
        refills = 0
        while len(out) < k:
            if not self._class_queue:
                refills += 1
                if refills > 2:
                    raise ValueError(
                        f"cannot draw {k} distinct classes with >= {self.pools.min_images} "
                        f"usable images; only {len(self.pools.classes)} such classes exist"
                    )
                self._class_queue = list(self.rng.permutation(self.pools.classes))
            c = int(self._class_queue.pop())
            if c not in out:
                out.append(c)
        return out

    def next_images(self, c: int, n: int) -> list:
        """n images of class c, distinct when the class has at least n."""
        pool = self.pools.members[c]
        q = self._image_queues[c]
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


class Sampler:
    """Base of the samplers: an infinite, seeded stream of index batches.

    Args:
        labels: int array (N,) of class labels.
        seed: the stream is a function of ``seed`` (and labels, exclude) alone.
        class_names: optional names for the warning about left-out classes.
        exclude: image indices never to draw (undecodable files), fixed here.

    Attributes:
        classes: the classes drawn from (>= 2 drawable images each), sorted.
        batch_size: images per batch.
        groups: a batch is a tuple of ``groups`` index arrays of batch_size / groups
            each (anchors, positives[, negatives]), or one flat array when None.
    """

    groups: int | None = None
    batch_size: int = 0

    def __init__(self, labels, seed: int = 0, class_names=None, exclude=None):
        self.labels = np.asarray(labels)
        self.seed = seed
        self.class_names = class_names
        self.exclude = frozenset(int(i) for i in (exclude or ()))
        self.pools = _ClassPools(self.labels, self.exclude, class_names)
        self.classes = self.pools.classes

    def __iter__(self) -> Iterator:
        draw = _Queues(self.pools, np.random.default_rng(self.seed))
        for index in itertools.count():
            yield self._get_examples(draw, index)

    def batch(self, index: int):
        """Batch ``index`` of the stream (the queue samplers draw batches 0..index)."""
        return next(itertools.islice(iter(self), int(index), None))

    def _get_examples(self, draw: _Queues, index: int):
        """Batch ``index``; ``draw`` carries the iteration's queues and generator and
        has made batches 0..index-1 already."""
        raise NotImplementedError


class NPairSampler(Sampler):
    """Infinite N-pair index batches: P distinct classes, one anchor + one positive each.

    Args:
        labels, seed, class_names, exclude: as ``Sampler``.
        num_pairs: P, classes per batch (batch holds 2P images).

    Yields:
        int64 arrays (anchors (P,), positives (P,)).
    """

    groups = 2

    def __init__(self, labels, num_pairs: int, seed: int = 0, class_names=None, exclude=None):
        super().__init__(labels, seed, class_names, exclude)
        self.num_pairs = int(num_pairs)
        self.batch_size = 2 * self.num_pairs
        if self.num_pairs < 1 or self.num_pairs > len(self.classes):
            raise ValueError(f"num_pairs={num_pairs} needs that many classes with >= 2 images; "
                             f"there are {len(self.classes)}")

    def _get_examples(self, draw, index):
        classes = draw.next_classes(self.num_pairs)
        pairs = np.array([draw.next_images(c, 2) for c in classes], dtype=np.int64)
        return pairs[:, 0], pairs[:, 1]


class TripletSampler(Sampler):
    """Infinite triplet index batches: T anchors of distinct classes, a positive of the
    anchor's class and a negative of a different class for each.

    Args as ``NPairSampler``; ``num_triplets`` is T.

    Yields:
        int64 arrays (anchors (T,), positives (T,), negatives (T,)).
    """

    groups = 3

    def __init__(self, labels, num_triplets: int, seed: int = 0, class_names=None, exclude=None):
        super().__init__(labels, seed, class_names, exclude)
        self.num_triplets = int(num_triplets)
        self.batch_size = 3 * self.num_triplets
        if len(self.classes) < 2 or not 1 <= self.num_triplets <= len(self.classes):
            raise ValueError(f"num_triplets={num_triplets} needs that many (and >= 2) classes "
                             f"with >= 2 images; there are {len(self.classes)}")

    def _get_examples(self, draw, index):
        a, p, n = [], [], []
        for c in draw.next_classes(self.num_triplets):
            i, j = draw.next_images(c, 2)
            others = self.classes[self.classes != c]
            neg_class = int(others[draw.rng.integers(len(others))])
            a.append(i)
            p.append(j)
            n.append(draw.next_images(neg_class, 1)[0])
        return np.array(a, np.int64), np.array(p, np.int64), np.array(n, np.int64)


class AuthorsSampler(Sampler):
    """The HDML authors' batches (``datasets/data_provider.py``), drawn afresh per batch.

    N-pair (``groups=2``): P classes drawn without replacement, then two distinct
    images of each (``NPairLossScheme``). Triplet (``groups=3``): 2T distinct classes;
    triplet t takes two images of class t and one of class T + t, so no negative shares
    a class with any anchor of the batch (``TripletLossScheme``). Batches are drawn
    independently of each other: batch b uses a generator seeded with (seed, b), so it
    is a pure function of seed and batch number (their code used the global numpy and
    ``random`` states).

    Args:
        labels, seed, class_names, exclude: as ``Sampler``.
        per_batch: P (N-pair) or T (triplet).
        groups: 2 (N-pair) or 3 (triplet).

    Yields:
        int64 arrays, one per group: anchors, positives[, negatives].
    """

    def __init__(self, labels, per_batch: int, groups: int = 2, seed: int = 0,
                 class_names=None, exclude=None):
        super().__init__(labels, seed, class_names, exclude)
        self.per_batch, self.groups = int(per_batch), int(groups)
        self.batch_size = self.per_batch * self.groups
        need = self.per_batch * (self.groups - 1)
        if self.per_batch < 1 or need > len(self.classes):
            raise ValueError(f"{self.per_batch} {'pairs' if groups == 2 else 'triplets'} a "
                             f"batch need {need} classes with >= 2 images; there are "
                             f"{len(self.classes)}")

    def batch(self, index: int):
        """Batch ``index`` of the stream, drawn on its own."""
        rng = np.random.default_rng((int(self.seed), int(index)))
        members = self.pools.members
        chosen = rng.choice(self.classes, self.per_batch * (self.groups - 1), replace=False)
        pairs = np.array([rng.choice(members[int(c)], 2, replace=False)
                          for c in chosen[:self.per_batch]], np.int64)
        out = [pairs[:, 0], pairs[:, 1]]
        if self.groups == 3:
            out.append(np.array([rng.choice(members[int(c)])
                                 for c in chosen[self.per_batch:]], np.int64))
        return tuple(out)

    def _get_examples(self, draw, index):
        return self.batch(index)


class MPerClassSampler(Sampler):
    """Infinite batches of K classes x m images, grouped by class.

    Classes with fewer than 2 images are left out; a class with fewer than m images
    repeats some of them.

    Yields:
        int64 array (K * m,): class k occupies rows k*m .. k*m + m - 1.
    """

    def __init__(self, labels, classes_per_batch: int, images_per_class: int, seed: int = 0,
                 class_names=None, exclude=None):
        super().__init__(labels, seed, class_names, exclude)
        self.k = int(classes_per_batch)
        self.m = int(images_per_class)
        self.batch_size = self.k * self.m
        if self.m < 2 or not 1 <= self.k <= len(self.classes):
            raise ValueError(f"need images_per_class >= 2 and 1 <= classes_per_batch <= "
                             f"{len(self.classes)} (classes with >= 2 images)")

    def _get_examples(self, draw, index):
        classes = draw.next_classes(self.k)
        return np.array([i for c in classes for i in draw.next_images(c, self.m)], np.int64)


LAYOUTS = ("npair", "triplet", "m_per_class")
KINDS = ("queue", "authors")


def make_sampler(layout: str, labels, per_batch: int, *, images_per_class: int | None = None,
                 kind: str = "queue", seed: int = 0, class_names=None, exclude=None) -> Sampler:
    """The sampler for a batch layout.

    Args:
        layout: "npair" (P = ``per_batch`` pairs), "triplet" (T = ``per_batch``) or
            "m_per_class" (K = ``per_batch`` classes x ``images_per_class``).
        kind: "queue" (classes from a shuffled queue: ``NPairSampler``,
            ``TripletSampler``) or "authors" (``AuthorsSampler``); N-pair and triplet.
        labels, seed, class_names, exclude: as ``Sampler``.
    """
    common = dict(seed=seed, class_names=class_names, exclude=exclude)
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: expected one of {LAYOUTS}")
    if kind not in KINDS:
        raise ValueError(f"sampler={kind!r}: expected 'queue' or 'authors'")
    if layout == "m_per_class":
        if kind != "queue":
            raise ValueError("sampler='authors' draws N-pair or triplet batches only")
        return MPerClassSampler(labels, per_batch, images_per_class, **common)
    if kind == "authors":
        return AuthorsSampler(labels, per_batch, 2 if layout == "npair" else 3, **common)
    cls = NPairSampler if layout == "npair" else TripletSampler
    return cls(labels, per_batch, **common)
