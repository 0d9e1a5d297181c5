"""Export the HDML embedder as a TF Serving SavedModel.

``hdml-tf export --checkpoint WORKDIR_OR_KERAS --out saved_models/NAME`` writes::

    saved_models/NAME/
      1/                                   # next free integer version
        saved_model.pb
        variables/
        assets.extra/
          tf_serving_warmup_requests       # TFRecord of PredictionLog, one per signature
          hdml_tf_metadata.json            # config, class split, metrics, versions

Only the embedder (backbone F, head H, L2 normalisation) is exported: the generator
and the classifier exist only for training. Two signatures, both returning
``embedding`` (float32, L2-normalised, shape ``(batch, embedding_dim)``):

* ``serving_default``: input ``images``, float32 ``(batch, crop, crop, 3)``, RGB in
  0-255, already resized and centre-cropped; the backbone's normalisation (e.g. Caffe
  BGR mean subtraction) runs inside the graph.
* ``serve_bytes``: input ``image_bytes``, ``tf.string`` ``(batch,)`` of encoded JPEG,
  PNG, GIF (first frame), BMP or WebP files; decoding, resizing and centre-cropping
  run inside the graph with the same ops evaluation uses
  (``hdml_tf.data.preprocess.decode_image``, ``eval_transform``, ``normalize``).

Limits (export options, stored in the metadata): a request of more than ``max_batch``
images is refused by either signature, and ``serve_bytes`` reads every image's width
and height from its header and refuses, before decoding anything, an image over
``max_pixels`` or one whose header cannot be read. The refusal is an
``INVALID_ARGUMENT`` error naming the batch index, the declared size and the limit;
the next request is served normally.

The SavedModel itself is written by ``keras.export.ExportArchive`` (one endpoint per
signature, see :func:`build_archive`). On top of it this module adds what TF Serving
deployments need: the export is written to a hidden temporary directory beside the
version directories and renamed into place only when it is complete (and, unless
``verify=False``, only after the written SavedModel has been reloaded and checked
against the Keras embedder), so TF Serving, which polls the base directory for
integer names, never sees a half-written version; the warmup file; the metadata; the
input limits and the batch-index errors.

Models trained under mixed precision are rebuilt and switched to a float32 dtype
policy before export (the weights are float32 already), so the SavedModel computes
and serves float32; models created under a distribution strategy export their plain
weights.

From Python: :func:`export_run` (what ``hdml-tf export`` does, with its report lines),
:func:`export_checkpoint` (a workdir or ``.keras`` file) and :func:`export_embedder`
(a model in memory).
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import platform
import shutil
import tempfile
import warnings

import numpy as np
import tensorflow as tf

from hdml_tf.models import HDML
from hdml_tf.networks import Embedder

# Signature and tensor names: the serving contract, documented in docs/serving.md.
SIGNATURE_IMAGES = "serving_default"
SIGNATURE_BYTES = "serve_bytes"
INPUT_IMAGES = "images"
INPUT_BYTES = "image_bytes"
OUTPUT_EMBEDDING = "embedding"
WARMUP_FILENAME = "tf_serving_warmup_requests"
METADATA_FILENAME = "hdml_tf_metadata.json"
METADATA_FORMAT = "hdml_tf.export/1"

_TEMP_PREFIX = ".tmp-export-"
_WARMUP_MODES = ("auto", "require", "skip")
_SERVING_API_HINT = ("the warmup file needs tensorflow-serving-api; install it with "
                     "`pip install --no-deps tensorflow-serving-api` (a plain install "
                     "pulls a second TensorFlow)")

# First bytes of the formats tf.io.decode_image accepts; checked before decoding so
# that the error names the batch index of the bad input (the decoders' own errors
# do not say which element of a batch failed).
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")

# Images are resized to ~256 px before the model sees them, so no input needs many
# pixels; 50 MP still takes a 48 MP (8000 x 6000) phone photograph or an 8K frame
# (33 MP) as it comes. Decoding one costs at most 150 MB as uint8 plus 600 MB for the
# float32 copy the resize makes; a 20,000 x 20,000 PNG (400 MP, 388 KB on the wire)
# would cost 6.9 GB.
DEFAULT_MAX_PIXELS = 50_000_000
# Evaluation's batch size (hdml_tf.data.eval_dataset); clients with more images send
# several requests. Set TF Serving's --batching_parameters_file max_batch_size to at
# most this, since merged batches reach the model as one.
DEFAULT_MAX_BATCH = 128


class ExportError(RuntimeError):
    """The export could not be made; nothing was left in the output directory."""


# --------------------------------------------------------------------- checkpoints


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _model_file(checkpoint):
    """``(model file, directory of config.json/metrics.json)`` of a checkpoint path.

    Raises:
      ExportError: the path does not exist, is a directory that is not a training
        workdir, or a file that is not ``.keras``.
    """
    checkpoint = os.fspath(checkpoint)
    if os.path.isdir(checkpoint):
        model_path = os.path.join(checkpoint, "model.keras")
        if not (os.path.isfile(model_path)
                or os.path.isfile(os.path.join(checkpoint, "config.json"))):
            raise ExportError(f"{checkpoint!r} is a directory but has no model.keras "
                              f"(expected {model_path!r}); pass a training workdir or a "
                              ".keras file")
        return model_path, checkpoint
    if os.path.isfile(checkpoint):
        if not checkpoint.endswith(".keras"):
            raise ExportError(f"{checkpoint!r}: expected a training workdir or a .keras "
                              "file")
        return checkpoint, os.path.dirname(os.path.abspath(checkpoint))
    raise ExportError(f"checkpoint {checkpoint!r} does not exist")


def _load_model(checkpoint, model_path):
    """The Keras model of a training workdir (through the one workdir loader,
    ``hdml_tf.checkpoints.restore_model``) or of a ``.keras`` file."""
    import keras

    from hdml_tf import checkpoints

    try:
        if os.path.isdir(checkpoint):
            return checkpoints.restore_model(os.fspath(checkpoint))
        return keras.saving.load_model(model_path, compile=False)
    except Exception as err:  # keep Keras' message, add which file it was
        raise ExportError(f"could not load {model_path!r}: {err}") from err


def _embedder_of(model, where):
    """``(embedder, image_shape)`` of an HDML model or an Embedder."""
    if isinstance(model, HDML):
        return model.embedder, getattr(model, "image_shape", None)
    if isinstance(model, Embedder):
        return model, None
    raise ExportError(f"{where} holds a {type(model).__name__}, not an hdml_tf HDML "
                      "model or Embedder")


def _read_run_files(directory, config_path=None):
    """``(config, split_info, metrics)`` from a run directory's JSON files.

    ``hdml-tf train`` writes ``config.json`` as ``{"config": <experiment config>,
    "num_classes": ..., "class_names": {split: [...]}}``; a bare experiment config is
    accepted too (then ``split_info`` is None). Each is None when its file is absent.

    Raises:
      ExportError: an explicit ``config_path`` does not exist.
    """
    config_file = config_path or os.path.join(directory, "config.json")
    raw = _read_json(config_file) if os.path.isfile(config_file) else None
    if config_path and raw is None:
        raise ExportError(f"config file {config_path!r} does not exist")
    split_info, config = None, raw
    if isinstance(raw, dict) and isinstance(raw.get("config"), dict):
        config = raw["config"]
        split_info = {k: v for k, v in raw.items() if k != "config"}
    metrics_file = os.path.join(directory, "metrics.json")
    metrics = _read_json(metrics_file) if os.path.isfile(metrics_file) else None
    return config, split_info, metrics


def load_checkpoint(checkpoint, config_path=None, model=None, config=None):
    """Load the embedder and what is known about it from a workdir or a .keras file.

    Args:
      checkpoint: a training workdir (holding ``model.keras`` and usually
        ``config.json`` and ``metrics.json``) or a ``.keras`` file of an ``HDML`` model
        or an ``Embedder``. For a file, ``config.json``/``metrics.json`` in the same
        directory are used when present.
      config_path: an explicit experiment config JSON (overrides the one found).
      model: the HDML model or Embedder ``checkpoint`` holds, when the caller has it
        in memory: then nothing is loaded from the model file.
      config: the experiment config (a dict or an object with ``to_dict()``) to use
        instead of the one in the JSON file; the class split is still read from it.

    Returns:
      dict with ``embedder`` (the Keras Embedder), ``image_shape`` (``(None, H, W, 3)``
      or None), ``config`` (the experiment config dict, or None), ``class_split``
      (dataset, split settings, ``num_classes`` and ``class_names`` per split as far
      as recorded, or None), ``metrics`` (dict or None), ``source``.

    Raises:
      ExportError: the path does not exist, a directory has neither ``model.keras``
        nor ``config.json``, the model cannot be loaded, or it is neither an HDML
        model nor an Embedder.
    """
    model_path, directory = _model_file(checkpoint)
    if model is None:
        model = _load_model(checkpoint, model_path)
    embedder, image_shape = _embedder_of(model, repr(model_path))
    found, split_info, metrics = _read_run_files(directory, config_path)
    if config is None:
        config = found
    elif hasattr(config, "to_dict"):
        config = config.to_dict()
    return {"embedder": embedder, "image_shape": image_shape, "config": config,
            "class_split": _class_split(config, split_info), "metrics": metrics,
            "source": os.path.abspath(model_path)}


def _config_get(config, section, key):
    """``config[section][key]``, also accepting flat dotted keys; None if absent."""
    if not config:
        return None
    value = config.get(section, {})
    if isinstance(value, dict) and key in value:
        return value[key]
    return config.get(f"{section}.{key}")


def _pair(size, what):
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        return (int(size), int(size))
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return (int(size[0]), int(size[1]))
    raise ExportError(f"{what}={size!r}: expected an int or (height, width)")


def _class_split(config, split_info=None):
    """Which classes the model was trained and evaluated on.

    Args:
      config: the experiment config dict (its ``data.name`` and ``data.val_fraction``
        say how the classes were split) or None.
      split_info: what the training run recorded beside the config (``num_classes``,
        ``class_names`` per split), or None.

    Returns:
      dict, or None when nothing is known.
    """
    split = {}
    data = config.get("data") if isinstance(config, dict) else None
    if isinstance(data, dict):
        for key, name in (("name", "dataset"), ("val_fraction", "val_fraction")):
            if key in data:
                split[name] = data[key]
    if split_info:
        split.update(split_info)
    return split or None


# ----------------------------------------------------------------- float32 rebuild


def _layers(model):
    """Every Keras layer of ``model``, itself included.

    Keras 3 has no public recursive layer iterator: ``Model.layers`` is one level
    deep, and ``tf.train.TrackableView`` misses layers held in Python lists (it finds
    7 of SmallCNN's 27 layers, 13 of InceptionV1's 87), so this is Keras' own walk.
    """
    return list(model._flatten_layers(include_self=True, recursive=True))


def _policy_names(model):
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
    import keras

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
    bad = [p for p in _policy_names(clone) if p != "float32"]
    if bad:
        raise ExportError(f"rebuilt embedder still has dtype policies {bad}; export "
                          "serves float32 only")
    return clone


# ---------------------------------------------------------------- the serving graph


def _check_bytes(image_bytes):
    """Assert op: every element is non-empty and starts like a decodable image.

    The failure message names the batch indices of the bad inputs, split into empty
    strings and unrecognised formats.
    """
    padded = tf.strings.join([image_bytes, tf.constant(b"\0" * 12)])
    head = tf.strings.substr(padded, 0, 8)
    known = tf.zeros_like(image_bytes, dtype=tf.bool)
    for magic in _MAGIC:
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


def _check_limits(limits, what):
    """``limits`` as ints >= 1, else ExportError."""
    checked = {}
    for name, value in limits.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ExportError(f"{name}={value!r}: expected an integer >= 1 ({what})")
        checked[name] = int(value)
    return checked


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
    """

    def __init__(self, embedder, resize, crop, preprocessing,
                 max_pixels=DEFAULT_MAX_PIXELS, max_batch=DEFAULT_MAX_BATCH):
        from hdml_tf.data import preprocess

        self._preprocess = preprocess
        self.embedder = embedder
        self.resize, self.crop = tuple(resize), tuple(crop)
        self.preprocessing = preprocess.preprocessing_mode(preprocessing)
        self.embedding_dim = int(embedder.embedding_dim)
        self.max_pixels, self.max_batch = int(max_pixels), int(max_batch)

    def embed(self, images):
        """``{"embedding": z}`` for float32 RGB 0-255 images of the crop size."""
        def run():
            z = self.embedder(self._preprocess.normalize(images, self.preprocessing),
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
        image = self._preprocess.decode_image(contents, channels=3)
        return self._preprocess.eval_transform(image, resize=self.resize, crop=self.crop)

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
                with tf.control_dependencies([self._preprocess.check_image_size(
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
    import keras

    archive = keras.export.ExportArchive()
    archive.track(graph.embedder)
    archive.add_endpoint(SIGNATURE_IMAGES, graph.serve_images, input_signature=[
        tf.TensorSpec([None, graph.crop[0], graph.crop[1], 3], tf.float32,
                      name=INPUT_IMAGES)])
    archive.add_endpoint(SIGNATURE_BYTES, graph.serve_bytes, input_signature=[
        tf.TensorSpec([None], tf.string, name=INPUT_BYTES)])
    return archive


# ------------------------------------------------------------------------- extras


def _probe_images(crop, count, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 255.0, size=(count,) + tuple(crop) + (3,)).astype(np.float32)


def _encode_png(image):
    return tf.io.encode_png(tf.cast(tf.round(image), tf.uint8)).numpy()


def write_warmup(path, model_name, crop, probe_bytes):
    """Write TF Serving warmup data: one PredictRequest per signature, batch 1.

    Args:
      path: the ``assets.extra/tf_serving_warmup_requests`` file to write.
      model_name: the TF Serving model name (the base directory's name).
      crop: (H, W) of the ``serving_default`` input.
      probe_bytes: one encoded image (bytes) for ``serve_bytes``.

    Raises:
      ImportError: tensorflow-serving-api is not installed.
    """
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    requests = [
        (SIGNATURE_IMAGES, INPUT_IMAGES,
         tf.make_tensor_proto(np.full((1,) + tuple(crop) + (3,), 127.0, np.float32))),
        (SIGNATURE_BYTES, INPUT_BYTES,
         tf.make_tensor_proto(np.array([probe_bytes], dtype=object), dtype=tf.string)),
    ]
    with tf.io.TFRecordWriter(path) as writer:
        for signature, input_name, tensor in requests:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
            request.inputs[input_name].CopyFrom(tensor)
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def _json_safe(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist")
                                 else str(o)))


def _versions():
    import keras

    from hdml_tf import __version__

    return {"hdml_tf": __version__, "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def _check_clone(embedder, clone, crop, preprocessing, source_policies):
    """The float32 rebuild must compute what the trained embedder computes.

    Exact up to float32 rounding for a float32 source; for a mixed-precision source
    the source itself is only float16-accurate, so the bound is loose: it catches a
    wrong weight mapping, not rounding.
    """
    from hdml_tf.data import preprocess

    images = preprocess.normalize(tf.constant(_probe_images(crop, 2, seed=2)), preprocessing)
    want = tf.cast(embedder(images, training=False), tf.float32).numpy()
    got = clone(images, training=False).numpy()
    atol = 1e-5 if source_policies == ["float32"] else 5e-2
    diff = float(np.max(np.abs(want - got)))
    if not diff <= atol:
        raise ExportError(f"the float32 rebuild of the embedder differs from the trained "
                          f"one by {diff:.3g} (> {atol}); the weights were not copied "
                          "faithfully")


def _verify(path, graph, probe_images, probe_bytes, atol=1e-4):
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


# ------------------------------------------------------------------------ layout


def existing_versions(base_dir):
    """Sorted integer version directories under a TF Serving model base directory."""
    if not os.path.isdir(base_dir):
        return []
    return sorted(int(name) for name in os.listdir(base_dir)
                  if name.isdigit() and os.path.isdir(os.path.join(base_dir, name)))


def next_version(base_dir):
    """1 for a new base directory, else one more than the highest version."""
    versions = existing_versions(base_dir)
    return versions[-1] + 1 if versions else 1


def _move_into_place(temp_dir, base_dir, version):
    """Rename the finished export to ``base_dir/<version>``, never replacing one.

    With ``version`` None the next free integer is taken, retrying if another export
    claimed it in the meantime.
    """
    explicit = version is not None
    while True:
        number = int(version) if explicit else next_version(base_dir)
        target = os.path.join(base_dir, str(number))
        if os.path.exists(target):
            if explicit:
                raise ExportError(f"version {number} already exists at {target!r}; "
                                  "versions are never overwritten")
            continue
        try:
            os.rename(temp_dir, target)  # atomic within one filesystem
            return target
        except OSError:
            if explicit or not os.path.exists(target):
                raise


# ------------------------------------------------------------------------ export


def _checked_arguments(model, resize, crop, preprocessing, warmup, limits):
    """``(embedder, resize, crop, preprocessing, limits)`` checked, else ExportError."""
    from hdml_tf.data import preprocess

    if warmup not in _WARMUP_MODES:
        raise ExportError(f"warmup={warmup!r}: expected one of {_WARMUP_MODES}")
    embedder = model.embedder if isinstance(model, HDML) else model
    if not isinstance(embedder, Embedder):
        raise ExportError(f"expected an hdml_tf Embedder or HDML model, got "
                          f"{type(model).__name__}")
    resize, crop = _pair(resize, "resize"), _pair(crop, "crop")
    if crop is None or resize is None:
        raise ExportError("resize and crop must be given (the evaluation protocol's "
                          "sizes, e.g. resize=256, crop=227)")
    if crop[0] > resize[0] or crop[1] > resize[1]:
        raise ExportError(f"crop {crop} is larger than resize {resize}")
    limits = _check_limits(limits, "the serving limits")
    preprocessing = preprocess.preprocessing_mode(
        preprocessing or getattr(embedder, "preprocessing", None) or "none")
    if warmup == "require":
        try:
            importlib.import_module("tensorflow_serving.apis.prediction_log_pb2")
        except ImportError as err:
            raise ExportError(_SERVING_API_HINT) from err
    return embedder, resize, crop, preprocessing, limits


def _signature_metadata(graph):
    """The two signatures' inputs and outputs, as stored in the metadata."""
    output = {OUTPUT_EMBEDDING: {"dtype": "float32", "shape": [-1, graph.embedding_dim]}}
    return {
        SIGNATURE_IMAGES: {
            "inputs": {INPUT_IMAGES: {"dtype": "float32",
                                      "shape": [-1, graph.crop[0], graph.crop[1], 3],
                                      "meaning": "RGB, 0-255, resized and centre-cropped"}},
            "outputs": output},
        SIGNATURE_BYTES: {
            "inputs": {INPUT_BYTES: {"dtype": "string", "shape": [-1],
                                     "meaning": "encoded JPEG/PNG/GIF/BMP/WebP"}},
            "outputs": output},
    }


def _metadata(graph, model_name, *, source, config, class_split, metrics,
              source_policies, warmup_written):
    """``assets.extra/hdml_tf_metadata.json``: what was exported, from what, how."""
    return {
        "format": METADATA_FORMAT,
        "model_name": model_name,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "source": source,
        "signatures": _signature_metadata(graph),
        "preprocessing": {"resize": list(graph.resize), "crop": list(graph.crop),
                          "normalize": graph.preprocessing, "interpolation": "bilinear"},
        "limits": {
            "max_pixels": graph.max_pixels,
            "max_pixels_applies_to": f"{SIGNATURE_BYTES}: each image, height x width as "
                                     "declared by its header, checked before decoding",
            "max_batch": graph.max_batch,
            "max_batch_applies_to": "both signatures: images per request",
        },
        "embedding_dim": graph.embedding_dim,
        "l2_normalized": True,
        "serving_dtype": "float32",
        "source_dtype_policies": source_policies,
        "warmup_requests": warmup_written,
        "config": config,
        "class_split": class_split if class_split is not None else _class_split(config),
        "metrics": metrics,
        "versions": _versions(),
    }


def _write_warmup_file(extra, model_name, crop, probe_bytes, warmup):
    """Write the warmup file unless ``warmup == "skip"``; True if it was written."""
    if warmup == "skip":
        return False
    try:
        write_warmup(os.path.join(extra, WARMUP_FILENAME), model_name, crop, probe_bytes)
        return True
    except ImportError as err:
        if warmup == "require":
            raise ExportError(_SERVING_API_HINT) from err
        warnings.warn(f"no warmup file written: {_SERVING_API_HINT}", stacklevel=4)
        return False


def _write_version(temp_dir, graph, model_name, warmup, verify, info):
    """Write the SavedModel, the warmup file and the metadata into ``temp_dir``, then
    (with ``verify``) reload it and compare it with ``graph``."""
    build_archive(graph).write_out(temp_dir, verbose=False)
    extra = os.path.join(temp_dir, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    probe_images = _probe_images(graph.crop, 2)
    probe_bytes = _encode_png(_probe_images(graph.resize, 1, seed=1)[0])
    written = _write_warmup_file(extra, model_name, graph.crop, probe_bytes, warmup)
    metadata = _metadata(graph, model_name, warmup_written=written, **info)
    with open(os.path.join(extra, METADATA_FILENAME), "w", encoding="utf-8") as f:
        json.dump(_json_safe(metadata), f, indent=2, sort_keys=True)
    if verify:
        _verify(temp_dir, graph, probe_images, probe_bytes)


def _base_dir(out_dir, version):
    """The model base directory, created; an explicit existing version is refused."""
    base_dir = os.path.abspath(os.fspath(out_dir))
    os.makedirs(base_dir, exist_ok=True)
    if version is not None and os.path.exists(os.path.join(base_dir, str(int(version)))):
        raise ExportError(f"version {int(version)} already exists in {base_dir!r}; "
                          "versions are never overwritten")
    return base_dir


def export_embedder(model, out_dir, *, resize, crop, preprocessing=None, config=None,
                    class_split=None, metrics=None, source=None, version=None,
                    warmup="auto", verify=True, max_pixels=DEFAULT_MAX_PIXELS,
                    max_batch=DEFAULT_MAX_BATCH):
    """Export an embedder (or an HDML model's embedder) to ``out_dir/<version>``.

    Args:
      model: a built ``hdml_tf.networks.Embedder`` or ``HDML`` (only its embedder is
        exported). Mixed-precision and distributed models are accepted.
      out_dir: the TF Serving model base directory, e.g. ``saved_models/cub_npair``.
      resize: int or (H, W): ``serve_bytes`` resizes decoded images to this first.
      crop: int or (H, W): the centre crop, i.e. the model's input size.
      preprocessing: a ``normalize`` mode ("caffe", "tf", "torch", "none"); default
        ``model.preprocessing``.
      config, class_split, metrics, source: stored in the metadata (the experiment
        config dict; the class split, by default what ``config`` says about it; the
        evaluation metrics; where the model came from).
      version: an explicit version number (must not exist); default the next one.
      warmup: "auto" (write the warmup file if tensorflow-serving-api is installed,
        else warn), "require" (fail without it) or "skip".
      verify: reload the written SavedModel and check both signatures against the
        Keras embedder before moving it into place.
      max_pixels: ``serve_bytes`` refuses, before decoding, an image whose header
        declares more pixels (height x width); default ``DEFAULT_MAX_PIXELS``.
      max_batch: both signatures refuse a request of more images; default
        ``DEFAULT_MAX_BATCH``.

    Returns:
      The path of the new version directory.

    Raises:
      ExportError: bad arguments, a failed check, or an existing explicit version.
        On any failure (or interruption) nothing is left in ``out_dir``.
    """
    embedder, resize, crop, preprocessing, limits = _checked_arguments(
        model, resize, crop, preprocessing, warmup,
        {"max_pixels": max_pixels, "max_batch": max_batch})
    source_policies = _policy_names(embedder)
    clone = serving_embedder(embedder, crop)
    if verify:
        _check_clone(embedder, clone, crop, preprocessing, source_policies)
    graph = ServingGraph(clone, resize, crop, preprocessing, **limits)
    base_dir = _base_dir(out_dir, version)
    # Same parent as the version directories, so the final rename is atomic; the dot
    # prefix keeps TF Serving (which loads integer names only) from looking at it.
    temp_dir = tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=base_dir)
    try:
        _write_version(temp_dir, graph, os.path.basename(base_dir), warmup, verify, dict(
            source=source, config=config, class_split=class_split, metrics=metrics,
            source_policies=source_policies))
        return _move_into_place(temp_dir, base_dir, version)
    finally:
        # Reached on success too: then temp_dir has been renamed and is gone.
        if os.path.exists(temp_dir):
            shutil.rmtree(temp_dir, ignore_errors=True)


def _preprocessing_of(embedder, config):
    """The normalisation mode: the embedder's, else ``model.backbone`` of the config."""
    from hdml_tf.data import preprocess

    backbone = _config_get(config, "model", "backbone")
    own = getattr(embedder, "preprocessing", None)
    try:
        from_config = preprocess.preprocessing_mode(backbone) if backbone else None
    except ValueError:
        from_config = None
    # A keras.applications backbone saved by older code lost its `preprocessing`
    # attribute and reports "none"; the config still names it.
    if own in (None, "none") and from_config not in (None, "none"):
        warnings.warn(f"embedder reports preprocessing {own!r}; using {from_config!r} "
                      f"from the config's backbone {backbone!r}", stacklevel=3)
        return from_config
    return own or from_config


def _sizes_of(loaded, resize, crop, checkpoint):
    """``(resize, crop)``: the arguments, else ``data.resize``/``data.crop`` of the
    config, and for ``crop`` the HDML model's build shape."""
    config, shape = loaded["config"], loaded["image_shape"]
    crop = _pair(crop if crop is not None else _config_get(config, "data", "crop"), "crop")
    if crop is None and shape and None not in tuple(shape)[1:3]:
        crop = tuple(int(d) for d in tuple(shape)[1:3])
    resize = _pair(resize if resize is not None else _config_get(config, "data", "resize"),
                   "resize")
    if crop is None or resize is None:
        raise ExportError(f"cannot tell the evaluation sizes of {checkpoint!r} (no "
                          "config.json with data.resize/data.crop beside it); pass "
                          "--resize and --crop")
    return resize, crop


def export_checkpoint(checkpoint, out_dir, *, resize=None, crop=None, preprocessing=None,
                      config_path=None, version=None, warmup="auto", verify=True,
                      max_pixels=DEFAULT_MAX_PIXELS, max_batch=DEFAULT_MAX_BATCH,
                      model=None, config=None):
    """Export the embedder of a training workdir or ``.keras`` file.

    Sizes come from, in order: the arguments, the experiment config (``data.resize``,
    ``data.crop``), and for ``crop`` the HDML model's build shape. The normalisation
    mode comes from the argument, else the embedder, else ``model.backbone`` of the
    config. ``model`` and ``config``: what the checkpoint holds, when the caller has
    it in memory (see :func:`load_checkpoint`). See :func:`export_embedder` for the
    other arguments.

    Returns:
      The path of the new version directory.
    """
    loaded = load_checkpoint(checkpoint, config_path=config_path, model=model,
                             config=config)
    resize, crop = _sizes_of(loaded, resize, crop, checkpoint)
    if preprocessing is None:
        preprocessing = _preprocessing_of(loaded["embedder"], loaded["config"])
    return export_embedder(loaded["embedder"], out_dir, resize=resize, crop=crop,
                           preprocessing=preprocessing, config=loaded["config"],
                           class_split=loaded["class_split"],
                           metrics=loaded["metrics"], source=loaded["source"],
                           version=version, warmup=warmup, verify=verify,
                           max_pixels=max_pixels, max_batch=max_batch)


def display_path(path):
    """``path`` relative to the working directory when it lies below it (as a user
    typed it), else absolute."""
    relative = os.path.relpath(path)
    return relative if not relative.startswith(os.pardir) else os.path.abspath(path)


def export_run(checkpoint, out_dir, *, log=print, model=None, config=None, **options):
    """``hdml-tf export`` as a library call: export, then log what was written.

    Args:
      checkpoint: a training workdir or a ``.keras`` file (see :func:`load_checkpoint`).
      out_dir: the TF Serving model base directory, e.g. ``saved_models/cub_npair``.
      log: called with each of the three report lines (the path, the signatures, the
        limits); ``hdml-tf export`` prints them.
      model: the HDML model or Embedder saved at ``checkpoint``, if the caller has it
        in memory (training does): then ``model.keras`` is not read again.
      config: the experiment config of that model (a ``Config`` or a dict), used
        instead of the one in ``config.json`` (whose class split is still read).
      **options: ``resize``, ``crop``, ``preprocessing``, ``config_path``,
        ``version``, ``warmup``, ``verify``, ``max_pixels``, ``max_batch`` as for
        :func:`export_checkpoint`.

    Returns:
      The path of the new version directory.

    Raises:
      ExportError: the export could not be made (nothing was left in ``out_dir``).
    """
    path = export_checkpoint(checkpoint, out_dir, model=model, config=config, **options)
    max_batch = options.get("max_batch", DEFAULT_MAX_BATCH)
    max_pixels = options.get("max_pixels", DEFAULT_MAX_PIXELS)
    log(f"exported {display_path(path)}")
    log(f"  signatures: {SIGNATURE_IMAGES}({INPUT_IMAGES}) and "
        f"{SIGNATURE_BYTES}({INPUT_BYTES}) -> {OUTPUT_EMBEDDING}")
    log(f"  limits: max_batch={max_batch} images per request, "
        f"max_pixels={max_pixels} per image")
    return path
