"""Stanford Online Products (Oh Song et al., CVPR 2016).

Layout (``Stanford_Online_Products.zip``)::

    <root>/Stanford_Online_Products/Ebay_train.txt
    <root>/Stanford_Online_Products/Ebay_test.txt
    <root>/Stanford_Online_Products/bicycle_final/111085122871_0.JPG ...

Both lists start with the header ``image_id class_id super_class_id path``, then one
image per line, e.g. ``1 1 1 bicycle_final/111085122871_0.JPG``. The split is the
files' own: 11,318 training classes (59,551 images), 11,316 test classes (60,502).
"""

from __future__ import annotations

import os

import numpy as np

from hdml_tf.data import base

NAME = "sop"
EXPECTED_COUNTS = {"train": 59551, "test": 60502, "all": 120053}
NUM_CLASSES = 22634
HEADER = ["image_id", "class_id", "super_class_id", "path"]


def read_list(path: str):
    """Parse an Ebay_*.txt list -> (class ids int64 (N,), super class ids (N,), paths)."""
    class_ids, supers, rel = [], [], []
    with open(path, encoding="utf-8") as f:
        header = f.readline().split()
        if header != HEADER:
            raise ValueError(f"{path}: expected header {' '.join(HEADER)!r}, "
                             f"got {' '.join(header)!r}")
        for lineno, line in enumerate(f, 2):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 4:
                raise ValueError(f"{path}:{lineno}: expected 4 fields, got {line.strip()!r}")
            class_ids.append(int(parts[1]))
            supers.append(int(parts[2]))
            rel.append(parts[3])
    return np.array(class_ids, np.int64), np.array(supers, np.int64), rel


def load(
    split: str,
    root: str | None = None,
    *,
    val_fraction: float = 0.0,
    val_seed: int = 0,
    check_counts: bool | None = None,
) -> base.ImageDataset:
    """Load a split of Stanford Online Products.

    Args:
        split: "train" (Ebay_train.txt, minus held-out val classes), "val", "test"
            (Ebay_test.txt) or "all".
        root: directory containing ``Stanford_Online_Products/`` (or that directory).
            Default: ``$HDML_SOP_DIR``, else ``$HDML_DATA_DIR/sop``.
        val_fraction, val_seed, check_counts: as for ``cub.load`` (published
            counts 59,551 / 60,502).

    Returns:
        ImageDataset with ``paths``; class names are "<super class dir>/<class id>".
    """
    root = os.path.abspath(root or base.default_root("HDML_SOP_DIR", "sop"))
    base_dir = base.find_dir_with(root, "Ebay_train.txt", ["Stanford_Online_Products", ""])
    if base_dir is None:
        raise base.DatasetNotFoundError(
            f"sop: expected {os.path.join(root, 'Stanford_Online_Products', 'Ebay_train.txt')} "
            f"and Ebay_test.txt (the extracted Stanford_Online_Products.zip)"
        )
    lists = {}
    for part in ("train", "test"):
        p = base.require_file(os.path.join(base_dir, f"Ebay_{part}.txt"), "sop",
                              "The Stanford_Online_Products directory is incomplete.")
        lists[part] = (p,) + read_list(p)
    train_ids, test_ids = np.unique(lists["train"][1]), np.unique(lists["test"][1])
    overlap = np.intersect1d(train_ids, test_ids)
    if len(overlap):
        raise ValueError(f"sop: class ids {overlap[:5].tolist()} are in both Ebay_train.txt "
                         f"and Ebay_test.txt; the split must be by class")
    keep = base.split_classes(train_ids, test_ids, split, val_fraction, val_seed)
    class_ids = np.concatenate([lists[p][1] for p in ("train", "test")])
    rel = lists["train"][3] + lists["test"][3]
    names_by_id = {int(c): f"{r.split('/')[0]}/{int(c)}" for c, r in zip(class_ids, rel)}
    paths = np.array([os.path.join(base_dir, r) for r in rel], dtype=object)
    data = base.build(NAME, split, class_ids, keep, names_by_id, paths=paths, root=base_dir)
    listed = lists["test"][0] if split == "test" else lists["train"][0]
    base.require_listed_files(NAME, data.paths, listed)
    base.check_counts(NAME, data, EXPECTED_COUNTS, NUM_CLASSES, len(names_by_id),
                      check_counts, val_fraction)
    return data
