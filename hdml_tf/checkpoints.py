"""Checkpoints of a training run: what is saved, how it is restored, how a workdir loads.

A checkpoint (``<workdir>/checkpoints/ckpt-<step>``) is a ``tf.train.Checkpoint`` of
every variable, listed explicitly and keyed by its Keras path (Keras 3 objects are only
partly visible to tf.train.Checkpoint's object-graph tracking: a nested backbone's
BatchNorm statistics were missed):

  model                 weights and HDML's running statistics (``model.variables``)
  metric_optimizer,     each optimizer's state (iterations, learning rate, slots)
  generator_optimizer,
  classifier_optimizer
  step                  the global step the checkpoint was written at

Keras numbers optimizer names per process (``adam``, ``adam_1``, ...), so the same
optimizer has another path in another run of ``train`` in one process; optimizer
variables are keyed with those numbers removed, and `restore` matches checkpoints
written with numbered names (before this module) the same way.

``model.keras`` beside the checkpoints is replaced atomically (`atomic_save`);
`restore_model` loads a workdir from it, or from ``config.json`` plus the latest
checkpoint when a run was killed before writing it.
"""

import json
import os
import re
import tempfile

import keras
import tensorflow as tf

OPTIMIZERS = ("metric_optimizer", "generator_optimizer", "classifier_optimizer")
_VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


def _by_path(variables, key=lambda path: path):
    """Variables keyed by ``key(path)`` with '/' as '.' ('/' is not allowed in names)."""
    named = {}
    for variable in variables:
        name = key(variable.path).replace("/", ".")
        if name in named:
            raise RuntimeError(f"two variables share the path {variable.path!r}")
        named[name] = variable
    return named


def _optimizer_key(path):
    """An optimizer variable's path without the per-process numbers of the optimizer
    names in it: ``adam_3/iteration`` -> ``adam/iteration``. The last part, the
    variable's own name, is kept as it is."""
    parts = path.replace(".", "/").split("/")
    return "/".join([re.sub(r"_\d+$", "", p) for p in parts[:-1]] + parts[-1:])


def make_checkpoint(model):
    """A tf.train.Checkpoint of every model and optimizer variable, and the step."""
    optimizers = {name: _by_path(getattr(model, name).variables, _optimizer_key)
                  for name in OPTIMIZERS}
    return tf.train.Checkpoint(model=_by_path(model.variables),
                               step=tf.Variable(0, dtype=tf.int64, trainable=False),
                               **optimizers)


def _unescape(name):
    """A tf.train.Checkpoint local name as it was given ('..' is '.', '.S' is '/')."""
    return re.sub(r"\.(.)", lambda m: "/" if m.group(1) == "S" else m.group(1), name)


def _saved_keys(path, attribute):
    """The keys of the ``attribute`` dict in the checkpoint at ``path``."""
    prefix = attribute + "/"
    return {_unescape(name[len(prefix):-len(_VALUE_SUFFIX)])
            for name, _ in tf.train.list_variables(path)
            if name.startswith(prefix) and name.endswith(_VALUE_SUFFIX)
            and "/" not in name[len(prefix):-len(_VALUE_SUFFIX)]}


def restore(checkpoint, path):
    """``checkpoint.restore(path)``, matching optimizer variables by `_optimizer_key`.

    A checkpoint written with another process's optimizer names (``adam_1.iteration``
    where this process has ``adam_4``; every checkpoint written before optimizer keys
    dropped the numbers) restores into the same variables.

    Returns:
      The restore status (``assert_consumed``, ``expect_partial``, ...).
    """
    optimizers = {}
    for attribute in OPTIMIZERS:
        current = dict(getattr(checkpoint, attribute))
        matched = {}
        for saved in _saved_keys(path, attribute):
            key = _optimizer_key(saved).replace("/", ".")
            if key in current:
                matched[saved] = current.pop(key)
        # Variables the checkpoint lacks stay listed, so assert_consumed reports them.
        optimizers[attribute] = {**current, **matched}
    return tf.train.Checkpoint(model=checkpoint.model, step=checkpoint.step,
                               **optimizers).restore(path)


def latest(directory):
    """The newest checkpoint in ``directory``, or None."""
    return tf.train.latest_checkpoint(directory)


def atomic_save(model, path):
    """model.save to a temporary file in the same folder, then rename over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(suffix=".keras", dir=folder)
    os.close(fd)
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def restore_model(workdir):
    """The HDML model of a training workdir: ``model.keras`` if present, else the
    model ``config.json`` describes with the latest checkpoint's state.

    Raises:
      FileNotFoundError: neither ``model.keras`` nor ``config.json``, or no checkpoint.
    """
    import hdml_tf.models  # noqa: F401  (registers the classes)
    from hdml_tf import config as config_lib
    from hdml_tf.training import build_model

    path = os.path.join(workdir, "model.keras")
    if os.path.exists(path):
        return keras.models.load_model(path)
    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{workdir} is not a training workdir: no model.keras and "
                                "no config.json")
    with open(config_path) as f:
        saved = json.load(f)
    config = config_lib.from_dict(saved["config"])
    model = build_model(config, saved["num_classes"])
    checkpoint_path = latest(os.path.join(workdir, "checkpoints"))
    if checkpoint_path is None:
        raise FileNotFoundError(f"{workdir}/checkpoints holds no checkpoint")
    restore(make_checkpoint(model), checkpoint_path).expect_partial()
    return model
