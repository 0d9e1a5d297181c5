"""Image decoding, resizing/cropping and per-backbone normalisation, as pure TF ops.

Everything here is graph-safe (no Python side effects, no numpy) so that the export
code can call it inside a ``tf.function`` serving signature on ``tf.string`` inputs,
and the tf.data pipelines can call it in parallel ``map``s.

Protocol (the HDML authors' code): training resizes to 256x256, takes a random 227x227
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


# Training and evaluation pipelines skip an image that declares more pixels than this
# instead of decoding it (CorruptImageWarning, as for an undecodable file). The
# benchmark datasets' photographs are a few megapixels; 200 MP is the largest camera
# sensor sold, and decoding it costs 0.6 GB as uint8 plus 2.4 GB as the float32 copy
# that resize_image makes, per image decoded in parallel. Serving has its own, lower
# limit (hdml_tf.export.DEFAULT_MAX_PIXELS).
TRAIN_MAX_PIXELS = 200_000_000

# Bytes every header field below lies within (the VP8X canvas size ends at byte 30).
_HEADER_BYTES = 32
# JPEG segments walked looking for the frame header (SOFn). Real files have a few
# dozen before it (APPn, DQT, DHT; ICC profiles split into 64 KB APP2 chunks); the
# cap bounds the work a crafted file can cause.
_JPEG_MAX_SEGMENTS = 1024


def _bytes_at(padded, pos, n):
    """int64 (batch, n): the n bytes of each padded string from its offset ``pos``."""
    raw = tf.strings.substr(padded, pos, tf.fill(tf.shape(pos), tf.cast(n, pos.dtype)))
    # The reshape keeps n columns for an empty batch, where decode_raw gives (0, 0).
    return tf.reshape(tf.cast(tf.io.decode_raw(raw, tf.uint8), tf.int64), [-1, n])


def _jpeg_size(padded, length, is_jpeg):
    """(height, width) from each JPEG's frame header (SOFn), walking the segments.

    ``tf.image.extract_jpeg_shape`` reads the same fields, but it takes one image at a
    time and fails the whole graph, without saying which element, on a header it
    cannot read; this walk gives -1 for such an element instead.
    """
    n = tf.shape(padded)[0]
    start = (tf.fill([n], tf.constant(2, tf.int64)), tf.fill([n, 2], tf.constant(-1, tf.int64)),
             tf.logical_not(is_jpeg))

    def body(i, pos, size, done):
        shapes = (pos.shape, size.shape, done.shape)
        seg = _bytes_at(padded, tf.minimum(pos, length), 9)
        kind, seg_len = seg[:, 1], seg[:, 2] * 256 + seg[:, 3]
        valid = tf.equal(seg[:, 0], 0xFF) & (pos + 4 <= length)
        fill = valid & tf.equal(kind, 0xFF)  # optional 0xFF padding before a marker
        standalone = valid & (((kind >= 0xD0) & (kind <= 0xD7)) | tf.equal(kind, 0x01))
        sof = (valid & (kind >= 0xC0) & (kind <= 0xCF) & tf.not_equal(kind, 0xC4)
               & tf.not_equal(kind, 0xC8) & tf.not_equal(kind, 0xCC) & (pos + 9 <= length))
        # Image data (SOS) or the end (EOI) before any frame header: unreadable.
        failed = (tf.logical_not(valid) | tf.equal(kind, 0xDA) | tf.equal(kind, 0xD9)
                  | (tf.logical_not(fill | standalone) & (seg_len < 2)))
        found = sof & tf.logical_not(done)
        size = tf.where(found[:, None],
                        tf.stack([seg[:, 5] * 256 + seg[:, 6], seg[:, 7] * 256 + seg[:, 8]], 1),
                        size)
        step = tf.where(fill, tf.constant(1, tf.int64),
                        tf.where(standalone, tf.constant(2, tf.int64), 2 + seg_len))
        new_done = done | sof | failed
        out = (tf.where(new_done, pos, pos + step), size, new_done)
        for new, shape in zip(out, shapes):
            new.set_shape(shape)  # a static batch size stays static (tf.data maps)
        return (i + 1,) + out

    _, _, size, _ = tf.while_loop(
        lambda i, pos, size, done: (i < _JPEG_MAX_SEGMENTS) & tf.logical_not(tf.reduce_all(done)),
        body, (tf.constant(0),) + start)
    return size


def _signed32(v):
    """A little-endian 32-bit field read as unsigned -> its two's-complement value."""
    return tf.where(v >= 2**31, v - 2**32, v)


def encoded_image_size(contents) -> tf.Tensor:
    """Height and width each encoded image declares in its header, without decoding.

    Reads the fields the decoders size their output from: JPEG, the frame header
    (SOFn); PNG, the IHDR chunk; GIF, the logical screen descriptor; BMP, the
    BITMAPINFOHEADER width and |height| (negative for top-down rows); WebP, the VP8
    frame header, the VP8L header or the VP8X canvas. Graph-safe; the cost is a few
    byte slices per image (plus one loop step per JPEG segment before the frame header).

    Args:
        contents: ``tf.string`` tensor of any shape (or bytes) of encoded images.

    Returns:
        int64 tensor of shape ``contents.shape + (2,)``: (height, width), or (-1, -1)
        where the bytes are of no known format or the header cannot be read (too
        short, a field out of range, zero width or height).
    """
    contents = tf.convert_to_tensor(contents, dtype=tf.string)
    flat = tf.reshape(contents, [-1])
    length = tf.cast(tf.strings.length(flat), tf.int64)
    # Zero padding makes every fixed-size read below stay inside the string.
    padded = tf.strings.join([flat, tf.constant(b"\0" * _HEADER_BYTES)])
    zero = tf.zeros_like(length)
    head = _bytes_at(padded, zero, _HEADER_BYTES)

    def starts(magic, at=0):
        return tf.equal(tf.strings.substr(padded, at, len(magic)), magic)

    def le(at, n):
        return sum(head[:, at + k] * 256**k for k in range(n))

    def be(at, n):
        return sum(head[:, at + k] * 256**(n - 1 - k) for k in range(n))

    png = starts(b"\x89PNG\r\n\x1a\n") & starts(b"IHDR", 12) & (length >= 24)
    gif = (starts(b"GIF87a") | starts(b"GIF89a")) & (length >= 10)
    bmp = starts(b"BM") & (length >= 26)
    webp = starts(b"RIFF") & starts(b"WEBP", 8)
    vp8 = webp & starts(b"VP8 ", 12) & starts(b"\x9d\x01\x2a", 23) & (length >= 30)
    vp8l = webp & starts(b"VP8L", 12) & tf.equal(head[:, 20], 0x2F) & (length >= 25)
    vp8x = webp & starts(b"VP8X", 12) & (length >= 30)
    jpeg = starts(b"\xff\xd8\xff")

    vp8l_bits = le(21, 4)
    # (condition, height, width), first match wins; BMP height < 0 means top-down rows.
    table = [
        (png, be(20, 4), be(16, 4)),
        (gif, le(8, 2), le(6, 2)),
        (bmp, tf.abs(_signed32(le(22, 4))), _signed32(le(18, 4))),
        (vp8, le(28, 2) % 16384, le(26, 2) % 16384),  # 14 bits + 2 scale bits,
        (vp8l, vp8l_bits // 16384 % 16384 + 1, vp8l_bits % 16384 + 1),  # 14 bits each,
        (vp8x, le(27, 3) + 1, le(24, 3) + 1),
    ]
    size = _jpeg_size(padded, length, jpeg)
    for condition, height, width in reversed(table):
        size = tf.where(condition[:, None], tf.stack([height, width], 1), size)
    size = tf.where(tf.reduce_all(size > 0, axis=1, keepdims=True), size,
                    tf.constant(-1, tf.int64))
    return tf.reshape(size, tf.concat([tf.shape(contents, out_type=tf.int32), [2]], 0))


def check_image_size(contents, max_pixels, what="image", unreadable_ok=False) -> tf.Operation:
    """Assert op: every image of ``contents`` has a readable header and at most
    ``max_pixels`` pixels (height x width), as declared before any decoding.

    Args:
        contents: 1-D ``tf.string`` tensor of encoded images.
        max_pixels: int limit.
        what: how the message names the input (e.g. "serve_bytes: input image_bytes").
        unreadable_ok: let an image whose header cannot be read pass (to the
            decoder, which tolerates some headers this parser does not, e.g. stray
            bytes between JPEG segments).

    Returns:
        A ``tf.debugging.Assert`` op whose message names the batch indices, the
        declared sizes (height x width) and the limit.
    """
    size = encoded_image_size(contents)
    unreadable = tf.reduce_any(size < 0, axis=1)
    if unreadable_ok:
        unreadable = tf.zeros_like(unreadable)
    over = tf.logical_not(unreadable) & (size[:, 0] * size[:, 1] > max_pixels)
    def listed(strings):  # "[a b c]", like tf.strings.format prints numbers, unquoted
        return tf.strings.join(["[", tf.strings.reduce_join(strings, separator=" "), "]"])

    def indices(mask):
        return listed(tf.strings.as_string(tf.reshape(tf.where(mask), [-1])))

    declared = tf.strings.join([tf.strings.as_string(size[:, 0]), "x",
                                tf.strings.as_string(size[:, 1])])
    message = tf.strings.join([
        what, " refused before decoding at batch index(es) ", indices(over | unreadable),
        ": declared size(s) ", listed(tf.boolean_mask(declared, over)),
        f" (height x width) over the limit of {int(max_pixels)} pixels; unreadable image "
        "header at ", indices(unreadable)])
    return tf.debugging.Assert(tf.logical_not(tf.reduce_any(over | unreadable)), [message])


def decode_image(contents, channels: int = 3, max_pixels=None) -> tf.Tensor:
    """Decode JPEG, PNG, GIF, BMP (or WebP) bytes to a uint8 (H, W, channels) image.

    Grayscale and CMYK JPEGs come out as RGB, the alpha channel of a PNG is
    dropped, and an animated GIF gives its first frame.

    Args:
        contents: scalar ``tf.string`` tensor (or bytes) holding one encoded image.
        channels: 3 (RGB) or 1 (grayscale).
        max_pixels: None, or refuse (before decoding) an image whose header declares
            more pixels than this (see ``check_image_size``); a header this module
            cannot read is left to the decoder.

    Returns:
        uint8 tensor of shape (H, W, channels) with static rank 3.

    Raises:
        tf.errors.InvalidArgumentError: naming the problem ("Unknown image file
            format", "Invalid JPEG data", "refused before decoding ...") when the
            bytes are not a decodable image.
    """
    contents = tf.convert_to_tensor(contents, dtype=tf.string)
    if max_pixels is not None:
        with tf.control_dependencies([check_image_size(contents[None], max_pixels,
                                                       unreadable_ok=True)]):
            contents = tf.identity(contents)
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


def size_pair(size):
    """``(height, width)`` of a size given as an int (square) or a pair."""
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
    image = tf.image.resize(image, size_pair(size), method="bilinear")
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
        h, w = size_pair(crop)
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


CROP_ROUNDINGS = ("floor", "ceil")


def center_crop(image, crop, rounding: str = "floor") -> tf.Tensor:
    """Centre ``crop`` x ``crop`` window of a (H, W, C) image with H, W >= crop.

    Args:
        image: (H, W, C) tensor.
        crop: int or (h, w); None returns ``image``.
        rounding: the offset when H - h (or W - w) is odd: "floor", (H - h) // 2 (14
            for 256 -> 227), or "ceil", (H - h + 1) // 2 (15: the authors'
            ``random_fixed_size_crop_mod.py`` crops ``[15:-14]`` of a 256 image).
    """
    if crop is None:
        return image
    if rounding not in CROP_ROUNDINGS:
        raise ValueError(f"rounding={rounding!r}: expected one of {CROP_ROUNDINGS}")
    h, w = size_pair(crop)
    shape = tf.shape(image)
    up = 1 if rounding == "ceil" else 0
    top = (shape[0] - h + up) // 2
    left = (shape[1] - w + up) // 2
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


def eval_transform(image, resize=256, crop=227, crop_rounding="floor") -> tf.Tensor:
    """Evaluation transform: resize, centre crop (offset rounding ``crop_rounding``,
    see ``center_crop``). Same input/output contract as ``train_transform`` but
    deterministic."""
    return center_crop(resize_image(image, resize), crop, rounding=crop_rounding)


def normalize(images, mode: str = "caffe") -> tf.Tensor:
    """Per-backbone pixel normalisation of float 0-255 RGB images.

    Args:
        images: float (..., 3) RGB in 0-255 (one image or a batch).
        mode: ``"caffe"``: RGB->BGR, minus (104, 117, 123) in BGR order, 0-255 scale
            (BVLC GoogLeNet, as in the HDML authors' code; also fine for keras ResNet50);
            ``"caffe_keras"``: the same with keras.applications' exact means
            (103.939, 116.779, 123.68); ``"tf"``: scale to [-1, 1];
            ``"torch"``: /255, minus ImageNet mean, over ImageNet std;
            ``"none"`` / ``"raw"``: unchanged (models that normalise inside).

    Returns:
        float32 tensor of the same shape.
    """
    images = tf.cast(images, tf.float32)
    if mode == "caffe":
        # tf.reverse: a strided slice with step -1 measured ~3.5x slower here
        # (1.31 s vs 0.37 s per 128x227x227x3 batch, benchmarks/input_pipeline.py).
        return tf.reverse(images, [-1]) - tf.constant(_CAFFE_MEAN_BGR, tf.float32)
    if mode == "caffe_keras":
        return tf.reverse(images, [-1]) - tf.constant(_KERAS_CAFFE_MEAN_BGR, tf.float32)
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
