"""scikit-learn's bundled 8x8 handwritten digits (1,797 images): a dataset that is
always there, for fast tests. Classes 0-4 train, 5-9 test."""

from __future__ import annotations

import numpy as np

from hdml_tf.data import base

NAME = "digits"
TRAIN_CLASSES = range(0, 5)
TEST_CLASSES = range(5, 10)


def load(split: str, root: str | None = None, *, val_fraction: float = 0.0,
         val_seed: int = 0) -> base.ImageDataset:
    """Load a zero-shot split of the digits.

    Args:
        split: "train", "val", "test" or "all".
        root: ignored (the data ships with scikit-learn); accepted for a uniform API.
        val_fraction, val_seed: see ``base.split_classes``.

    Returns:
        ImageDataset with ``images`` uint8 (N, 8, 8), 0-255.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # sklearn stores 0..16 intensities; scale to the 0-255 range every pipeline expects.
    images = np.clip(np.round(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    keep = base.split_classes(TRAIN_CLASSES, TEST_CLASSES, split, val_fraction, val_seed)
    return base.build(NAME, split, bunch.target.astype(np.int64), keep,
                      {i: str(i) for i in range(10)}, images=images, root="sklearn.datasets")
