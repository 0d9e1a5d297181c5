"""Distribution strategies, and which worker writes a run.

``train.strategy``: ``auto`` (MirroredStrategy when more than one GPU is visible),
``none``, ``mirrored``, ``multiworker`` (from ``TF_CONFIG``) or ``tpu``. Under
MultiWorkerMirroredStrategy every worker trains and takes part in each checkpoint
save, but only the chief writes the workdir; the others write private scratch copies.
"""

import os

import tensorflow as tf

from hdml_tf.config import ConfigError


def build_strategy(name="auto", devices=None):
    """A tf.distribute strategy by name.

    Args:
      name: "auto" (MirroredStrategy when more than one GPU is visible, else the
        default strategy), "none", "mirrored", "multiworker" (configured from the
        ``TF_CONFIG`` environment variable) or "tpu".
      devices: explicit device list for "mirrored" (e.g. two logical CPUs in tests).
    """
    if name == "auto":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError(
                "train.strategy=multiworker needs the TF_CONFIG environment variable "
                "(cluster and task), see the README's multi-worker section")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ConfigError(f"train.strategy: unknown {name!r}")


def is_chief(strategy):
    """True on the one worker that writes logs, model.keras, metrics and exports."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def scratch_dir(workdir, strategy):
    """Where this worker writes: the workdir on the chief; a private folder elsewhere.

    Under MultiWorkerMirroredStrategy every worker must take part in each save
    (reading the variables is collective), but only the chief's copy is kept.
    """
    if is_chief(strategy):
        return workdir
    resolver = strategy.cluster_resolver
    path = os.path.join(workdir, "_workers", f"{resolver.task_type}_{resolver.task_id}")
    os.makedirs(path, exist_ok=True)
    return path
