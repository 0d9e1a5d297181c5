"""What an export is made from: a training workdir or a ``.keras`` file, with what the
run recorded beside it (config, class split, metrics), or a model in memory."""

import json
import os
import warnings

import keras

from hdml_tf import checkpoints
from hdml_tf.data import preprocess
from hdml_tf.serving_contract import (DEFAULT_MAX_BATCH, DEFAULT_MAX_PIXELS, INPUT_BYTES,
                                      INPUT_IMAGES, OUTPUT_EMBEDDING, SIGNATURE_BYTES,
                                      SIGNATURE_IMAGES, ExportError, size_pair)
from hdml_tf.export.publish import class_split_of, export_embedder
from hdml_tf.models import HDML
from hdml_tf.networks import Embedder


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
            "class_split": class_split_of(config, split_info), "metrics": metrics,
            "source": os.path.abspath(model_path)}


def _config_get(config, section, key):
    """``config[section][key]``, also accepting flat dotted keys; None if absent."""
    if not config:
        return None
    value = config.get(section, {})
    if isinstance(value, dict) and key in value:
        return value[key]
    return config.get(f"{section}.{key}")




def _preprocessing_of(embedder, config):
    """The normalisation mode: the embedder's, else ``model.backbone`` of the config."""
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
    crop = size_pair(crop if crop is not None else _config_get(config, "data", "crop"), "crop")
    if crop is None and shape and None not in tuple(shape)[1:3]:
        crop = tuple(int(d) for d in tuple(shape)[1:3])
    resize = size_pair(resize if resize is not None else _config_get(config, "data", "resize"),
                   "resize")
    if crop is None or resize is None:
        raise ExportError(f"cannot tell the evaluation sizes of {checkpoint!r} (no "
                          "config.json with data.resize/data.crop beside it); pass "
                          "--resize and --crop")
    return resize, crop


def export_checkpoint(checkpoint, out_dir, *, resize=None, crop=None, preprocessing=None,
                      config_path=None, version=None, warmup="auto", verify=True,
                      max_pixels=DEFAULT_MAX_PIXELS, max_batch=DEFAULT_MAX_BATCH,
                      model=None, config=None, head_statistics=None):
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
                           max_pixels=max_pixels, max_batch=max_batch,
                           head_statistics=head_statistics)


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
        ``version``, ``warmup``, ``verify``, ``max_pixels``, ``max_batch``,
        ``head_statistics`` as for :func:`export_checkpoint`.

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
