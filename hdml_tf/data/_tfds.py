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


def load_prepared(tfds_name: str, name: str, split: str, keep, *, use_tfds: bool, data_dir,
                  expected_counts, num_classes: int, check_counts, val_fraction: float,
                  missing: str, count_present: bool = False):
    """A split of a prepared tfds copy (images encoded), for a loader whose archive
    layout was not found.

    Args:
        tfds_name: the tfds builder name, e.g. "caltech_birds2011".
        name, split, keep: as ``base.build`` (tfds labels are 0-based; the dataset's
            class ids are label + 1).
        use_tfds: False: do not look for a tfds copy (raise at once).
        data_dir: tfds data_dir.
        expected_counts, num_classes, check_counts, val_fraction: as
            ``base.check_counts``.
        missing: the message of the DatasetNotFoundError raised when no prepared
            copy exists.
        count_present: for ``base.check_counts``, the classes found are the ones
            with images in the copy rather than the class names it lists.
    """
    from hdml_tf.data import base

    builder = prepared_builder(tfds_name, data_dir) if use_tfds else None
    if builder is None:
        raise base.DatasetNotFoundError(missing)
    enc, labels0, names = read_encoded(builder, ["train", "test"])
    class_ids = labels0 + 1
    data = base.build(name, split, class_ids, keep, {i + 1: n for i, n in enumerate(names)},
                      encoded=enc, root=builder.data_dir)
    found = len(np.unique(class_ids)) if count_present else len(names)
    base.check_counts(name, data, expected_counts, num_classes, found, check_counts,
                      val_fraction)
    return data
