"""Writers for small fixture trees in each dataset's real on-disk layout.

Images are tiny solid-colour pictures whose colour encodes their class
(``class_color``), so tests can check after the whole pipeline that every image still
sits next to its own label.
"""

from __future__ import annotations

import gzip
import io
import os
import struct

import numpy as np
from PIL import Image


def class_color(c: int) -> tuple:
    """A colour per class id, far enough apart to survive JPEG and resizing."""
    return ((37 * c) % 200 + 30, (83 * c) % 200 + 30, (151 * c) % 200 + 30)


def write_image(path: str, color=(128, 128, 128), size=(10, 8), fmt=None) -> str:
    """Write a solid (w, h) = size image; the format follows the extension."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, tuple(int(v) for v in color)).save(path, format=fmt)
    return path


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def make_cub(root: str, images_per_class: dict, num_classes: int = 200) -> str:
    """CUB_200_2011 under root with the official metadata files; returns the CUB dir.

    images_per_class: class id (1-based) -> number of images; all ``num_classes``
    classes are listed in classes.txt (as in the real archive).
    """
    base = os.path.join(root, "CUB_200_2011")
    os.makedirs(os.path.join(base, "images"), exist_ok=True)
    names = {c: f"{c:03d}.Bird_{c}" for c in range(1, num_classes + 1)}
    with open(os.path.join(base, "classes.txt"), "w") as f:
        f.writelines(f"{c} {n}\n" for c, n in names.items())
    lines, labels, split = [], [], []
    image_id = 0
    for c in sorted(images_per_class):
        for k in range(images_per_class[c]):
            image_id += 1
            rel = f"{names[c]}/Bird_{c}_{k:04d}_{image_id}.jpg"
            write_image(os.path.join(base, "images", rel), class_color(c))
            lines.append(f"{image_id} {rel}\n")
            labels.append(f"{image_id} {c}\n")
            split.append(f"{image_id} {k % 2}\n")
    for fname, rows in (("images.txt", lines), ("image_class_labels.txt", labels),
                        ("train_test_split.txt", split)):
        with open(os.path.join(base, fname), "w") as f:
            f.writelines(rows)
    return base


def make_cars(root: str, images_per_class: dict, num_classes: int = 196) -> str:
    """cars_annos.mat (scipy.io.savemat, the real struct fields) + car_ims/ under root."""
    import scipy.io

    os.makedirs(os.path.join(root, "car_ims"), exist_ok=True)
    dtype = [("relative_im_path", "O"), ("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"),
             ("bbox_y2", "O"), ("class", "O"), ("test", "O")]
    rows = []
    n = 0
    for c in sorted(images_per_class):
        for k in range(images_per_class[c]):
            n += 1
            rel = f"car_ims/{n:06d}.jpg"
            write_image(os.path.join(root, rel), class_color(c))
            rows.append((rel, np.array([[1]], np.uint8), np.array([[2]], np.uint8),
                         np.array([[9]], np.uint16), np.array([[7]], np.uint16),
                         np.array([[c]], np.uint8), np.array([[k % 2]], np.uint8)))
    ann = np.empty((1, len(rows)), dtype=dtype)
    for i, r in enumerate(rows):
        ann[0, i] = r
    class_names = np.empty((1, num_classes), dtype=object)
    for c in range(num_classes):
        class_names[0, c] = f"Make Model {c + 1} 2012"
    scipy.io.savemat(os.path.join(root, "cars_annos.mat"),
                     {"annotations": ann, "class_names": class_names})
    return root


def make_sop(root: str, train: dict, test: dict) -> str:
    """Stanford_Online_Products/ with Ebay_train.txt / Ebay_test.txt; dicts map
    class id -> (super class dir, number of images)."""
    base = os.path.join(root, "Stanford_Online_Products")
    supers = {}
    for part, classes in (("train", train), ("test", test)):
        lines = ["image_id class_id super_class_id path\n"]
        image_id = 0
        for c in sorted(classes):
            sdir, n = classes[c]
            sid = supers.setdefault(sdir, len(supers) + 1)
            for k in range(n):
                image_id += 1
                rel = f"{sdir}/{100000 + c}_{k}.JPG"
                write_image(os.path.join(base, rel), class_color(c), fmt="JPEG")
                lines.append(f"{image_id} {c} {sid} {rel}\n")
        with open(os.path.join(base, f"Ebay_{part}.txt"), "w") as f:
            f.writelines(lines)
    return base


def make_inshop(root: str, items: dict) -> str:
    """Eval/list_eval_partition.txt + Img/img/... ; items: item number ->
    list of statuses ("train" / "query" / "gallery"), one image each."""
    rows = []
    for item in sorted(items):
        for k, status in enumerate(items[item]):
            name = f"img/WOMEN/Dresses/id_{item:08d}/{k + 1:02d}_1_front.jpg"
            write_image(os.path.join(root, "Img", name), class_color(item))
            rows.append(f"{name:<60} id_{item:08d} {status}\n")
    os.makedirs(os.path.join(root, "Eval"), exist_ok=True)
    with open(os.path.join(root, "Eval", "list_eval_partition.txt"), "w") as f:
        f.write(f"{len(rows)}\n")
        f.write("image_name item_id evaluation_status\n")
        f.writelines(rows)
    return root


def make_folder(root: str, classes: dict, ext: str = ".jpg") -> str:
    """root/<class name>/<k><ext>; classes: name -> (colour id, number of images)."""
    for name, (cid, n) in classes.items():
        for k in range(n):
            write_image(os.path.join(root, name, f"{k}{ext}"), class_color(cid))
    return root


def write_idx_gz(path: str, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (magic 0x0000_08_<ndim>, big-endian dims), gzipped."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def make_fashion_idx(root: str, per_class_train=3, per_class_test=2) -> str:
    """The four Fashion-MNIST IDX .gz files with 28x28 images of value 10 * label."""
    os.makedirs(root, exist_ok=True)
    for part, n in (("train", per_class_train), ("t10k", per_class_test)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), n)
        images = np.repeat(labels[:, None, None] * 10, 28 * 28, axis=1).reshape(-1, 28, 28)
        write_idx_gz(os.path.join(root, f"{part}-images-idx3-ubyte.gz"), images)
        write_idx_gz(os.path.join(root, f"{part}-labels-idx1-ubyte.gz"), labels)
    return root


def label_of_color(images: np.ndarray, class_ids) -> np.ndarray:
    """For float (B, H, W, 3) 0-255 RGB images: index into class_ids of the nearest
    class colour (mean over pixels)."""
    means = images.reshape(len(images), -1, 3).mean(axis=1)
    palette = np.array([class_color(int(c)) for c in class_ids], np.float32)
    d = ((means[:, None, :] - palette[None]) ** 2).sum(-1)
    return d.argmin(axis=1)
