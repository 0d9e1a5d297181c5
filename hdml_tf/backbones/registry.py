"""Backbone registry: a name -> a model from preprocessed images to pooled features.

Every backbone built here maps float images ``(batch, H, W, 3)`` to a float32
feature vector ``(batch, feature_dim)`` and carries two attributes that the rest of
hdml_tf reads:

* ``feature_dim``: the width of the feature (the generator's output size);
* ``preprocessing``: what the input pipeline must do to 0-255 RGB images before
  the backbone sees them:

  - ``"caffe"``: RGB -> BGR and subtract the ImageNet channel means, no scaling
    (BVLC GoogLeNet; keras.applications ResNet50, whose ``preprocess_input`` uses
    ``mode="caffe"``). The BGR means are (104, 117, 123) in the HDML authors' code for
    GoogLeNet and (103.939, 116.779, 123.68) in keras.applications (they differ by
    less than 0.33 on the 0-255 scale); the input pipeline chooses which to use;
  - ``"none"``: feed raw 0-255 RGB; the network rescales and normalises inside
    (keras.applications EfficientNet, EfficientNetV2 and ConvNeXt, whose
    ``preprocess_input`` is a pass-through).

Built-in names: ``inception_v1`` (the paper's backbone), ``small_cnn`` (for
low-resolution data and CPU runs), ``resnet50``, ``efficientnet_b0``,
``efficientnet_v2_b0``, ``convnext_tiny``. They are registered here, once, when this
module is first imported (``import hdml_tf.backbones`` does it; the network modules are
imported only when a backbone is built), so no caller has to import a network's module
to make its name known. Others can be added with :func:`register_backbone`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional

import keras

__all__ = [
    "BackboneSpec",
    "register_backbone",
    "available_backbones",
    "get_backbone_spec",
    "build_backbone",
]

_KERAS_WEIGHT_EXTENSIONS = (".weights.h5", ".keras", ".h5", ".hdf5")
# The Caffe-weight files hdml_tf.backbones.weights reads (one list, defined there).
from hdml_tf.backbones.weights import SUPPORTED_EXTENSIONS as _CAFFE_EXTENSIONS  # noqa: E402


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """What the registry knows about a backbone before building it.

    Attributes:
        name: registry name.
        builder: ``builder(weights, input_shape, **kwargs) -> keras.Model``; called
            with ``weights`` None or ``"imagenet"`` (paths are loaded afterwards by
            :func:`build_backbone`).
        feature_dim: width of the pooled feature.
        preprocessing: input mode, ``"caffe"`` or ``"none"`` (module docstring).
        caffe_weights: whether ``.mat/.npz/.npy`` Caffe files can be loaded.
        has_imagenet: whether ``weights="imagenet"`` can be downloaded.
    """

    name: str
    builder: Callable[..., keras.Model]
    feature_dim: int
    preprocessing: str
    caffe_weights: bool = False
    has_imagenet: bool = True


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(
    name,
    builder=None,
    *,
    feature_dim,
    preprocessing,
    caffe_weights=False,
    has_imagenet=True,
    overwrite=False,
):
    """Registers a backbone builder; usable as a decorator when `builder` is omitted.

    Args:
        name: registry name (case-insensitive).
        builder: ``builder(weights, input_shape, **kwargs) -> keras.Model`` returning
            a model with pooled ``(batch, feature_dim)`` output.
        feature_dim: width of the feature vector.
        preprocessing: ``"caffe"`` or ``"none"`` (see module docstring) or another
            mode the input pipeline understands.
        caffe_weights: the model accepts :func:`load_caffe_weights` files.
        has_imagenet: ``weights="imagenet"`` is available for this builder.
        overwrite: replace an existing entry instead of raising.
    """
    key = name.lower()

    def _register(fn):
        if key in _REGISTRY and not overwrite:
            raise ValueError(f"backbone {key!r} is already registered")
        _REGISTRY[key] = BackboneSpec(
            key, fn, int(feature_dim), preprocessing, caffe_weights, has_imagenet
        )
        return fn

    return _register if builder is None else _register(builder)


def available_backbones():
    """Sorted list of registered backbone names."""
    return sorted(_REGISTRY)


def get_backbone_spec(name):
    """The :class:`BackboneSpec` of `name`, without building anything.

    Raises:
        ValueError: unknown name (the message lists the available ones).
    """
    key = str(name).lower()
    if key not in _REGISTRY:
        raise ValueError(
            f"Unknown backbone {name!r}; available: {', '.join(available_backbones())}"
        )
    return _REGISTRY[key]


def _check_weights_path(spec, path):
    path = os.fspath(path)
    lower = path.lower()
    allowed = _KERAS_WEIGHT_EXTENSIONS + (_CAFFE_EXTENSIONS if spec.caffe_weights else ())
    if not lower.endswith(allowed):
        raise ValueError(
            f"weights for backbone {spec.name!r} must be None, 'imagenet' or a path "
            f"ending in one of {', '.join(allowed)}; got {path!r}"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file for backbone {spec.name!r} not found: {path!r}")
    return path


def build_backbone(name, weights=None, input_shape=None, *, model_name=None, **kwargs):
    """Builds a registered backbone: images ``(batch, H, W, 3)`` -> ``(batch, feature_dim)``.

    Args:
        name: a name from :func:`available_backbones`.
        weights: ``None`` (random initialisation), ``"imagenet"`` (downloaded by
            keras.applications; not available for ``inception_v1``, whose Caffe
            weights must be converted with ``hdml-tf weights import``), or a path:
            ``.weights.h5`` / ``.keras`` (or legacy ``.h5``) saved from the same
            backbone, and for ``inception_v1`` also a Caffe ``.mat``/``.npz``/``.npy``.
        input_shape: optional ``(H, W, 3)``; ``None`` accepts any size.
        model_name: name of the returned Keras model (``name`` is the registry
            name, so the model's own name travels under this keyword).
        **kwargs: passed to the builder (e.g. ``include_preprocessing`` for
            EfficientNetV2/ConvNeXt).

    Returns:
        A ``keras.Model`` whose attributes ``feature_dim`` and ``preprocessing``
        describe its output and the input it expects.

    Raises:
        ValueError: unknown name, unsupported weights value or extension, or a
            Caffe file that does not fit.
        FileNotFoundError: `weights` names a file that does not exist.
    """
    spec = get_backbone_spec(name)
    build_weights, path = _resolve_weights(spec, weights)
    if model_name is not None:
        kwargs["name"] = model_name
    model = spec.builder(build_weights, input_shape, **kwargs)
    if path is not None:
        if path.lower().endswith(_CAFFE_EXTENSIONS):
            from hdml_tf.backbones.weights import load_caffe_weights

            load_caffe_weights(model, path)
        else:
            model.load_weights(path)
    model.feature_dim = spec.feature_dim
    model.preprocessing = spec.preprocessing
    return model


def _resolve_weights(spec, weights):
    """``(weights for the builder, file to load after building)`` of a
    :func:`build_backbone` ``weights`` argument; raises its ValueError /
    FileNotFoundError."""
    if weights is None:
        return None, None
    if isinstance(weights, str) and weights.lower() == "imagenet":
        if not spec.has_imagenet and not spec.caffe_weights:
            raise ValueError(
                f"No hosted ImageNet weights for backbone {spec.name!r}; use "
                "weights=None or a .weights.h5/.keras path."
            )
        if not spec.has_imagenet:
            raise ValueError(
                f"No hosted ImageNet weights for backbone {spec.name!r}. Convert the "
                "BVLC Caffe GoogLeNet weights (e.g. the HDML authors' "
                "tf_ckpt_from_caffe.mat) with `hdml-tf weights import <file> -o "
                "<out>.weights.h5` and pass weights='<out>.weights.h5' (a .mat/.npz/.npy "
                "path is also accepted directly)."
            )
        return "imagenet", None
    if isinstance(weights, (str, os.PathLike)):
        return None, _check_weights_path(spec, weights)
    raise ValueError(
        f"weights must be None, 'imagenet' or a file path; got {weights!r}"
    )


def _build_inception_v1(weights, input_shape, **kwargs):
    from hdml_tf.backbones.inception_v1 import InceptionV1

    return InceptionV1(include_top=False, input_shape=input_shape, **kwargs)


register_backbone(
    "inception_v1",
    _build_inception_v1,
    feature_dim=1024,
    preprocessing="caffe",
    caffe_weights=True,
    has_imagenet=False,
)


def _build_small_cnn(weights, input_shape, **kwargs):
    from hdml_tf.backbones.small_cnn import SmallCNN

    del weights  # random initialisation only (paths are loaded by build_backbone)
    model = SmallCNN(**kwargs)
    if input_shape is not None:
        model.build((None,) + tuple(input_shape))
    return model


register_backbone("small_cnn", _build_small_cnn, feature_dim=256, preprocessing="tf",
                  has_imagenet=False)


def _keras_application(constructor_name):
    """Builder for a keras.applications network without top and with average pooling."""

    def build(weights, input_shape, **kwargs):
        constructor = getattr(keras.applications, constructor_name)
        base = constructor(
            include_top=False,
            weights=weights,
            input_shape=input_shape,
            pooling="avg",
            **kwargs,
        )
        # Under a mixed-precision policy the pooled features come out in float16;
        # cast them so every backbone hands float32 to the embedding head, as
        # InceptionV1 does (identity under the float32 policy).
        features = keras.layers.Activation(
            "linear", dtype="float32", name="features_float32"
        )(base.output)
        # base.input (one tensor, not the list base.inputs) so calls take a plain tensor.
        return keras.Model(base.input, features, name=base.name)

    build.__name__ = f"build_{constructor_name}"
    return build


for _name, _constructor, _dim, _mode in (
    ("resnet50", "ResNet50", 2048, "caffe"),
    ("efficientnet_b0", "EfficientNetB0", 1280, "none"),
    ("efficientnet_v2_b0", "EfficientNetV2B0", 1280, "none"),
    ("convnext_tiny", "ConvNeXtTiny", 768, "none"),
):
    register_backbone(
        _name, _keras_application(_constructor), feature_dim=_dim, preprocessing=_mode
    )
