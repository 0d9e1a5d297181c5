"""In-Shop Clothes Retrieval (DeepFashion, Liu et al., CVPR 2016).

Layout (the benchmark's ``Eval/`` and ``Img/`` folders; a flat copy also works)::

    <root>/Eval/list_eval_partition.txt   (or <root>/list_eval_partition.txt)
    <root>/Img/img/WOMEN/Dresses/id_00000002/02_1_front.jpg   (or <root>/img/...)

``list_eval_partition.txt``: first line the number of images, second line the
header ``image_name item_id evaluation_status``, then one line per image, e.g.
``img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train``, with status
``train``, ``query`` or ``gallery``. Published sizes: 25,882 training images of
3,997 items; 14,218 query and 12,612 gallery images of 3,985 other items.
"""

from __future__ import annotations

import os

import numpy as np

from hdml_tf.data import base

NAME = "inshop"
EXPECTED_COUNTS = {"train": 25882, "query": 14218, "gallery": 12612, "test": 26830, "all": 52712}
NUM_CLASSES = 7982
SPLITS = ("train", "val", "query", "gallery", "test", "all")


def read_partition(path: str):
    """Parse list_eval_partition.txt -> (image names, item ids (int64), statuses)."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if len(lines) < 2 or lines[1].split() != ["image_name", "item_id", "evaluation_status"]:
        raise ValueError(f"{path}: expected a count line, then the header "
                         f"'image_name item_id evaluation_status'")
    names, items, status = [], [], []
    for lineno, line in enumerate(lines[2:], 3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or parts[2] not in ("train", "query", "gallery"):
            raise ValueError(f"{path}:{lineno}: expected '<image> <item_id> train|query|gallery', "
                             f"got {line.strip()!r}")
        names.append(parts[0])
        items.append(int(parts[1].rsplit("_", 1)[-1]))
        status.append(parts[2])
    declared = int(lines[0].split()[0])
    if declared != len(names):
        raise ValueError(f"{path}: first line declares {declared} images, {len(names)} are listed")
    return names, np.array(items, np.int64), np.array(status)


def load(
    split: str,
    root: str | None = None,
    *,
    val_fraction: float = 0.0,
    val_seed: int = 0,
    check_counts: bool | None = None,
) -> base.ImageDataset:
    """Load a split of In-Shop.

    Args:
        split: "train" (minus held-out val items), "val", "query", "gallery",
            "test" (query + gallery) or "all". "query", "gallery" and "test" share
            one labelling (label c = c-th test item), so query labels can be matched
            against gallery labels directly.
        root: see module docstring. Default: ``$HDML_INSHOP_DIR``, else
            ``$HDML_DATA_DIR/inshop``.
        val_fraction, val_seed, check_counts: as for ``cub.load``.
    """
    if split not in SPLITS:
        raise ValueError(f"inshop split must be one of {SPLITS}, got {split!r}")
    root = os.path.abspath(root or base.default_root("HDML_INSHOP_DIR", "inshop"))
    bench = "In-shop Clothes Retrieval Benchmark"
    eval_dir = base.find_dir_with(root, "list_eval_partition.txt",
                                  ["Eval", "", os.path.join(bench, "Eval"), bench])
    if eval_dir is None:
        raise base.DatasetNotFoundError(
            f"inshop: expected {os.path.join(root, 'Eval', 'list_eval_partition.txt')} "
            f"(or {os.path.join(root, 'list_eval_partition.txt')})"
        )
    list_path = os.path.join(eval_dir, "list_eval_partition.txt")
    names, items, status = read_partition(list_path)
    # Images are listed relative to Img/ in the benchmark's layout; accept a flat copy too.
    top = os.path.dirname(eval_dir) if os.path.basename(eval_dir) == "Eval" else eval_dir
    img_root = next((d for d in (os.path.join(top, "Img"), top)
                     if names and os.path.exists(os.path.join(d, names[0]))),
                    os.path.join(top, "Img"))
    train_items = np.unique(items[status == "train"])
    test_items = np.unique(items[status != "train"])
    if split in ("query", "gallery"):
        keep = base.split_classes(train_items, test_items, "test")
        rows = status == split
    else:
        keep = base.split_classes(train_items, test_items, "test" if split == "test" else split,
                                  val_fraction, val_seed)
        rows = np.ones(len(names), bool) if split in ("all", "val") else (
            status == "train" if split == "train" else status != "train")
    paths = np.array([os.path.join(img_root, n) for n in names], dtype=object)[rows]
    names_by_id = {int(i): f"id_{int(i):08d}" for i in np.unique(items)}
    data = base.build(NAME, split, items[rows], keep, names_by_id, paths=paths, root=root,
                      dense=split not in ("query", "gallery", "test"))
    base.require_listed_files(NAME, data.paths, list_path)
    base.check_counts(NAME, data, EXPECTED_COUNTS, NUM_CLASSES, len(names_by_id),
                      check_counts, val_fraction)
    return data
