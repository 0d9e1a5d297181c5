"""Datasets and input pipelines for HDML.

Loading (one module per dataset, one entry point)::

    from hdml_tf import data
    train = data.load_dataset("cub200", "train", root="/data")   # -> ImageDataset
    test = data.load_dataset("cub200", "test", root="/data")

Registered names (``available_datasets()``): ``cub200``, ``cars196``, ``sop``,
``inshop``, ``folder``, ``fashion_mnist``, ``digits``, ``glyphs`` (CJK ideographs in the
installed typefaces, written by ``hdml-tf data glyphs``); ``register_dataset`` adds
more. Splits are by class (zero-shot); ``val_fraction`` holds out training classes
as a "val" split.

Batches: the samplers (``samplers.py``: seeded streams of image indices), the tf.data
pipelines (``pipeline.py``), corrupt-image handling (``corrupt_images.py``: undecodable
images found before sampling, ``strict``), the decoded cache (``decoded_cache.py``)::

    ds = data.npair_dataset(train, num_pairs=64, seed=0, preprocessing="caffe")
    # ((anchors, positives), (anchor_labels, positive_labels)), infinite
    ev = data.eval_dataset(test, batch_size=128)           # (images, labels), ordered

Preprocessing (``hdml_tf.data.preprocess``, pure TF, SavedModel-safe):
``decode_image``, ``train_transform``, ``eval_transform``, ``normalize``,
``preprocessing_mode``.
"""

from __future__ import annotations

from typing import Callable

from hdml_tf.data import (
    cars196, corrupt_images, cub, digits, fashion_mnist, folder, glyphs, inshop, pipeline,
    preprocess, samplers, sop,
)
from hdml_tf.data.base import (
    CorruptImageWarning,
    DatasetNotFoundError,
    DataWarning,
    ImageDataset,
    split_classes,
)
from hdml_tf.data.preprocess import (
    decode_image, eval_transform, normalize, preprocessing_mode, train_transform,
)
from hdml_tf.data.pipeline import (
    eval_dataset,
    m_per_class_dataset,
    npair_dataset,
    training_pipeline,
    triplet_dataset,
)
from hdml_tf.data.samplers import (
    AuthorsSampler,
    MPerClassSampler,
    NPairSampler,
    Sampler,
    TripletSampler,
)

_REGISTRY: dict = {
    "cub200": cub.load,
    "cars196": cars196.load,
    "sop": sop.load,
    "inshop": inshop.load,
    "folder": folder.load,
    "fashion_mnist": fashion_mnist.load,
    "digits": digits.load,
    "glyphs": glyphs.load,
}


def register_dataset(name: str, loader: Callable[..., ImageDataset]) -> None:
    """Make ``load_dataset(name, split, root, **kwargs)`` call ``loader(split, root, **kwargs)``."""
    _REGISTRY[name] = loader


def available_datasets() -> list:
    """Registered dataset names, sorted."""
    return sorted(_REGISTRY)


def load_dataset(name: str, split: str, root: str | None = None, **kwargs) -> ImageDataset:
    """Load one split of a registered dataset.

    Args:
        name: one of ``available_datasets()``.
        split: "train", "val", "test", "all" (In-Shop also "query", "gallery").
        root: where the dataset lives; None uses the dataset's environment variable
            (e.g. ``$HDML_CUB200_DIR``) or ``$HDML_DATA_DIR/<name>``.
        **kwargs: dataset options, e.g. ``val_fraction``, ``val_seed``,
            ``check_counts`` (see each module's ``load``); ``split_file`` for folder.

    Returns:
        ImageDataset (labels contiguous 0..C-1 within the split, ``class_ids`` the
        dataset's own class ids, ``class_names``, and ``paths``/``encoded``/``images``).
    """
    try:
        loader = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; available: {available_datasets()}") from None
    return loader(split, root, **kwargs)


__all__ = [
    "AuthorsSampler", "CorruptImageWarning", "DataWarning", "DatasetNotFoundError",
    "ImageDataset", "MPerClassSampler", "NPairSampler", "Sampler", "TripletSampler",
    "available_datasets", "decode_image", "eval_dataset", "eval_transform", "load_dataset",
    "m_per_class_dataset", "normalize", "npair_dataset", "preprocessing_mode",
    "register_dataset", "split_classes", "train_transform", "training_pipeline",
    "triplet_dataset", "corrupt_images", "pipeline", "preprocess", "samplers",
]
