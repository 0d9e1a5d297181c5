"""The record every loader returns, and the class-split logic they share.

Deep metric learning is evaluated zero-shot: the test classes are never seen in
training. Every loader therefore splits by *class*, then maps the classes of the
chosen split to contiguous labels 0..C-1 (the classifier in HDML has one output per
training class), keeping the original class ids next to them.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Sequence

import numpy as np

SPLITS = ("train", "val", "test", "all")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset root, metadata file or listed image is missing."""


class DataWarning(UserWarning):
    """Something about the data was dropped or does not match its known size."""


class CorruptImageWarning(DataWarning):
    """An image could not be decoded and was skipped."""


@dataclasses.dataclass
class ImageDataset:
    """One split of a dataset: images (as files, encoded bytes or pixels) and labels.

    Exactly one of ``paths``, ``encoded`` and ``images`` is set.

    Attributes:
        name: registry name of the dataset, e.g. ``"cub200"``.
        split: ``"train"``, ``"val"``, ``"test"``, ``"all"`` or a dataset-specific
            split (In-Shop: ``"query"``, ``"gallery"``).
        labels: int32 array (N,), contiguous class indices 0..C-1 within this split.
        class_ids: int64 array (C,), the dataset's own id of class ``c`` (e.g. CUB's
            1..200), so ``class_ids[labels]`` gives each image's original class.
        class_names: list of C strings, ``class_names[c]`` names label ``c``.
        paths: str array (N,) of absolute image file paths, or None.
        encoded: object array (N,) of encoded image bytes (tfds sources), or None.
        images: uint8 array (N, H, W) or (N, H, W, 3) of pixels, or None.
        root: where the data was read from (for messages).
        skipped: path (or ``"<name>[i]"``) -> reason, for every image the pipelines
            found undecodable and skipped. Filled in while pipelines run.
    """

    name: str
    split: str
    labels: np.ndarray
    class_ids: np.ndarray
    class_names: list
    paths: np.ndarray | None = None
    encoded: np.ndarray | None = None
    images: np.ndarray | None = None
    root: str | None = None
    skipped: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        sources = [x is not None for x in (self.paths, self.encoded, self.images)]
        if sum(sources) != 1:
            raise ValueError("exactly one of paths, encoded, images must be given")
        self.labels = np.asarray(self.labels, dtype=np.int32)
        self.class_ids = np.asarray(self.class_ids, dtype=np.int64)
        self.class_names = [str(c) for c in self.class_names]
        if len(self.class_ids) != len(self.class_names):
            raise ValueError("class_ids and class_names differ in length")
        if len(self) and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise ValueError("labels must lie in 0..num_classes-1")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    @property
    def original_labels(self) -> np.ndarray:
        """The dataset's own class id of every image, int64 (N,)."""
        return self.class_ids[self.labels]

    def describe(self, i: int) -> str:
        """A human-readable name for image ``i`` (its path when there is one)."""
        if self.paths is not None:
            return str(self.paths[i])
        return f"{self.name}:{self.split}[{i}]"

    def __repr__(self) -> str:
        kind = ("paths" if self.paths is not None
                else "encoded" if self.encoded is not None else "images")
        return (
            f"ImageDataset(name={self.name!r}, split={self.split!r}, images={len(self)}, "
            f"classes={self.num_classes}, source={kind})"
        )


def split_classes(
    train_ids: Sequence,
    test_ids: Sequence,
    split: str,
    val_fraction: float = 0.0,
    val_seed: int = 0,
) -> np.ndarray:
    """The original class ids that make up ``split``, sorted.

    Args:
        train_ids: class ids of the zero-shot training classes.
        test_ids: class ids of the zero-shot test classes.
        split: one of ``"train"``, ``"val"``, ``"test"``, ``"all"``.
        val_fraction: fraction of the training classes held out as ``"val"`` (a
            validation set of unseen classes, for model selection without touching
            the test classes). With 0, ``"val"`` is an error.
        val_seed: seed of the held-out class draw; the same seed gives the same
            classes for ``"train"`` and ``"val"``, so the two never overlap.

    Returns:
        int64 array of class ids.
    """
    train_ids = np.sort(np.asarray(list(train_ids), dtype=np.int64))
    test_ids = np.sort(np.asarray(list(test_ids), dtype=np.int64))
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if split == "test":
        return test_ids
    if split == "all":
        return np.sort(np.concatenate([train_ids, test_ids]))
    n_val = int(round(val_fraction * len(train_ids)))
    if val_fraction > 0 and n_val == 0:
        n_val = 1
    if split == "val" and n_val == 0:
        raise ValueError("split='val' needs val_fraction > 0 (held-out training classes)")
    if n_val >= len(train_ids):
        raise ValueError(f"val_fraction={val_fraction} leaves no training classes")
    held_out = np.random.default_rng(val_seed).permutation(train_ids)[:n_val]
    if split == "val":
        return np.sort(held_out)
    return np.setdiff1d(train_ids, held_out)


def build(
    name: str,
    split: str,
    image_class_ids: np.ndarray,
    keep_ids: np.ndarray,
    names_by_id: dict,
    *,
    paths: np.ndarray | None = None,
    encoded: np.ndarray | None = None,
    images: np.ndarray | None = None,
    root: str | None = None,
    dense: bool = True,
) -> ImageDataset:
    """Select the images whose class is in ``keep_ids`` and relabel to 0..C-1.

    Args:
        image_class_ids: original class id of every image (N,).
        keep_ids: sorted original class ids of the split; label c is keep_ids[c].
        names_by_id: original class id -> class name.
        paths / encoded / images: the per-image source, aligned with image_class_ids.
        dense: drop classes of ``keep_ids`` that have no image here, so every label
            has images. False keeps label c = keep_ids[c] for all of them (In-Shop's
            query and gallery must share one labelling).
    """
    image_class_ids = np.asarray(image_class_ids, dtype=np.int64)
    keep_ids = np.asarray(keep_ids, dtype=np.int64)
    # Only classes that have images in this split get a label, so labels stay dense.
    present = np.intersect1d(keep_ids, image_class_ids) if dense else np.unique(keep_ids)
    mask = np.isin(image_class_ids, present)
    labels = np.searchsorted(present, image_class_ids[mask])

    def take(x):
        return None if x is None else x[mask]

    return ImageDataset(
        name=name,
        split=split,
        labels=labels,
        class_ids=present,
        class_names=[names_by_id[int(c)] for c in present],
        paths=take(paths),
        encoded=take(encoded),
        images=take(images),
        root=root,
    )


def check_counts(
    name: str,
    data: ImageDataset,
    expected: dict,
    official_num_classes: int,
    total_classes_found: int,
    check: bool | None,
    val_fraction: float = 0.0,
) -> None:
    """Compare a split's image count with the published one.

    Args:
        expected: split -> published image count (only zero-shot splits without a
            validation hold-out are listed).
        official_num_classes: classes in the full published dataset.
        total_classes_found: classes the metadata on disk lists.
        check: True: a mismatch raises ValueError. None: checked only when the
            metadata lists the full class set (i.e. it looks like the real dataset),
            and a mismatch warns. False: no check.
        val_fraction: a validation hold-out changes the train count, so "train" is
            then not checked.
    """
    if check is False or data.split not in expected:
        return
    if val_fraction > 0 and data.split == "train":
        return
    if check is None and total_classes_found != official_num_classes:
        return
    want, got = expected[data.split], len(data)
    if want == got:
        return
    msg = (
        f"{name} split {data.split!r} has {got} images under {data.root}, the published "
        f"dataset has {want}: the copy on disk is incomplete or modified"
    )
    if check:
        raise ValueError(msg)
    warnings.warn(msg, DataWarning, stacklevel=3)


def require_file(path: str, what: str, hint: str = "") -> str:
    """Return ``path`` if it is a file, else raise one error naming it."""
    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"{what}: expected file {path!r}, not found. {hint}".strip())
    return path


def require_listed_files(name: str, paths: Sequence[str], listed_in: str) -> None:
    """Raise one error naming the listed image files that do not exist."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(repr(p) for p in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DatasetNotFoundError(
            f"{name}: {len(missing)} image file(s) listed in {listed_in!r} are missing: "
            f"{shown}{more}"
        )


def default_root(env_var: str, subdir: str) -> str:
    """``$<env_var>``, else ``$HDML_DATA_DIR/<subdir>``, else ``~/hdml_data/<subdir>``."""
    if os.environ.get(env_var):
        return os.environ[env_var]
    base = os.environ.get("HDML_DATA_DIR", os.path.join(os.path.expanduser("~"), "hdml_data"))
    return os.path.join(base, subdir)


def find_dir_with(root: str, filename: str, candidates: Sequence[str]) -> str | None:
    """The first of ``root/<candidate>`` that contains ``filename``, or None."""
    for sub in candidates:
        d = os.path.join(root, sub) if sub else root
        if os.path.isfile(os.path.join(d, filename)):
            return d
    return None
