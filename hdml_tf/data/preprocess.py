"""Image decoding, resizing/cropping and per-backbone normalisation, as pure TF ops.

Everything here is graph-safe (no Python side effects, no numpy) so that the export
code can call it inside a ``tf.function`` serving signature on ``tf.string`` inputs,
and the tf.data pipelines can call it in parallel ``map``s.

Protocol (HDML spec, "Protocol"): training resizes to 256x256, takes a random 227x227
crop and flips horizontally with probability 1/2; evaluation resizes to 256x256 and
takes the centre 227x227 crop. The Caffe-converted GoogLeNet wants BGR, 0-255, minus
the mean (104, 117, 123) given in BGR order.
"""

from __future__ import annotations

import tensorflow as tf

# Per-backbone preprocessing names. Backbones expose ``.preprocessing`` themselves;
# this table covers plain names (e.g. from a config) and keras.applications families.
BACKBONE_PREPROCESSING = {
    "inception_v1": "caffe",
    "googlenet": "caffe",
    "bn_inception": "caffe",
    "resnet50": "caffe",  # keras.applications.resnet50 uses caffe-style BGR mean subtraction
    "resnet101": "caffe",
    "resnet152": "caffe",
    "vgg16": "caffe",
    "vgg19": "caffe",
    "resnet50_v2": "tf",
    "inception_v3": "tf",
    "inception_resnet_v2": "tf",
    "mobilenet": "tf",
    "mobilenet_v2": "tf",
    "xception": "tf",
    "densenet121": "torch",
    "densenet169": "torch",
    "densenet201": "torch",
    "efficientnet": "none",  # keras EfficientNet/ConvNeXt normalise inside the model
    "efficientnet_v2": "none",
    "convnext": "none",
}

NORMALIZE_MODES = ("caffe", "caffe_keras", "tf", "torch", "none", "raw")

_CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)
# keras.applications' caffe-mode means (ResNet50, VGG); within 0.33 of the above.
_KERAS_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


def decode_image(contents, channels: int = 3) -> tf.Tensor:
    """Decode JPEG, PNG, GIF, BMP (or WebP) bytes to a uint8 (H, W, channels) image.

    Grayscale and CMYK JPEGs come out as RGB, the alpha channel of a PNG is
    dropped, and an animated GIF gives its first frame.

    Args:
        contents: scalar ``tf.string`` tensor (or bytes) holding one encoded image.
        channels: 3 (RGB) or 1 (grayscale).

    Returns:
        uint8 tensor of shape (H, W, channels) with static rank 3.

    Raises:
        tf.errors.InvalidArgumentError: naming the problem ("Unknown image file
            format", "Invalid JPEG data", ...) when the bytes are not a decodable image.
    """
    contents = tf.convert_to_tensor(contents, dtype=tf.string)
    # expand_animations=False returns the first GIF frame as a 3-D tensor, which also
    # gives every format the same static rank inside a graph.
    image = tf.io.decode_image(contents, channels=channels, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, channels])
    return image


def to_rgb(image) -> tf.Tensor:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) -> (H, W, 3), dtype kept."""
    image = tf.convert_to_tensor(image)
    if image.shape.rank == 2:
        image = image[..., None]
    channels = image.shape[-1]
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    if channels == 4:
        return image[..., :3]
    if channels == 3:
        return image
    raise ValueError(f"expected 1, 3 or 4 channels, got shape {image.shape}")


def _pair(size):
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def resize_image(image, size) -> tf.Tensor:
    """Bilinear resize to ``size`` (int or (H, W)); returns float32 0-255 RGB.

    ``size=None`` only converts to float32 RGB.
    """
    image = tf.cast(to_rgb(image), tf.float32)
    if size is None:
        return image
    image = tf.image.resize(image, _pair(size), method="bilinear")
    # Bilinear interpolation of uint8 input stays within range; clip guards rounding.
    return tf.clip_by_value(image, 0.0, 255.0)


def random_crop_flip(image, crop, flip: bool = True, seed=None) -> tf.Tensor:
    """Random ``crop`` x ``crop`` window and (optionally) a random horizontal flip.

    Args:
        image: float32 (H, W, 3) with H, W >= crop.
        crop: int or (h, w); None keeps the whole image.
        flip: flip left-right with probability 1/2.
        seed: None for TF's stateful random ops, or an int32/int64 tensor of shape
            (2,) for stateless ops (the pipelines pass one per image, which is what
            makes them reproducible under parallel map).
    """
    if seed is not None:
        seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
        crop_seed, flip_seed = seed, seed + tf.constant([0, 1 << 30], tf.int64)
    if crop is not None:
        h, w = _pair(crop)
        if seed is None:
            image = tf.image.random_crop(image, [h, w, 3])
        else:
            image = tf.image.stateless_random_crop(image, [h, w, 3], seed=crop_seed)
    if flip:
        if seed is None:
            image = tf.image.random_flip_left_right(image)
        else:
            image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return image


def center_crop(image, crop) -> tf.Tensor:
    """Centre ``crop`` x ``crop`` window of a (H, W, C) image with H, W >= crop."""
    if crop is None:
        return image
    h, w = _pair(crop)
    shape = tf.shape(image)
    top = (shape[0] - h) // 2
    left = (shape[1] - w) // 2
    return tf.image.crop_to_bounding_box(image, top, left, h, w)


def train_transform(image, resize=256, crop=227, flip: bool = True, seed=None) -> tf.Tensor:
    """Training augmentation: resize, random crop, random horizontal flip.

    Args:
        image: uint8 or float (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), 0-255.
        resize: int or (H, W) to resize to first; None to skip (then the image
            must already be at least ``crop``).
        crop: int or (h, w) random crop size; None for no crop.
        flip: random horizontal flip.
        seed: None or a (2,) integer tensor for stateless (reproducible) randomness.

    Returns:
        float32 (crop_h, crop_w, 3), RGB, 0-255 (not normalised: see ``normalize``).
    """
    return random_crop_flip(resize_image(image, resize), crop, flip=flip, seed=seed)


def eval_transform(image, resize=256, crop=227) -> tf.Tensor:
    """Evaluation transform: resize, centre crop. Same input/output contract as
    ``train_transform`` but deterministic."""
    return center_crop(resize_image(image, resize), crop)


def normalize(images, mode: str = "caffe") -> tf.Tensor:
    """Per-backbone pixel normalisation of float 0-255 RGB images.

    Args:
        images: float (..., 3) RGB in 0-255 (one image or a batch).
        mode: ``"caffe"``: RGB->BGR, minus (104, 117, 123) in BGR order, 0-255 scale
            (BVLC GoogLeNet, as in the HDML spec; also fine for keras ResNet50);
            ``"caffe_keras"``: the same with keras.applications' exact means
            (103.939, 116.779, 123.68); ``"tf"``: scale to [-1, 1];
            ``"torch"``: /255, minus ImageNet mean, over ImageNet std;
            ``"none"`` / ``"raw"``: unchanged (models that normalise inside).

    Returns:
        float32 tensor of the same shape.
    """
    images = tf.cast(images, tf.float32)
    if mode == "caffe":
        return images[..., ::-1] - tf.constant(_CAFFE_MEAN_BGR, tf.float32)
    if mode == "caffe_keras":
        return images[..., ::-1] - tf.constant(_KERAS_CAFFE_MEAN_BGR, tf.float32)
    if mode == "tf":
        return images / 127.5 - 1.0
    if mode == "torch":
        return (images / 255.0 - tf.constant(_TORCH_MEAN)) / tf.constant(_TORCH_STD)
    if mode in ("none", "raw"):
        return images
    raise ValueError(f"unknown normalisation mode {mode!r}; expected one of {NORMALIZE_MODES}")


def preprocessing_mode(backbone) -> str:
    """The ``normalize`` mode for a backbone, a backbone name, or a mode name.

    Args:
        backbone: an object with a ``.preprocessing`` attribute (hdml_tf backbones),
            a backbone name such as ``"inception_v1"`` or ``"efficientnet_b0"``, or a
            mode name (``"caffe"``, ``"tf"``, ``"torch"``, ``"none"``, ``"raw"``).
    """
    if not isinstance(backbone, str):
        mode = getattr(backbone, "preprocessing", None)
        if mode is None:
            raise ValueError(f"{backbone!r} has no .preprocessing attribute")
        return preprocessing_mode(mode)
    key = backbone.lower()
    if key in NORMALIZE_MODES:
        return key
    if key in BACKBONE_PREPROCESSING:
        return BACKBONE_PREPROCESSING[key]
    # Families: efficientnet_b0 -> efficientnet, convnext_tiny -> convnext, ...
    for prefix in sorted(BACKBONE_PREPROCESSING, key=len, reverse=True):
        if key.startswith(prefix):
            return BACKBONE_PREPROCESSING[prefix]
    raise ValueError(
        f"no preprocessing known for backbone {backbone!r}; pass a mode, one of {NORMALIZE_MODES}"
    )
