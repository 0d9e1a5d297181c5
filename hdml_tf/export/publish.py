"""TF Serving publishing: a new integer version of a model base directory, complete or
absent.

The export is written to a hidden temporary directory beside the version directories
(TF Serving loads integer names only) and renamed into place only when it is complete
and, unless ``verify=False``, reloaded and checked against the Keras embedder; with it
go the warmup requests (``assets.extra/tf_serving_warmup_requests``) and the metadata
(``assets.extra/hdml_tf_metadata.json``: config, class split, metrics, limits, versions).
"""

import datetime
import importlib
import json
import os
import platform
import shutil
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf

from hdml_tf.data import preprocess
from hdml_tf.export import graph as graph_lib
from hdml_tf.serving_contract import (DEFAULT_MAX_BATCH, DEFAULT_MAX_PIXELS, INPUT_BYTES,
                                      INPUT_IMAGES, METADATA_FILENAME, METADATA_FORMAT,
                                      OUTPUT_EMBEDDING, SERVING_API_HINT, SIGNATURE_BYTES,
                                      SIGNATURE_IMAGES, TEMP_PREFIX, WARMUP_FILENAME,
                                      WARMUP_MODES, ExportError, size_pair)
from hdml_tf.models import HDML
from hdml_tf.networks import Embedder
from hdml_tf.workdir import WorkdirLock


def class_split_of(config, split_info=None):
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


def check_limits(limits, what):
    """``limits`` as ints >= 1, else ExportError."""
    checked = {}
    for name, value in limits.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ExportError(f"{name}={value!r}: expected an integer >= 1 ({what})")
        checked[name] = int(value)
    return checked




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
    from hdml_tf import __version__

    return {"hdml_tf": __version__, "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


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


def _checked_arguments(model, resize, crop, preprocessing, warmup, limits):
    """``(embedder, resize, crop, preprocessing, limits)`` checked, else ExportError."""
    if warmup not in WARMUP_MODES:
        raise ExportError(f"warmup={warmup!r}: expected one of {WARMUP_MODES}")
    embedder = model.embedder if isinstance(model, HDML) else model
    if not isinstance(embedder, Embedder):
        raise ExportError(f"expected an hdml_tf Embedder or HDML model, got "
                          f"{type(model).__name__}")
    resize, crop = size_pair(resize, "resize"), size_pair(crop, "crop")
    if crop is None or resize is None:
        raise ExportError("resize and crop must be given (the evaluation protocol's "
                          "sizes, e.g. resize=256, crop=227)")
    if crop[0] > resize[0] or crop[1] > resize[1]:
        raise ExportError(f"crop {crop} is larger than resize {resize}")
    limits = check_limits(limits, "the serving limits")
    preprocessing = preprocess.preprocessing_mode(
        preprocessing or getattr(embedder, "preprocessing", None) or "none")
    if warmup == "require":
        try:
            importlib.import_module("tensorflow_serving.apis.prediction_log_pb2")
        except ImportError as err:
            raise ExportError(SERVING_API_HINT) from err
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
              source_policies, warmup_written, head_statistics):
    """``assets.extra/hdml_tf_metadata.json``: what was exported, from what, how."""
    return {
        "format": METADATA_FORMAT,
        "model_name": model_name,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "source": source,
        "signatures": _signature_metadata(graph),
        "preprocessing": {"resize": list(graph.resize), "crop": list(graph.crop),
                          "crop_rounding": graph.crop_rounding,
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
        "class_split": class_split if class_split is not None else class_split_of(config),
        "metrics": metrics,
        # The head's BatchNorm statistics: as trained, or re-estimated from the real
        # training images (hdml_tf.training.head_statistics).
        "head_statistics": (dict(head_statistics, source="real training images")
                            if head_statistics else {"source": "as trained"}),
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
            raise ExportError(SERVING_API_HINT) from err
        warnings.warn(f"no warmup file written: {SERVING_API_HINT}", stacklevel=4)
        return False


def _write_version(temp_dir, graph, model_name, warmup, verify, info):
    """Write the SavedModel, the warmup file and the metadata into ``temp_dir``, then
    (with ``verify``) reload it and compare it with ``graph``."""
    graph_lib.build_archive(graph).write_out(temp_dir, verbose=False)
    extra = os.path.join(temp_dir, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    probe_images = graph_lib.probe_images_of(graph.crop, 2)
    probe_bytes = graph_lib.encode_png(graph_lib.probe_images_of(graph.resize, 1, seed=1)[0])
    written = _write_warmup_file(extra, model_name, graph.crop, probe_bytes, warmup)
    metadata = _metadata(graph, model_name, warmup_written=written, **info)
    with open(os.path.join(extra, METADATA_FILENAME), "w", encoding="utf-8") as f:
        json.dump(_json_safe(metadata), f, indent=2, sort_keys=True)
    if verify:
        graph_lib.verify_saved_model(temp_dir, graph, probe_images, probe_bytes)


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
                    max_batch=DEFAULT_MAX_BATCH, head_statistics=None):
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
      head_statistics: how the head's BatchNorm statistics were re-estimated (a dict,
        e.g. ``images``), or None when they are as trained; stored in the metadata.

    Returns:
      The path of the new version directory.

    Raises:
      ExportError: bad arguments, a failed check, or an existing explicit version.
        On any failure (or interruption) nothing is left in ``out_dir``.
    """
    embedder, resize, crop, preprocessing, limits = _checked_arguments(
        model, resize, crop, preprocessing, warmup,
        {"max_pixels": max_pixels, "max_batch": max_batch})
    source_policies = graph_lib.policy_names(embedder)
    clone = graph_lib.serving_embedder(embedder, crop)
    if verify:
        graph_lib.check_clone(embedder, clone, crop, preprocessing, source_policies)
    data = (config or {}).get("data") if isinstance(config, dict) else None
    rounding = (data or {}).get("center_crop_rounding", "floor")  # as evaluation crops
    graph = graph_lib.ServingGraph(clone, resize, crop, preprocessing,
                                   crop_rounding=rounding, **limits)
    return _publish(graph, _base_dir(out_dir, version), version, warmup, verify, dict(
        source=source, config=config, class_split=class_split, metrics=metrics,
        source_policies=source_policies, head_statistics=head_statistics))


def _publish(graph, base_dir, version, warmup, verify, info):
    """Write the new version beside the others and rename it into place, holding the
    base directory's lock (one exporter at a time)."""
    with WorkdirLock(base_dir, what="hdml-tf export"):
        # Same parent as the version directories, so the final rename is atomic; the
        # dot prefix keeps TF Serving (which loads integer names only) from looking at it.
        temp_dir = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=base_dir)
        try:
            _write_version(temp_dir, graph, os.path.basename(base_dir), warmup, verify, info)
            return _move_into_place(temp_dir, base_dir, version)
        except OSError as error:  # a full disk: no version appears
            raise ExportError(f"could not write a version of {base_dir}: "
                              f"{error.strerror or error}; no version was added") from None
        finally:
            # Reached on success too: then temp_dir has been renamed and is gone.
            if os.path.exists(temp_dir):
                shutil.rmtree(temp_dir, ignore_errors=True)
