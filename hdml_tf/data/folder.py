"""Users' own data: one sub-directory of images per class.

Layout::

    <root>/<class name>/<anything>.{jpg,jpeg,png,gif,bmp,webp}

Files with other extensions are skipped with one warning naming them (and listed in
``ImageDataset.skipped``); hidden files are ignored. Which classes are for
training and which for testing comes from an optional class-split file, one class per
line, ``<split> <class name>`` with split ``train``, ``val``, ``test`` or ``pretrain``
(classes kept out of all three, for pretraining a backbone; the class
name is the rest of the line, so it may contain spaces; ``#`` starts a comment).
Without a split file the sorted class names are cut in two: the first half (rounded
up) trains, the rest tests, as CUB and Cars196 are split.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from hdml_tf.data import base

NAME = "folder"
# The splits a class-split file can name: "pretrain" holds classes kept apart for
# pretraining a backbone (the glyph fine-tuning protocol, hdml_tf.data.glyphs).
FILE_SPLITS = ("pretrain", "train", "val", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")


def read_split_file(path: str) -> dict:
    """Parse a class-split file -> class name -> "train" | "val" | "test"."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split(None, 1)
            if len(parts) != 2 or parts[0] not in FILE_SPLITS:
                raise ValueError(f"{path}:{lineno}: expected '<{'|'.join(FILE_SPLITS)}> "
                                 "<class name>', "
                                 f"got {line!r}")
            out[parts[1]] = parts[0]
    return out


def load(
    split: str,
    root: str | None = None,
    *,
    split_file: str | None = None,
    val_fraction: float = 0.0,
    val_seed: int = 0,
    extensions=IMAGE_EXTENSIONS,
) -> base.ImageDataset:
    """Load a class split of an image folder.

    Args:
        split: "train", "val", "test", "all" or (with a split file) "pretrain".
        root: the folder whose sub-directories are the classes (required, or
            ``$HDML_FOLDER_DIR``).
        split_file: optional class-split file (see module docstring). When it lists
            "val" classes, those are the validation split and ``val_fraction`` must
            be 0. Classes on disk missing from the file are an error.
        val_fraction, val_seed: hold out this fraction of the training classes as
            "val" (see ``base.split_classes``).
        extensions: lower-case file extensions counted as images.

    Returns:
        ImageDataset with ``paths``; class ids are the positions of the class names
        in sorted order (0-based), class names the directory names.
    """
    root = root or os.environ.get("HDML_FOLDER_DIR")
    if not root:
        raise base.DatasetNotFoundError(
            "folder: pass root=<directory with one sub-directory per class>")
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise base.DatasetNotFoundError(f"folder: expected a directory {root!r} with one "
                                        f"sub-directory of images per class, not found")
    exts = tuple(e.lower() for e in extensions)
    classes, paths, class_ids, ignored = _list_images(root, exts)
    keep = _class_split(root, classes, split, split_file, val_fraction, val_seed)
    data = base.build(NAME, split, np.array(class_ids), keep, dict(enumerate(classes)),
                      paths=np.array(paths, dtype=object), root=root)
    if ignored:
        # Not silently: a class folder holding e.g. .tiff files would otherwise just
        # look smaller than it is.
        shown = ", ".join(repr(p) for p in ignored[:5])
        more = f" and {len(ignored) - 5} more" if len(ignored) > 5 else ""
        warnings.warn(f"folder: skipped {len(ignored)} file(s) under {root!r} without an image "
                      f"extension ({', '.join(exts)}): {shown}{more}", base.DataWarning,
                      stacklevel=2)
        for p in ignored:
            data.skipped[p] = "not an image file extension"
    return data


def _list_images(root, exts):
    """(sorted class names, image paths, their class positions, non-image files);
    ``exts``: lower-case image extensions."""
    classes = sorted(d for d in os.listdir(root)
                     if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise base.DatasetNotFoundError(f"folder: {root!r} has no class sub-directories "
                                        f"(<root>/<class name>/<image files>)")
    paths, class_ids, ignored = [], [], []
    for cid, cname in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, cname)):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fname in sorted(f for f in filenames if not f.startswith(".")):
                if fname.lower().endswith(exts):
                    paths.append(os.path.join(dirpath, fname))
                    class_ids.append(cid)
                else:
                    ignored.append(os.path.join(dirpath, fname))
    if not paths:
        raise base.DatasetNotFoundError(
            f"folder: no image files ({', '.join(exts)}) under {root!r}")
    return classes, paths, class_ids, ignored


def _class_split(root, classes, split, split_file, val_fraction, val_seed):
    """The class positions of ``split``: from the split file, else the sorted names cut
    in two (the first half, rounded up, trains)."""
    ids = np.arange(len(classes))
    if split_file is None:
        n_train = (len(classes) + 1) // 2
        return base.split_classes(ids[:n_train], ids[n_train:], split, val_fraction, val_seed)
    assignment = read_split_file(base.require_file(split_file, "folder split file"))
    unknown = sorted(set(assignment) - set(classes))
    unlisted = [c for c in classes if c not in assignment]
    if unknown or unlisted:
        raise ValueError(f"folder: split file {split_file!r} and {root!r} disagree: "
                         f"classes not on disk {unknown[:5]}, "
                         f"classes not in the file {unlisted[:5]}")
    by = {s: np.array([i for i, c in enumerate(classes) if assignment[c] == s], np.int64)
          for s in FILE_SPLITS}
    if split == "pretrain":
        return by["pretrain"]
    if not len(by["val"]):
        return base.split_classes(by["train"], by["test"], split, val_fraction, val_seed)
    if val_fraction:
        raise ValueError("folder: the split file lists 'val' classes; leave val_fraction=0")
    keep = {"train": by["train"], "val": by["val"], "test": by["test"], "all": ids}.get(split)
    if keep is None:
        raise ValueError(f"split must be one of {base.SPLITS + ('pretrain',)}, got {split!r}")
    return keep
