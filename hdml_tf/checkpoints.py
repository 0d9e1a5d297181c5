"""Checkpoints of a training run: what is saved, how it is restored, how a workdir loads.

A checkpoint (``<workdir>/checkpoints/ckpt-<step>``) is a ``tf.train.Checkpoint`` of
every variable, listed explicitly and keyed by its Keras path (Keras 3 objects are only
partly visible to tf.train.Checkpoint's object-graph tracking: a nested backbone's
BatchNorm statistics were missed):

  model                 weights and HDML's running statistics (``model.variables``)
  metric_optimizer,     each optimizer's state (the SkipNonFinite wrapper's step and
  generator_optimizer,  skip counters, the inner optimizer's iterations, learning rate
  classifier_optimizer  and slots); the metric optimizer's iterations are the step
  evaluation_<name>     an evaluation callback's state (training.loop), if any

Keras numbers optimizer names per process (``adam``, ``adam_1``, ...), so the same
optimizer has another path in another run; optimizer variables are keyed by
`optimizer_variables`, which leaves the names out.

``model.keras``, written when a run ends (`atomic_save`), is what `restore_model` loads
a workdir from; a run killed before its end loads from ``config.json`` plus the latest
checkpoint.
"""

import glob
import json
import os
import tempfile

import keras
import tensorflow as tf

from hdml_tf import config as config_lib
from hdml_tf.experiment import build_model
from hdml_tf.workdir import WorkdirError, WriteError

OPTIMIZERS = ("metric_optimizer", "generator_optimizer", "classifier_optimizer")
DAMAGED = "damaged"  # where checkpoints that do not restore are moved


def _by_path(variables):
    """Variables keyed by their path with '/' as '.' ('/' is not allowed in names)."""
    named = {}
    for variable in variables:
        name = variable.path.replace("/", ".")
        if name in named:
            raise RuntimeError(f"two variables share the path {variable.path!r}")
        named[name] = variable
    return named


def optimizer_variables(optimizer):
    """An optimizer's variables keyed the same in every process.

    Keras numbers optimizer names per process (``adam``, ``adam_1``, ...) and puts the
    name in each variable's path (``adam_3/iteration``, ``hdml/adam_3/<var>_momentum``),
    so a path names another variable in a resumed run. The key is the variable's own
    name (the path's last part) after its depth in a chain of wrapping optimizers
    (``LossScaleOptimizer`` around ``Adam``: ``0.dynamic_scale``, ``1.iteration``).
    """
    keyed, level, seen = {}, 0, set()
    while optimizer is not None:
        inner = getattr(optimizer, "inner_optimizer", None)
        inner_ids = {id(v) for v in inner.variables} if inner is not None else set()
        for variable in optimizer.variables:
            if id(variable) in inner_ids or id(variable) in seen:
                continue
            seen.add(id(variable))
            key = f"{level}.{variable.path.rsplit('/', 1)[-1]}"
            if key in keyed:
                raise RuntimeError(f"two optimizer variables share the key {key!r}")
            keyed[key] = variable
        optimizer, level = inner, level + 1
    return keyed


def make_checkpoint(model, **extra):
    """A tf.train.Checkpoint of every model and optimizer variable (the step is the
    metric optimizer's ``iterations``), and of ``extra`` trackables (the evaluation
    callbacks' state)."""
    optimizers = {name: optimizer_variables(getattr(model, name)) for name in OPTIMIZERS}
    return tf.train.Checkpoint(model=_by_path(model.variables), **optimizers, **extra)


def restore(checkpoint, path):
    """``checkpoint.restore(path)``: the restore status (``assert_consumed``, ...)."""
    return checkpoint.restore(path)


def latest(directory):
    """The newest checkpoint in ``directory``, or None."""
    return tf.train.latest_checkpoint(directory)


def _step(prefix):
    return int(prefix.rsplit("-", 1)[1])


def on_disk(directory):
    """Every checkpoint in ``directory`` whose index file exists, newest first (read
    from the files, not the manager's state file, which may be damaged too)."""
    indexes = glob.glob(os.path.join(glob.escape(directory), "ckpt-*.index"))
    prefixes = [p[:-len(".index")] for p in indexes]
    return sorted((p for p in prefixes if p.rsplit("-", 1)[1].isdigit()), key=_step,
                  reverse=True)


def set_aside(prefix):
    """Move a damaged checkpoint's files to ``<directory>/damaged/`` (kept, never
    deleted), so no manager picks it again."""
    folder = os.path.join(os.path.dirname(prefix), DAMAGED)
    os.makedirs(folder, exist_ok=True)
    for path in glob.glob(glob.escape(prefix) + ".*"):
        os.replace(path, os.path.join(folder, os.path.basename(path)))
    return folder


def restore_newest(checkpoint, directory, log=print):
    """Restore the newest checkpoint of ``directory`` that restores; set aside (and
    report in one line) each newer one that does not.

    Returns:
      The restored checkpoint's path, or None when ``directory`` holds none.

    Raises:
      WorkdirError: checkpoints exist but none of them restores.
    """
    tried = []
    for prefix in on_disk(directory):
        try:
            restore(checkpoint, prefix).assert_existing_objects_matched()
        except (tf.errors.OpError, IndexError, ValueError, OSError) as error:
            reason = str(getattr(error, "message", error)).strip().splitlines()[-1][:200]
            folder = set_aside(prefix)
            log(f"checkpoint {prefix} does not restore ({reason}); moved to {folder}/")
            tried.append(os.path.basename(prefix))
            continue
        # The manager's state file lists what is left, oldest first.
        tf.compat.v1.train.update_checkpoint_state(
            directory, prefix, all_model_checkpoint_paths=on_disk(directory)[::-1])
        return prefix
    if tried:
        raise WorkdirError(f"{directory}: no checkpoint restores (tried {', '.join(tried)}, "
                           f"now in {os.path.join(directory, DAMAGED)}/); start a new run "
                           "in another --workdir")
    return None


def atomic_save(model, path):
    """model.save to a temporary file in the same folder, then rename over ``path``.

    Raises:
      WriteError: the save failed (a full disk); ``path`` is as it was.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(suffix=".keras", dir=folder)
    os.close(fd)
    try:
        model.save(tmp)
        os.replace(tmp, path)
    except OSError as error:
        raise WriteError(f"could not write {path}: {error.strerror or error}; the previous "
                         "file is kept") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def restore_model(workdir):
    """The HDML model of a training workdir: ``model.keras`` if present, else the
    model ``config.json`` describes with the latest checkpoint's state.

    Raises:
      FileNotFoundError: neither ``model.keras`` nor ``config.json``, or no checkpoint.
    """
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
