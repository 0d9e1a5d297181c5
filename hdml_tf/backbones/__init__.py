"""Backbones F: networks from preprocessed images to a pooled feature vector y.

``InceptionV1`` is the BVLC GoogLeNet the paper used; :func:`build_backbone` builds it
or a keras.applications network by name; :func:`load_caffe_weights` imports the
converted-Caffe weight files HDML users have.
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
    fetch_known_weights,
    fetch_weights,
    sha256_file,
)
from hdml_tf.backbones.small_cnn import SmallCNN  # registers "small_cnn"
from hdml_tf.backbones.weights import (
    CaffeWeightsError,
    convert_caffe_weights,
    load_caffe_weights,
    save_caffe_weights,
    weights_import_main,
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
    "fetch_known_weights",
    "fetch_weights",
    "sha256_file",
    "InceptionV1",
    "caffe_to_keras_name",
    "keras_to_caffe_name",
    "CaffeWeightsError",
    "convert_caffe_weights",
    "load_caffe_weights",
    "save_caffe_weights",
    "weights_import_main",
    "BackboneSpec",
    "available_backbones",
    "build_backbone",
    "get_backbone_spec",
    "register_backbone",
]
