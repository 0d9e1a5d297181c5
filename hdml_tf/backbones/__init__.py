"""Backbones F: networks from preprocessed images to a pooled feature vector y.

``InceptionV1`` is the BVLC GoogLeNet the paper used; :func:`build_backbone` builds it
or a keras.applications network by name; :func:`load_caffe_weights` imports BVLC's
``.caffemodel`` and the converted-Caffe weight files HDML users have;
:func:`fetch_and_convert` fetches ``bvlc_googlenet`` with its published digest and
:func:`imagenet_check` shows whether weights classify two photographs correctly.
``SmallCNN`` is a small network for low-resolution data and CPU runs. Every built-in
backbone name is registered once, by :mod:`hdml_tf.backbones.registry` on import.
"""

from hdml_tf.backbones.inception_v1 import (
    CAFFE_LAYER_NAMES,
    InceptionV1,
    caffe_to_keras_name,
    keras_to_caffe_name,
)
from hdml_tf.backbones.download import (
    KNOWN_WEIGHTS,
    ChecksumError,
    DownloadError,
    FetchedWeights,
    fetch_and_convert,
    fetch_known_weights,
    fetch_weights,
    sha1_file,
    sha256_file,
)
from hdml_tf.backbones.small_cnn import SmallCNN
from hdml_tf.backbones.caffemodel import CaffeModelError, read_caffemodel
from hdml_tf.backbones.imagenet import caffe_preprocess, imagenet_check
from hdml_tf.backbones.weights import (
    CaffeWeightsError,
    UnsafePickleError,
    convert_caffe_weights,
    load_caffe_weights,
    save_caffe_weights,
)
from hdml_tf.backbones.registry import (
    BackboneSpec,
    available_backbones,
    build_backbone,
    get_backbone_spec,
    register_backbone,
)

__all__ = [
    "CAFFE_LAYER_NAMES",
    "KNOWN_WEIGHTS",
    "ChecksumError",
    "DownloadError",
    "FetchedWeights",
    "fetch_and_convert",
    "fetch_known_weights",
    "fetch_weights",
    "sha1_file",
    "sha256_file",
    "CaffeModelError",
    "read_caffemodel",
    "caffe_preprocess",
    "imagenet_check",
    "UnsafePickleError",
    "InceptionV1",
    "SmallCNN",
    "caffe_to_keras_name",
    "keras_to_caffe_name",
    "CaffeWeightsError",
    "convert_caffe_weights",
    "load_caffe_weights",
    "save_caffe_weights",
    "BackboneSpec",
    "available_backbones",
    "build_backbone",
    "get_backbone_spec",
    "register_backbone",
]
