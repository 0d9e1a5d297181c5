"""CUB-200-2011 (Wah et al., 2011), the paper's zero-shot split.

Layout (the extracted official ``CUB_200_2011.tgz``)::

    <root>/CUB_200_2011/images.txt            "<image_id> <relative path>"
    <root>/CUB_200_2011/image_class_labels.txt "<image_id> <class_id 1..200>"
    <root>/CUB_200_2011/classes.txt           "<class_id> <class name>"
    <root>/CUB_200_2011/images/<class name>/<file>.jpg

``root`` may also be the ``CUB_200_2011`` directory itself. The official
``train_test_split.txt`` is a per-image classification split and is not used:
deep metric learning trains on classes 1-100 (5,864 images) and tests on
101-200 (5,924 images). Fallback: a prepared tfds ``caltech_birds2011``.
"""

from __future__ import annotations

import os

import numpy as np

from hdml_tf.data import base, _tfds

NAME = "cub200"
TRAIN_CLASSES = range(1, 101)
TEST_CLASSES = range(101, 201)
EXPECTED_COUNTS = {"train": 5864, "test": 5924, "all": 11788}
NUM_CLASSES = 200


def _read_pairs(path):
    """Lines "<int id> <rest>" -> dict id -> rest (rest may not contain newlines)."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(None, 1)
            if len(parts) != 2:
                raise ValueError(f"{path}:{lineno}: expected '<id> <value>', got {line!r}")
            out[int(parts[0])] = parts[1].strip()
    return out


def load(
    split: str,
    root: str | None = None,
    *,
    val_fraction: float = 0.0,
    val_seed: int = 0,
    check_counts: bool | None = None,
    use_tfds: bool = True,
    tfds_data_dir: str | None = None,
) -> base.ImageDataset:
    """Load a zero-shot split of CUB-200-2011.

    Args:
        split: "train" (classes 1-100, minus held-out val classes), "val", "test"
            (101-200) or "all".
        root: directory containing ``CUB_200_2011/`` (or that directory itself).
            Default: ``$HDML_CUB200_DIR``, else ``$HDML_DATA_DIR/cub200``.
        val_fraction, val_seed: see ``base.split_classes``.
        check_counts: see ``base.check_counts`` (5,864 / 5,924 images).
        use_tfds: fall back to a prepared tfds ``caltech_birds2011`` if the archive
            layout is not found.
        tfds_data_dir: tfds data_dir for that fallback.

    Returns:
        ImageDataset with ``paths`` (archive) or ``encoded`` (tfds).

    Raises:
        DatasetNotFoundError: naming the metadata file expected under ``root`` when
            neither the archive nor a prepared tfds copy exists, or the listed image
            files that are missing.
    """
    root = os.path.abspath(root or base.default_root("HDML_CUB200_DIR", "cub200"))
    keep = base.split_classes(TRAIN_CLASSES, TEST_CLASSES, split, val_fraction, val_seed)
    base_dir = base.find_dir_with(root, "images.txt", ["CUB_200_2011", ""])
    if base_dir is None:
        return _tfds.load_prepared(
            "caltech_birds2011", NAME, split, keep, use_tfds=use_tfds, data_dir=tfds_data_dir,
            expected_counts=EXPECTED_COUNTS, num_classes=NUM_CLASSES,
            check_counts=check_counts, val_fraction=val_fraction, missing=(
                f"cub200: expected {os.path.join(root, 'CUB_200_2011', 'images.txt')} (the "
                f"extracted CUB_200_2011.tgz: images.txt, image_class_labels.txt, "
                f"classes.txt, images/), and no prepared tfds 'caltech_birds2011' was found"))
    paths, class_ids, class_names, images_txt = _read_archive(base_dir)
    data = base.build(NAME, split, class_ids, keep, class_names, paths=paths, root=base_dir)
    base.require_listed_files(NAME, data.paths, images_txt)
    base.check_counts(NAME, data, EXPECTED_COUNTS, NUM_CLASSES, len(class_names),
                      check_counts, val_fraction)
    return data


def _read_archive(base_dir):
    """(image paths, class ids, class id -> name, images.txt) from the archive's lists."""
    hint = "The CUB_200_2011 directory is incomplete."
    images_txt = os.path.join(base_dir, "images.txt")
    labels_txt = base.require_file(os.path.join(base_dir, "image_class_labels.txt"), "cub200", hint)
    classes_txt = base.require_file(os.path.join(base_dir, "classes.txt"), "cub200", hint)
    rel_paths = _read_pairs(images_txt)
    image_labels = _read_pairs(labels_txt)
    class_names = {k: v for k, v in _read_pairs(classes_txt).items()}
    ids = sorted(rel_paths)
    missing_labels = [i for i in ids if i not in image_labels]
    if missing_labels:
        raise ValueError(f"cub200: image ids {missing_labels[:5]} of {images_txt} have no label "
                         f"in {labels_txt}")
    class_ids = np.array([int(image_labels[i]) for i in ids], dtype=np.int64)
    unknown = sorted(set(class_ids.tolist()) - set(class_names))
    if unknown:
        raise ValueError(f"cub200: class ids {unknown[:5]} are not in {classes_txt}")
    paths = np.array([os.path.join(base_dir, "images", rel_paths[i]) for i in ids], dtype=object)
    return paths, class_ids, class_names, images_txt
