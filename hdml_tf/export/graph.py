"""The SavedModel's graph: a float32 copy of the embedder and the two serving functions.

``serving_embedder`` rebuilds a mixed-precision or distributed embedder as a plain
float32 one; ``ServingGraph`` holds ``serve_images`` and ``serve_bytes`` (decoding,
resizing and cropping with the ops evaluation uses, behind the input checks);
``build_archive`` hands them to ``keras.export.ExportArchive``; ``check_clone`` and
``verify_saved_model`` compare the rebuild and the written SavedModel with Keras.
"""

import keras
import numpy as np
import tensorflow as tf

from hdml_tf.data import preprocess
from hdml_tf.serving_contract import (DEFAULT_MAX_BATCH, DEFAULT_MAX_PIXELS, INPUT_BYTES,
                                      INPUT_IMAGES, OUTPUT_EMBEDDING, SIGNATURE_BYTES,
                                      SIGNATURE_IMAGES, ExportError, MAGIC)


def _layers(model):
    """Every Keras layer of ``model``, itself included.

    Keras 3 has no public recursive layer iterator: ``Model.layers`` is one level
    deep, and ``tf.train.TrackableView`` misses layers held in Python lists (it finds
    7 of SmallCNN's 27 layers, 13 of InceptionV1's 87), so this is Keras' own walk.
    """
    return list(model._flatten_layers(include_self=True, recursive=True))


def policy_names(model):
    return sorted({getattr(layer.dtype_policy, "name", str(layer.dtype_policy))
                   for layer in _layers(model)})


def _copy_weights(source, target):
    """Copy variables by path (falling back to order), checking every shape."""
    src, dst = source.weights, target.weights
    if len(src) != len(dst):
        raise ExportError(f"rebuilt embedder has {len(dst)} variables, the checkpoint "
                          f"{len(src)}; cannot copy weights")
    src_paths, dst_paths = [v.path for v in src], [v.path for v in dst]
    if (len(set(src_paths)) == len(src_paths) and set(src_paths) == set(dst_paths)):
        by_path = {v.path: v for v in src}
        pairs = [(by_path[v.path], v) for v in dst]
    else:
        pairs = list(zip(src, dst))
    for s, d in pairs:
        if tuple(s.shape) != tuple(d.shape):
            raise ExportError(f"variable {s.path} has shape {tuple(s.shape)} but the "
                              f"rebuilt {d.path} has {tuple(d.shape)}")
        d.assign(np.asarray(s.numpy(), dtype=d.dtype))


def serving_embedder(embedder, image_size):
    """A float32, strategy-free copy of ``embedder`` for export.

    The embedder is rebuilt from its Keras config (with the global policy float32
    while it is built, for sub-layers created without an explicit dtype), every layer
    whose dtype policy is a mixed-precision one is switched to float32 through Keras'
    public ``layer.dtype_policy`` setter before the copy first runs, and the weights
    are copied. Mixed-precision variables are float32 already, so nothing is
    rounded; variables created under a distribution strategy are read as plain values.

    Args:
      embedder: a built ``hdml_tf.networks.Embedder``.
      image_size: (H, W) the embedder is built at.

    Returns:
      A new Embedder whose every layer computes in float32.

    Raises:
      ExportError: called inside a distribution strategy scope, or a layer still
        computes in another dtype after the rebuild.
    """
    if tf.distribute.has_strategy():
        raise ExportError("export must run outside a distribution strategy scope "
                          "(the exported model is single-device)")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        clone = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(embedder))
    finally:
        keras.config.set_dtype_policy(previous)
    for layer in _layers(clone):
        if layer.dtype_policy.name.startswith("mixed_"):
            layer.dtype_policy = "float32"
    # Calling (not only build) creates every variable, whatever the layer kind.
    clone(tf.zeros((1,) + tuple(image_size) + (3,), tf.float32), training=False)
    _copy_weights(embedder, clone)
    bad = [p for p in policy_names(clone) if p != "float32"]
    if bad:
        raise ExportError(f"rebuilt embedder still has dtype policies {bad}; export "
                          "serves float32 only")
    return clone


def _check_bytes(image_bytes):
    """Assert op: every element is non-empty and starts like a decodable image.

    The failure message names the batch indices of the bad inputs, split into empty
    strings and unrecognised formats.
    """
    padded = tf.strings.join([image_bytes, tf.constant(b"\0" * 12)])
    head = tf.strings.substr(padded, 0, 8)
    known = tf.zeros_like(image_bytes, dtype=tf.bool)
    for magic in MAGIC:
        known |= tf.equal(tf.strings.substr(head, 0, len(magic)), magic)
    webp = (tf.equal(tf.strings.substr(padded, 0, 4), b"RIFF")
            & tf.equal(tf.strings.substr(padded, 8, 4), b"WEBP"))
    known |= webp
    empty = tf.equal(tf.strings.length(image_bytes), 0)
    unknown = tf.logical_and(tf.logical_not(known), tf.logical_not(empty))
    ok = tf.reduce_all(known)
    # Names go into the template itself: tf.strings.format quotes string tensors.
    message = tf.strings.format(
        f"{SIGNATURE_BYTES}: input {INPUT_BYTES} could not be decoded at batch "
        "index(es) {} (empty string at {}; not a JPEG/PNG/GIF/BMP/WebP image at {})",
        (tf.reshape(tf.where(tf.logical_not(known)), [-1]),
         tf.reshape(tf.where(empty), [-1]), tf.reshape(tf.where(unknown), [-1])),
        summarize=-1)
    return tf.debugging.Assert(ok, [message])


def _check_batch(batch, max_batch, signature, input_name):
    """Assert op: the request holds at most ``max_batch`` images."""
    count = tf.shape(batch, out_type=tf.int64)[0]
    message = tf.strings.format(
        f"{signature}: input {input_name} holds {{}} images, over the limit of "
        f"max_batch={int(max_batch)} per request; refused before decoding "
        "(send several requests)", (count,))
    return tf.debugging.Assert(count <= max_batch, [message])


class ServingGraph:
    """The two serving functions over a float32 embedder.

    Plain Python: :func:`build_archive` hands ``serve_images`` and ``serve_bytes`` to
    ``keras.export.ExportArchive``, which traces them and saves the variables they
    read.

    Args:
      embedder: a float32 ``Embedder`` (see :func:`serving_embedder`).
      resize: (H, W) images are resized to before the centre crop (``serve_bytes``).
      crop: (H, W) the embedder's input size.
      preprocessing: a ``hdml_tf.data.preprocess.normalize`` mode.
      max_pixels: ``serve_bytes`` refuses, before decoding, an image whose header
        declares more pixels (height x width) than this.
      max_batch: both signatures refuse a request of more images than this.
      crop_rounding: the centre crop's offset rounding (``preprocess.center_crop``;
        the run's ``data.center_crop_rounding``, so serving crops as evaluation did).
    """

    def __init__(self, embedder, resize, crop, preprocessing,
                 max_pixels=DEFAULT_MAX_PIXELS, max_batch=DEFAULT_MAX_BATCH,
                 crop_rounding="floor"):
        self.embedder = embedder
        self.resize, self.crop = tuple(resize), tuple(crop)
        self.preprocessing = preprocess.preprocessing_mode(preprocessing)
        self.embedding_dim = int(embedder.embedding_dim)
        self.max_pixels, self.max_batch = int(max_pixels), int(max_batch)
        self.crop_rounding = crop_rounding

    def embed(self, images):
        """``{"embedding": z}`` for float32 RGB 0-255 images of the crop size."""
        def run():
            z = self.embedder(preprocess.normalize(images, self.preprocessing),
                              training=False)
            z = tf.cast(z, tf.float32)
            if not getattr(self.embedder, "normalize", True):
                z = tf.math.l2_normalize(z, axis=-1)
            return z

        # An empty request gets an empty answer: some kernels (fused batch norm)
        # reject a batch of zero images.
        z = tf.cond(tf.shape(images)[0] > 0, run,
                    lambda: tf.zeros([0, self.embedding_dim], tf.float32))
        return {OUTPUT_EMBEDDING: z}

    def decode(self, contents):
        """One encoded image -> float32 (crop, crop, 3), as evaluation prepares it."""
        image = preprocess.decode_image(contents, channels=3)
        return preprocess.eval_transform(image, resize=self.resize, crop=self.crop,
                                         crop_rounding=self.crop_rounding)

    def serve_images(self, images):
        with tf.control_dependencies([
                _check_batch(images, self.max_batch, SIGNATURE_IMAGES, INPUT_IMAGES)]):
            images = tf.identity(images)
        return self.embed(images)

    def serve_bytes(self, image_bytes):
        # In order: the batch size, the formats, then the sizes from the headers; the
        # decode below depends on all three, so nothing is decoded before they pass.
        with tf.control_dependencies([
                _check_batch(image_bytes, self.max_batch, SIGNATURE_BYTES, INPUT_BYTES)]):
            with tf.control_dependencies([_check_bytes(image_bytes)]):
                with tf.control_dependencies([preprocess.check_image_size(
                        image_bytes, self.max_pixels,
                        f"{SIGNATURE_BYTES}: input {INPUT_BYTES}")]):
                    image_bytes = tf.identity(image_bytes)
        images = tf.map_fn(self.decode, image_bytes, fn_output_signature=tf.TensorSpec(
            [self.crop[0], self.crop[1], 3], tf.float32))
        return self.embed(images)


def build_archive(graph):
    """A ``keras.export.ExportArchive`` holding ``graph``'s two signatures.

    The endpoint names are the signature keys (``serving_default``, ``serve_bytes``),
    so ExportArchive adds no alias; the input ``TensorSpec`` names are the signature
    input names.
    """
    archive = keras.export.ExportArchive()
    archive.track(graph.embedder)
    archive.add_endpoint(SIGNATURE_IMAGES, graph.serve_images, input_signature=[
        tf.TensorSpec([None, graph.crop[0], graph.crop[1], 3], tf.float32,
                      name=INPUT_IMAGES)])
    archive.add_endpoint(SIGNATURE_BYTES, graph.serve_bytes, input_signature=[
        tf.TensorSpec([None], tf.string, name=INPUT_BYTES)])
    return archive


def probe_images_of(crop, count, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 255.0, size=(count,) + tuple(crop) + (3,)).astype(np.float32)


def encode_png(image):
    return tf.io.encode_png(tf.cast(tf.round(image), tf.uint8)).numpy()


def check_clone(embedder, clone, crop, preprocessing, source_policies):
    """The float32 rebuild must compute what the trained embedder computes.

    Exact up to float32 rounding for a float32 source; for a mixed-precision source
    the source itself is only float16-accurate, so the bound is loose: it catches a
    wrong weight mapping, not rounding.
    """
    images = preprocess.normalize(tf.constant(probe_images_of(crop, 2, seed=2)), preprocessing)
    want = tf.cast(embedder(images, training=False), tf.float32).numpy()
    got = clone(images, training=False).numpy()
    atol = 1e-5 if source_policies == ["float32"] else 5e-2
    diff = float(np.max(np.abs(want - got)))
    if not diff <= atol:
        raise ExportError(f"the float32 rebuild of the embedder differs from the trained "
                          f"one by {diff:.3g} (> {atol}); the weights were not copied "
                          "faithfully")


def verify_saved_model(path, graph, probe_images, probe_bytes, atol=1e-4):
    """Reload the written SavedModel and compare both signatures with Keras."""
    loaded = tf.saved_model.load(path)
    expected = graph.embed(tf.constant(probe_images))[OUTPUT_EMBEDDING].numpy()
    got = loaded.signatures[SIGNATURE_IMAGES](
        **{INPUT_IMAGES: tf.constant(probe_images)})[OUTPUT_EMBEDDING].numpy()
    expected_bytes = graph.embed(graph.decode(probe_bytes)[None])[OUTPUT_EMBEDDING].numpy()
    got_bytes = loaded.signatures[SIGNATURE_BYTES](
        **{INPUT_BYTES: tf.constant([probe_bytes])})[OUTPUT_EMBEDDING].numpy()
    for name, a, b in ((SIGNATURE_IMAGES, got, expected),
                       (SIGNATURE_BYTES, got_bytes, expected_bytes)):
        if a.shape != b.shape or a.dtype != np.float32 or not np.allclose(a, b, atol=atol):
            diff = np.max(np.abs(a - b)) if a.shape == b.shape else "shape mismatch"
            raise ExportError(f"verification failed: signature {name!r} of the written "
                              f"SavedModel differs from the Keras embedder ({diff})")
