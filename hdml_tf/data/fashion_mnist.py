"""Fashion-MNIST (Xiao et al., 2017) as a small zero-shot retrieval task.

Sources, in order: the IDX ``.gz`` files (``train-images-idx3-ubyte.gz``,
``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``,
``t10k-labels-idx1-ubyte.gz``) in ``root``, ``$HDML_FASHION_MNIST_DIR`` or
``/usr/share/datasets/fashion-mnist`` (Debian/Ubuntu package
``dataset-fashion-mnist``), gzipped or not; a prepared tfds ``fashion_mnist``; keras' download
(needs the internet, or a copy cached in ``~/.keras/datasets``).

The 70,000 images of both files are pooled and split by class: 0-4 train, 5-9 test
(35,000 each), so test classes are never seen in training.
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

from hdml_tf.data import base, _tfds

NAME = "fashion_mnist"
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
TRAIN_CLASSES = range(0, 5)
TEST_CLASSES = range(5, 10)
EXPECTED_COUNTS = {"train": 35000, "test": 35000, "all": 70000}


def read_idx(path: str) -> np.ndarray:
    """Read a (optionally gzipped) IDX file of unsigned bytes into a numpy array.

    IDX: two zero bytes, a type byte (0x08 = ubyte), the number of dimensions, then
    one big-endian uint32 per dimension, then the data in C order.
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: not a readable IDX file ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    if data[2] != 0x08:
        raise ValueError(f"{path}: IDX element type 0x{data[2]:02x} is not unsigned byte (0x08)")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header declares shape {shape}, file holds {body.size} bytes")
    return body.reshape(shape)


def _idx_path(directory, fname):
    """The .gz file, or its uncompressed twin, in directory; None if neither exists."""
    for name in (fname, fname[:-3]):
        if os.path.isfile(os.path.join(directory, name)):
            return os.path.join(directory, name)
    return None


def _from_idx(directory):
    arrays = {k: read_idx(_idx_path(directory, f)) for k, f in FILES.items()}
    for part in ("train", "test"):
        if len(arrays[f"{part}_images"]) != len(arrays[f"{part}_labels"]):
            raise ValueError(f"{directory}: {part} images and labels differ in number")
    images = np.concatenate([arrays["train_images"], arrays["test_images"]])
    labels = np.concatenate([arrays["train_labels"], arrays["test_labels"]])
    return images, labels


def _candidate_dirs(root):
    dirs = [root, os.environ.get("HDML_FASHION_MNIST_DIR"), DEBIAN_DIR]
    return [d for d in dirs if d]


def _load_arrays(root, use_tfds, download):
    tried = []
    for d in _candidate_dirs(root):
        if all(_idx_path(d, f) for f in FILES.values()):
            return _from_idx(d), d
        tried.append(d)
    if use_tfds:
        builder = _tfds.prepared_builder("fashion_mnist")
        if builder is not None:
            import tensorflow_datasets as tfds

            parts = [tfds.as_numpy(builder.as_dataset(split=s, batch_size=-1))
                     for s in ("train", "test")]
            images = np.concatenate([p["image"][..., 0] for p in parts])
            labels = np.concatenate([p["label"] for p in parts])
            return (images, labels), builder.data_dir
    if download:
        try:
            import keras

            (xa, ya), (xb, yb) = keras.datasets.fashion_mnist.load_data()
            return (np.concatenate([xa, xb]), np.concatenate([ya, yb])), "keras.datasets"
        except Exception as e:  # offline: fall through to the error that lists all ways
            reason = f" (keras download failed: {e})"
    else:
        reason = " (download=False)"
    raise base.DatasetNotFoundError(
        "fashion_mnist: not found. Provide it one of three ways: (1) the IDX files "
        f"{', '.join(FILES.values())} in root=, $HDML_FASHION_MNIST_DIR or {DEBIAN_DIR} "
        "(apt install dataset-fashion-mnist); (2) a prepared tfds 'fashion_mnist' "
        "(tfds build fashion_mnist); (3) keras.datasets.fashion_mnist.load_data() when "
        f"online. Looked in: {tried}{reason}"
    )


def load(
    split: str,
    root: str | None = None,
    *,
    val_fraction: float = 0.0,
    val_seed: int = 0,
    use_tfds: bool = True,
    download: bool = True,
    check_counts: bool | None = None,
) -> base.ImageDataset:
    """Load a zero-shot split of Fashion-MNIST as in-memory 28x28 grayscale images.

    Args:
        split: "train" (classes 0-4, minus held-out val classes), "val", "test"
            (5-9) or "all".
        root: directory holding the four IDX ``.gz`` files (optional).
        val_fraction, val_seed: see ``base.split_classes``.
        use_tfds: try a prepared tfds copy when no IDX files are found.
        download: try keras' download as the last resort.
        check_counts: see ``base.check_counts`` (35,000 / 35,000 images).

    Returns:
        ImageDataset with ``images`` uint8 (N, 28, 28); the pipelines make them RGB.
    """
    keep = base.split_classes(TRAIN_CLASSES, TEST_CLASSES, split, val_fraction, val_seed)
    (images, labels), source = _load_arrays(root, use_tfds, download)
    data = base.build(NAME, split, labels.astype(np.int64), keep, dict(enumerate(CLASS_NAMES)),
                      images=np.ascontiguousarray(images, dtype=np.uint8), root=str(source))
    base.check_counts(NAME, data, EXPECTED_COUNTS, 10, len(np.unique(labels)), check_counts,
                      val_fraction)
    return data
