"""Reading an already *prepared* tensorflow-datasets copy as encoded images.

tfds is only a fallback: it is used when the on-disk archive layout is absent and
``tfds.builder(name).is_prepared()``; it never downloads (Cars196's tfds download URL
is dead, and training machines are often offline).
"""

from __future__ import annotations

import numpy as np


def prepared_builder(name: str, data_dir: str | None = None):
    """The tfds builder for ``name`` if tfds is installed and the data prepared, else None."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:  # tfds is a dependency, but keep the loaders usable without it
        return None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        return builder if builder.is_prepared() else None
    except Exception:  # unknown name / unreadable data_dir: treat as not prepared
        return None


def read_encoded(builder, splits, label_key: str = "label"):
    """All examples of ``splits`` as (encoded JPEG bytes, 0-based labels, class names).

    Images are kept encoded (tfds stores JPEG/PNG bytes) so the pipelines decode them
    the same way as files on disk.
    """
    import tensorflow_datasets as tfds

    encoded, labels = [], []
    for split in splits:
        ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        for ex in ds.as_numpy_iterator():
            encoded.append(ex["image"])
            labels.append(int(ex[label_key]))
    enc = np.empty(len(encoded), dtype=object)
    enc[:] = encoded
    names = list(builder.info.features[label_key].names)
    return enc, np.asarray(labels, dtype=np.int64), names
