"""Stanford Cars (Krause et al., 2013) as used in deep metric learning ("Cars196").

Layout (the "full dataset" release, ``car_ims.tgz`` + ``cars_annos.mat``)::

    <root>/cars_annos.mat
    <root>/car_ims/000001.jpg ... 016185.jpg

``cars_annos.mat`` holds ``annotations``, a 1 x 16,185 struct array with fields
``relative_im_path`` ("car_ims/000001.jpg"), ``bbox_x1``, ``bbox_y1``, ``bbox_x2``,
``bbox_y2``, ``class`` (1..196) and ``test`` (the classification split, unused here),
and ``class_names``, a 1 x 196 cell array. Zero-shot split: classes 1-98 train
(8,054 images), 99-196 test (8,131). Fallback: a prepared tfds ``cars196``
(its download URL is dead, so it can only be prepared from manually placed files).
"""

from __future__ import annotations

import os

import numpy as np

from hdml_tf.data import base, _tfds

NAME = "cars196"
TRAIN_CLASSES = range(1, 99)
TEST_CLASSES = range(99, 197)
EXPECTED_COUNTS = {"train": 8054, "test": 8131, "all": 16185}
NUM_CLASSES = 196


def _scalar(x):
    """Unwrap scipy.io.loadmat's nested 1x1 arrays down to a Python scalar/str."""
    while isinstance(x, np.ndarray):
        if x.size != 1:
            raise ValueError(f"expected a scalar field, got shape {x.shape}")
        x = x.reshape(()).item() if x.dtype != object else x.reshape(-1)[0]
    return x.item() if isinstance(x, np.generic) else x


def _records(ann, mat_path):
    """One dict per image from the ways a struct array can come back from loadmat.

    The released file is a 1 x N struct array. Files written by other tools may hold
    a cell array of 1 x 1 structs (scipy's savemat of a list of dicts) or one struct
    whose fields are N-vectors; all three are accepted.
    """
    if ann.dtype.names:
        names = ann.dtype.names
        flat = ann.reshape(-1)
        first = flat[0][names[0]] if flat.size else None
        if flat.size == 1 and isinstance(first, np.ndarray) and first.size > 1:
            columns = {k: np.asarray(flat[0][k]).reshape(-1) for k in names}
            return [{k: columns[k][i] for k in names} for i in range(len(columns[names[0]]))]
        return [{k: a[k] for k in names} for a in flat]
    if ann.dtype == object:
        out = []
        for cell in ann.reshape(-1):
            cell = np.asarray(cell)
            if not cell.dtype.names:
                raise ValueError(f"{mat_path}: 'annotations' cells must be structs")
            out.append({k: cell.reshape(-1)[0][k] for k in cell.dtype.names})
        return out
    raise ValueError(f"{mat_path}: 'annotations' is not a struct array")


def read_annotations(mat_path: str):
    """Parse ``cars_annos.mat``.

    Returns:
        (relative paths list, class ids int64 (N,), bboxes int64 (N, 4) as x1, y1,
        x2, y2 (-1 where the file has none), class names list indexed by class id - 1).
    """
    import scipy.io

    mat = scipy.io.loadmat(mat_path)
    if "annotations" not in mat:
        raise ValueError(f"{mat_path}: no 'annotations' variable (is this cars_annos.mat?)")
    records = _records(mat["annotations"], mat_path)
    fields = set(records[0]) if records else set()
    lacking = [f for f in ("relative_im_path", "class") if f not in fields]
    if lacking:
        raise ValueError(f"{mat_path}: annotations lack fields {lacking}; found {sorted(fields)}")
    rel = [str(_scalar(r["relative_im_path"])).strip() for r in records]
    cls = np.array([int(_scalar(r["class"])) for r in records], dtype=np.int64)
    box_fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")
    if all(f in fields for f in box_fields):
        boxes = np.array([[int(_scalar(r[k])) for k in box_fields] for r in records], np.int64)
    else:  # boxes are not needed for retrieval; -1 marks them unknown
        boxes = np.full((len(records), 4), -1, np.int64)
    if "class_names" in mat:
        names = [str(_scalar(n)).strip() for n in mat["class_names"].reshape(-1)]
    else:
        names = [f"class_{i}" for i in range(1, int(cls.max()) + 1)]
    return rel, cls, boxes.reshape(-1, 4), names


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
    """Load a zero-shot split of Cars196.

    Args:
        split: "train" (classes 1-98, minus held-out val classes), "val", "test"
            (99-196) or "all".
        root: directory holding ``cars_annos.mat`` and ``car_ims/``. Default:
            ``$HDML_CARS196_DIR``, else ``$HDML_DATA_DIR/cars196``.
        val_fraction, val_seed, check_counts, use_tfds, tfds_data_dir: as for
            ``cub.load`` (published counts 8,054 / 8,131).

    Returns:
        ImageDataset with ``paths`` (archive) or ``encoded`` (tfds).

    Raises:
        DatasetNotFoundError: naming ``<root>/cars_annos.mat`` (and the dead tfds URL)
            or the listed images missing under ``car_ims/``.
    """
    root = os.path.abspath(root or base.default_root("HDML_CARS196_DIR", "cars196"))
    keep = base.split_classes(TRAIN_CLASSES, TEST_CLASSES, split, val_fraction, val_seed)
    base_dir = base.find_dir_with(root, "cars_annos.mat", ["", "stanford_cars", "cars196"])
    if base_dir is None:
        return _tfds.load_prepared(
            "cars196", NAME, split, keep, use_tfds=use_tfds, data_dir=tfds_data_dir,
            expected_counts=EXPECTED_COUNTS, num_classes=NUM_CLASSES,
            check_counts=check_counts, val_fraction=val_fraction, count_present=True, missing=(
                f"cars196: expected {os.path.join(root, 'cars_annos.mat')} and "
                f"{os.path.join(root, 'car_ims')}/ (the Stanford Cars full-dataset release), "
                f"and no prepared tfds 'cars196' was found (tfds cannot download it: its "
                f"source URL is dead; place the files manually)"))
    mat_path = os.path.join(base_dir, "cars_annos.mat")
    rel, class_ids, _, names = read_annotations(mat_path)
    names_by_id = {i + 1: n for i, n in enumerate(names)}
    for c in np.unique(class_ids):
        names_by_id.setdefault(int(c), f"class_{int(c)}")
    paths = np.array([os.path.join(base_dir, r) for r in rel], dtype=object)
    data = base.build(NAME, split, class_ids, keep, names_by_id, paths=paths, root=base_dir)
    base.require_listed_files(NAME, data.paths, mat_path)
    # The real file names all 196 classes, a partial copy or a fixture fewer.
    base.check_counts(NAME, data, EXPECTED_COUNTS, NUM_CLASSES, len(names_by_id),
                      check_counts, val_fraction)
    return data
