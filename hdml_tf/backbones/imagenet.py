"""A check of GoogLeNet weights a user can see: ImageNet top-5 of two known photographs.

A wrong conversion (transposed kernels, RGB instead of BGR, a missing mean, a wrong
LRN) does not fail loudly: it gives a network whose features are quietly worse. The
1000-way classifier makes it visible. :func:`imagenet_check` builds
``InceptionV1(include_top=True)``, loads the weights, and prints the top-5 ImageNet
classes of the two photographs scikit-learn ships (``load_sample_images``: a temple
in China and a flower), with the preprocessing the BVLC weights were trained with
(:func:`caffe_preprocess`), once with Caffe's LRN (``lrn="caffe"``, the semantics of
the weights) and beside it with the HDML authors' LRN (``lrn="authors"``, used by the
paper presets), so users see what that choice does to the ImageNet features. Right
weights name a flower for the flower; wrong ones give nonsense or a flat distribution.

Class names: ``imagenet_classes.txt`` beside this module, the ILSVRC 2012 synsets in
the order of Caffe's ``synset_words.txt`` (the classifier's output order), one
``wnid name[, synonym...]`` a line.

Command line: ``hdml-tf weights check FILE`` (a ``.caffemodel``, a Caffe-layout
``.mat``/``.npz``/``.npy`` holding ``loss3/classifier``, or a ``.weights.h5``
converted with ``--include-top``).

Reference: Caffe ``python/caffe/classify.py`` and ``examples/00-classification``
(resize to 256x256, centre crop, BGR, mean subtraction); BVLC
``models/bvlc_googlenet/deploy.prototxt`` (224x224 input).
"""

from __future__ import annotations

import os
from importlib import resources

import numpy as np

__all__ = [
    "CAFFE_MEAN_BGR",
    "SAMPLE_IMAGES",
    "imagenet_classes",
    "caffe_preprocess",
    "sample_images",
    "top_k",
    "imagenet_check",
]

#: Per-channel mean of the ImageNet training images in Caffe's BGR order.
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)
#: The photographs of ``sklearn.datasets.load_sample_images``, in its order.
SAMPLE_IMAGES = ("china.jpg", "flower.jpg")
_LRN_NOTES = {"caffe": "the weights' own", "authors": "paper presets"}


def imagenet_classes():
    """The 1000 ImageNet classes in the classifier's order: ``[(wnid, names), ...]``.

    ``names`` is the WordNet lemma list, e.g. ``("n01440764", "tench, Tinca tinca")``.
    """
    text = resources.files("hdml_tf.backbones").joinpath("imagenet_classes.txt").read_text(
        encoding="utf-8")
    classes = [tuple(line.split(" ", 1)) for line in text.splitlines() if line.strip()]
    if len(classes) != 1000:
        raise RuntimeError(f"imagenet_classes.txt holds {len(classes)} classes, not 1000")
    return classes


def caffe_preprocess(image, resize=256, crop=224):
    """One RGB image to the input BVLC GoogLeNet was trained on.

    Resize (warp, bilinear) to ``resize x resize`` unless already that size, take the
    centre ``crop x crop`` window (offset ``(resize - crop) // 2``), reverse the
    channels to BGR, subtract :data:`CAFFE_MEAN_BGR`; values stay on the 0-255 scale.

    Args:
        image: ``(H, W, 3)`` RGB, uint8 or float in 0-255.
        resize: side of the square the image is warped to (Caffe's ImageNet LMDBs: 256).
        crop: side of the centre crop (224, deploy.prototxt; or 227).

    Returns:
        float32 ``(crop, crop, 3)``: ``out[i, j, c] = image'[o + i, o + j, 2 - c] -
        CAFFE_MEAN_BGR[c]`` with ``image'`` the resized image and ``o`` the offset.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    if crop > resize:
        raise ValueError(f"crop {crop} is larger than resize {resize}")
    if image.shape[:2] != (resize, resize):
        import tensorflow as tf

        image = tf.image.resize(image, (resize, resize), method="bilinear",
                                antialias=True).numpy()
    offset = (resize - crop) // 2
    window = image[offset:offset + crop, offset:offset + crop]
    return (window[..., ::-1] - np.asarray(CAFFE_MEAN_BGR, np.float32)).astype(np.float32)


def sample_images():
    """scikit-learn's two sample photographs: ``{"china.jpg": uint8 RGB, ...}``."""
    from sklearn.datasets import load_sample_images

    data = load_sample_images()
    return {os.path.basename(f): image for f, image in zip(data.filenames, data.images)}


def top_k(probabilities, k=5, classes=None):
    """The ``k`` most probable classes: ``[(index, wnid, names, probability), ...]``."""
    classes = classes or imagenet_classes()
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(int(i), classes[i][0], classes[i][1], float(probabilities[i])) for i in order]


def _classifier(weights, lrn, crop):
    """``InceptionV1(include_top=True)`` with `weights` (Caffe file or .weights.h5)."""
    from hdml_tf.backbones.inception_v1 import InceptionV1
    from hdml_tf.backbones.weights import CaffeWeightsError, load_caffe_weights

    model = InceptionV1(include_top=True, input_shape=(crop, crop, 3), lrn=lrn)
    path = os.fspath(weights)
    if path.endswith((".weights.h5", ".keras", ".h5")):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"weights file not found: {path!r}")
        model.load_weights(path)
        return model
    try:
        load_caffe_weights(model, path, skip_classifier=False)
    except CaffeWeightsError as error:
        raise CaffeWeightsError(
            f"{error}\nThe ImageNet check needs the 1000-way loss3/classifier: pass the "
            ".caffemodel itself, or weights converted with --include-top.") from None
    return model


def imagenet_check(weights, *, lrns=("caffe", "authors"), crop=224, k=5, images=None,
                   print_fn=print):
    """Prints (and returns) the ImageNet top-k of the sample photographs.

    Args:
        weights: a ``.caffemodel`` (e.g. ``FetchedWeights.source``), a Caffe-layout
            ``.mat``/``.npz``/``.npy`` with the classifier, or a ``.weights.h5`` of
            ``InceptionV1(include_top=True)``.
        lrns: the LRN variants to compare (:data:`~hdml_tf.backbones.inception_v1.LRN_SETTINGS`
            keys), printed side by side.
        crop: 224 (deploy.prototxt) or 227.
        k: how many classes per image.
        images: ``{name: (H, W, 3) uint8 RGB}``; default :func:`sample_images`.
        print_fn: where the table goes (``None``: nothing printed).

    Returns:
        ``{image_name: {lrn: [(index, wnid, names, probability), ...]}}``.
    """
    images = sample_images() if images is None else images
    classes = imagenet_classes()
    batch = np.stack([caffe_preprocess(image, crop=crop) for image in images.values()])
    results = {name: {} for name in images}
    reference = None
    for lrn in lrns:
        if reference is None:
            model = reference = _classifier(weights, lrn, crop)
        else:  # LRN has no weights: the same arrays fit every variant
            from hdml_tf.backbones.inception_v1 import InceptionV1

            model = InceptionV1(include_top=True, input_shape=(crop, crop, 3), lrn=lrn)
            model.set_weights(reference.get_weights())
        probabilities = np.asarray(model(batch, training=False))
        for name, row in zip(images, probabilities):
            results[name][lrn] = top_k(row, k, classes)
    if print_fn is not None:
        print_fn(_table(weights, results, lrns, crop))
    return results


def _table(weights, results, lrns, crop):
    width = 34
    lines = [f"ImageNet top-{len(next(iter(next(iter(results.values())).values())))} of "
             f"{os.path.basename(os.fspath(weights))}: Caffe preprocessing (warp to 256x256, "
             f"centre crop {crop}, BGR, minus mean {CAFFE_MEAN_BGR})"]
    for name, by_lrn in results.items():
        lines.append(f"{name}")
        lines.append("  " + "".join(f"{f'LRN {lrn!r} ({_LRN_NOTES.get(lrn, lrn)})':<{width}}"
                                    for lrn in lrns).rstrip())
        for rank in range(len(by_lrn[lrns[0]])):
            cells = []
            for lrn in lrns:
                _, _, names, p = by_lrn[lrn][rank]
                label = names.split(",")[0]
                cells.append(f"{rank + 1}. {100 * p:5.1f} % {label}"[:width - 2].ljust(width))
            lines.append("  " + "".join(cells).rstrip())
    return "\n".join(lines)
