"""``hdml-tf train``: config -> data -> HDML -> checkpoints, logs, evaluation, export.

One loop serves every strategy: a ``tf.function`` around ``strategy.run(model.train_step)``
over a distributed dataset, driven from Python so that checkpoints, evaluation and
logging happen at step granularity. (Keras ``fit`` fails under
MultiWorkerMirroredStrategy in Keras 3, tensorflow issue 72388; the custom loop is the
supported route there, and using it everywhere keeps single- and multi-device runs
identical.) Keras callbacks still do the progress bar, CSV, TensorBoard and periodic
evaluation, through ``keras.callbacks.CallbackList``.

`train` is three steps: `setup` (config -> data, model, checkpoint, resume, callbacks:
a `Run`), `run_loop` (the steps) and `finish` (final model, test metrics, export).
What a checkpoint holds and how a workdir is restored: :mod:`hdml_tf.checkpoints`.

Workdir layout:
  config.json                 the resolved experiment config
  checkpoints/ckpt-*          tf.train.Checkpoint: model (weights, running statistics),
                              the three optimizers, the step; written every
                              ``train.steps_per_epoch`` steps; the data position is the
                              step (the samplers are pure functions of seed and batch
                              number)
  model.keras                 the latest HDML model (atomic replace at each checkpoint)
  train_log.csv, tensorboard/ per-epoch loss terms; eval_log.csv evaluations
  metrics.json                final test metrics (and the paper's numbers, if known)

Killed at any moment (even ``kill -9``) and run again with the same workdir, training
resumes from the last checkpoint.
"""

import dataclasses
import json
import os
import shutil
import sys
import time
import typing

import keras
import numpy as np
import tensorflow as tf

from hdml_tf import checkpoints, nonfinite
from hdml_tf import config as config_lib

EVAL_METRICS = ("recall", "nmi", "f1", "map@r", "r_precision")


# ----------------------------------------------------------------- strategies


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
            raise config_lib.ConfigError(
                "train.strategy=multiworker needs the TF_CONFIG environment variable "
                "(cluster and task), see the README's multi-worker section")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise config_lib.ConfigError(f"train.strategy: unknown {name!r}")


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


def _scratch_dir(workdir, strategy):
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


# ------------------------------------------------------------------------ data


def load_splits(config):
    """The train split and the evaluation splits ("val" if held out, "test")."""
    from hdml_tf import data as data_lib

    d = config.data
    kwargs = {"val_fraction": d.val_fraction} if d.val_fraction else {}
    splits = {"train": data_lib.load_dataset(d.name, "train", d.root, **kwargs),
              "test": data_lib.load_dataset(d.name, "test", d.root, **kwargs)}
    if d.val_fraction:
        splits["val"] = data_lib.load_dataset(d.name, "val", d.root, **kwargs)
    return splits


def training_dataset(config, train_split, preprocessing, start_batch=0):
    from hdml_tf.data import pipeline

    d = config.data
    common = dict(seed=config.train.seed, resize=d.resize, crop=d.crop, flip=d.flip,
                  preprocessing=preprocessing, cache=d.cache, start_batch=start_batch,
                  sampler=d.sampler)
    build = {"npair": pipeline.npair_dataset, "triplet": pipeline.triplet_dataset}
    return build[config.model.loss](train_split, config_lib.classes_per_batch(config),
                                    **common)


def evaluation_dataset(config, split, preprocessing):
    from hdml_tf.data import pipeline

    d = config.data
    if d.max_eval_images and len(split) > d.max_eval_images:
        split = subsample_split(split, d.max_eval_images, config.train.seed)
    return pipeline.eval_dataset(split, batch_size=d.eval_batch_size, resize=d.resize,
                                 crop=d.crop, preprocessing=preprocessing)


def subsample_split(split, count, seed):
    """A fixed random subset of ``count`` images of an ImageDataset (all if fewer)."""
    if count >= len(split):
        return split
    keep = np.sort(np.random.default_rng(seed).choice(len(split), count, replace=False))
    fields = {f: getattr(split, f)[keep] for f in ("paths", "encoded", "images")
              if getattr(split, f) is not None}
    return dataclasses.replace(split, labels=split.labels[keep], **fields)


# ----------------------------------------------------------------------- model


def build_model(config, num_classes):
    """Backbone, Embedder, HDML and the three optimizers, compiled and built."""
    import hdml_tf.backbones.small_cnn  # noqa: F401  (registers "small_cnn")
    from hdml_tf.backbones import build_backbone
    from hdml_tf import HDML, Embedder

    m, o, t, d = config.model, config.optim, config.train, config.data
    # Several replicas: BatchNorm statistics over the global batch, as on one device.
    sync_bn = tf.distribute.get_strategy().num_replicas_in_sync > 1
    precision = t.precision
    previous_policy = keras.config.dtype_policy()
    if precision != "float32":
        keras.config.set_dtype_policy(precision)
    try:
        backbone_kwargs = {"lrn": m.lrn} if m.backbone.lower() == "inception_v1" else {}
        backbone = build_backbone(m.backbone, weights=m.weights,
                                  input_shape=(d.crop, d.crop, 3), **backbone_kwargs)
        embedder = Embedder(backbone, embedding_dim=m.embedding_dim, synchronized_bn=sync_bn)
        model = HDML(embedder, num_classes, synchronized_bn=sync_bn, **m.hdml_kwargs(),
                     # G, C and the losses in float32 whatever the backbone computes in
                     # (the Embedder keeps its head in float32 itself).
                     dtype="float32" if precision != "float32" else None)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    if o.lr_decay_steps:
        values = [o.lr_metric * o.lr_decay_factor ** i for i in range(len(o.lr_decay_steps) + 1)]
        lr_metric = keras.optimizers.schedules.PiecewiseConstantDecay(
            list(o.lr_decay_steps), values)
    else:
        lr_metric = o.lr_metric
    optimizers = [keras.optimizers.Adam(lr, epsilon=o.adam_epsilon)
                  for lr in (lr_metric, o.lr_gen, o.lr_cls)]
    if precision == "mixed_float16":
        # Only the metric objective runs through float16 compute; G and C are float32.
        optimizers[0] = keras.optimizers.LossScaleOptimizer(optimizers[0])
    model.compile(metric_optimizer=optimizers[0], generator_optimizer=optimizers[1],
                  classifier_optimizer=optimizers[2])
    model.build((None, d.crop, d.crop, 3))  # compiled: builds the optimizers too
    return model


# ----------------------------------------------------------------------- train


def _truncate_csv(path, keep):
    """Drop the rows of a CSV log that ``keep(row)`` rejects (resume: rows written
    after the checkpoint the run goes on from)."""
    import csv

    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
        fields = rows[0].keys() if rows else None
    if fields is None:
        return
    kept = [row for row in rows if keep(row)]
    if len(kept) < len(rows):
        _rewrite_csv(path, fields, kept)


def _rewrite_csv(path, fields, rows):
    """Replace a CSV log atomically by ``rows`` under the header ``fields`` (cells a
    row lacks are left empty)."""
    import csv

    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


class EvaluationState:
    """An `EvaluationCallback`'s state saved beside each checkpoint.

    ``checkpoints/<name>-<step>.json`` holds the callback's state at checkpoint step
    <step> (best score and step, step counter, evaluations so far), and
    ``checkpoints/<name>-best-<best_step>.npz`` the best weights it refers to. Both are
    written before the checkpoint itself, so every checkpoint has its state.
    """

    def __init__(self, callback, name, directory):
        self.callback, self.name, self.directory = callback, name, directory

    def _state_path(self, step):
        return os.path.join(self.directory, f"{self.name}-{step}.json")

    def _best_path(self, best_step):
        return os.path.join(self.directory, f"{self.name}-best-{best_step}.npz")

    def save(self, step):
        os.makedirs(self.directory, exist_ok=True)
        state = self.callback.get_state()
        best_step = state["best_step"]
        if best_step is not None and not os.path.exists(self._best_path(best_step)):
            tmp = self._best_path(best_step) + ".tmp.npz"
            np.savez(tmp, *self.callback.best_weights)
            os.replace(tmp, self._best_path(best_step))
        _write_json(self._state_path(step), state)

    def prune(self, keep_steps):
        """Remove states of checkpoints that are gone, and best weights none refers to."""
        referenced = set()
        for entry in os.listdir(self.directory):
            if entry.startswith(f"{self.name}-") and entry.endswith(".json"):
                step = entry[len(self.name) + 1:-len(".json")]
                if step.isdigit() and int(step) not in keep_steps:
                    os.remove(os.path.join(self.directory, entry))
                elif step.isdigit():
                    with open(os.path.join(self.directory, entry)) as f:
                        referenced.add(json.load(f)["best_step"])
        for entry in os.listdir(self.directory):
            prefix = f"{self.name}-best-"
            if entry.startswith(prefix) and entry.endswith(".npz"):
                step = entry[len(prefix):-len(".npz")]
                if step.isdigit() and int(step) not in referenced:
                    os.remove(os.path.join(self.directory, entry))

    def restore(self, step):
        """Bring the callback back to checkpoint ``step`` (fresh if none was saved)."""
        path = self._state_path(step)
        if not os.path.exists(path):
            self.callback.start_at(step)
            return False
        with open(path) as f:
            state = json.load(f)
        best = None
        if state["best_step"] is not None:
            with np.load(self._best_path(state["best_step"])) as arrays:
                best = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
        self.callback.set_state(state, best)
        return True


class _Checkpointer(keras.callbacks.Callback):
    """At each epoch end: evaluation states, then the checkpoint, then model.keras."""

    def __init__(self, manager, checkpoint, workdir, steps_per_epoch, states=()):
        super().__init__()
        self.manager, self.checkpoint = manager, checkpoint
        self.workdir, self.steps_per_epoch = workdir, steps_per_epoch
        self.states = list(states)

    def on_epoch_end(self, epoch, logs=None):
        step = (epoch + 1) * self.steps_per_epoch
        self.checkpoint.step.assign(step)
        for state in self.states:
            state.save(step)
        self.manager.save(checkpoint_number=step)
        kept = {int(path.rsplit("-", 1)[1]) for path in self.manager.checkpoints}
        for state in self.states:
            state.prune(kept)
        checkpoints.atomic_save(self.model, os.path.join(self.workdir, "model.keras"))


class _AppendingCSVLogger(keras.callbacks.CSVLogger):
    """CSVLogger that, appending to an existing log (a resumed run), keeps its columns.

    Keras fixes the columns from the first epoch's keys of each process; a resumed
    run's first epoch can carry more keys (e.g. an evaluation from before the kill),
    which would shift its rows under the file's header.
    """

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        import csv

        if os.path.exists(self.filename) and os.path.getsize(self.filename):
            with open(self.filename, newline="") as f:
                header = next(csv.reader(f), None)
            if header and header[0] == "epoch":
                self.keys = header[1:]
                self.append_header = False


class _ScheduleLog(keras.callbacks.Callback):
    """``schedule_log.csv``: every ``every`` steps, the λ and w the next step uses,
    J_avg, J_gen_avg, and the share of candidate negatives the last step's synthesis
    moved (d- > d+): HDML's hardness schedule as it happens. Also the steps skipped so
    far: ``skipped_steps`` (a non-finite objective, any optimizer) and
    ``loss_scale_skips`` (float16: a loss-scaled gradient overflowed), so a log shows
    when steps were skipped, not only how many."""

    FIELDS = ("step", "lambda", "w", "j_avg", "j_gen_avg", "hardened_fraction",
              "skipped_steps", "loss_scale_skips")

    def __init__(self, path, every, start_step):
        super().__init__()
        self.path, self.every, self.step = path, int(every), int(start_step)
        self.last_batch = -1

    def on_epoch_begin(self, epoch, logs=None):
        self.last_batch = -1

    def on_train_batch_end(self, batch, logs=None):
        self.step += batch - self.last_batch  # one call per execution of N steps
        self.last_batch = batch
        if self.step % self.every or not self.model.params.hdml:
            return
        import csv

        stats = self.model.statistics()
        stats.update(step=self.step,
                     skipped_steps=sum(v for k, v in stats.items()
                                       if k.endswith("_skipped_steps")),
                     loss_scale_skips=sum(v for k, v in stats.items()
                                          if k.endswith("_loss_scale_skips")))
        row = {k: stats[k] for k in self.FIELDS}
        new = not os.path.exists(self.path)
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)


class ProgressLine(keras.callbacks.Callback):
    """One short line per epoch (each train_log.csv row) for the person watching:

      step  250/1500   412 img/s  J_m 1.406  J_metric 1.388  λ 0.920  w 0.911  ETA 2m55s

    J_m and J_metric are the epoch's means, λ and w what the next step uses; skipped
    steps are added only when there are some. Everything else is in the CSV logs and
    TensorBoard.

    Args:
      total_steps: the run's last step.
      steps_per_epoch: steps between lines (``train.steps_per_epoch``).
      batch_size: images per step.
      print_fn: where the lines go.
    """

    def __init__(self, total_steps, steps_per_epoch, batch_size, print_fn=print):
        super().__init__()
        self.total, self.per_epoch = int(total_steps), int(steps_per_epoch)
        self.batch_size, self.print_fn = int(batch_size), print_fn
        self._started = None

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        step = min((epoch + 1) * self.per_epoch, self.total)
        steps = step - epoch * self.per_epoch
        seconds = max(time.perf_counter() - (self._started or time.perf_counter()), 1e-9)
        width = len(str(self.total))
        parts = [f"step {step:>{width}}/{self.total}",
                 f"{steps * self.batch_size / seconds:5.0f} img/s"]
        parts += [f"{label} {logs[key]:.4g}" for key, label in
                  (("j_m", "J_m"), ("j_metric", "J_metric")) if key in logs]
        if self.model.params.hdml:
            stats = self.model.statistics()
            parts += [f"λ {stats['lambda']:.3f}", f"w {stats['w']:.3f}"]
            skipped = {k[:-len("_skipped_steps")]: v for k, v in stats.items()
                       if k.endswith("_skipped_steps") and v}
            skipped.update({f"{k[:-len('_loss_scale_skips')]} (loss scale)": v
                            for k, v in stats.items() if k.endswith("_loss_scale_skips") and v})
            if skipped:
                parts.append("skipped " + ", ".join(f"{k} {v}" for k, v in skipped.items()))
        if step < self.total:
            parts.append(f"ETA {_duration(seconds / steps * (self.total - step))}")
        self.print_fn("  ".join(parts))


def _duration(seconds):
    """``1h02m``, ``2m55s`` or ``41s``."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _write_json(path, payload):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True, default=float)
    os.replace(tmp, path)


@dataclasses.dataclass
class Run:
    """One experiment ready to train: what `setup` builds, `run_loop` advances and
    `finish` reports on.

    ``steps`` runs ``count`` training steps in one call (``steps(iterator, count)``)
    and returns the last step's logs; ``logs`` and ``train_seconds`` are filled by
    `run_loop`.
    """

    config: typing.Any
    workdir: str
    strategy: tf.distribute.Strategy
    chief: bool
    scratch: str  # where this worker writes: the workdir on the chief
    splits: dict
    model: keras.Model
    checkpoint: tf.train.Checkpoint
    manager: tf.train.CheckpointManager
    start_step: int
    iterator: typing.Any
    steps: typing.Callable
    callbacks: keras.callbacks.CallbackList
    states: list  # EvaluationState of each evaluation callback
    log: typing.Callable = print
    logs: dict = dataclasses.field(default_factory=dict)
    train_seconds: float = 0.0


def train(config, workdir, strategy=None, devices=None, log=print, return_model=False):
    """Run (or resume) one experiment in ``workdir``; returns the results dict.

    `setup`, then `run_loop`, then `finish`.

    Args:
      config: a validated ExperimentConfig.
      workdir: created if missing; an existing one with a different config is refused.
      strategy: a tf.distribute strategy (default: from ``config.train.strategy``).
      devices: device list for a "mirrored" strategy built here.
      log: where progress lines go.
      return_model: return ``(results, model)`` instead of ``results``.
    """
    run = setup(config, workdir, strategy=strategy, devices=devices, log=log)
    run_loop(run)
    results = finish(run)
    return (results, run.model) if return_model else results


def _check_workdir(config, workdir):
    """Refuse a workdir that holds a run with another config."""
    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
        return
    with open(config_path) as f:
        previous = json.load(f)["config"]
    current = json.loads(config.to_json())
    if previous != current:
        changed = sorted(f"{s}.{k}" for s in previous if isinstance(previous[s], dict)
                         for k in previous[s] if previous[s][k] != current[s].get(k))
        raise config_lib.ConfigError(
            f"{workdir} holds a run with a different config (changed: "
            f"{', '.join(changed) or 'name'}); use a new --workdir")


def setup(config, workdir, strategy=None, devices=None, log=print):
    """Everything a run needs before its first step, resumed from the workdir's latest
    checkpoint if there is one. Arguments as `train`; returns a `Run`."""
    os.makedirs(workdir, exist_ok=True)
    _check_workdir(config, workdir)
    keras.utils.set_random_seed(config.train.seed)
    strategy = strategy or build_strategy(config.train.strategy, devices)
    chief, scratch = is_chief(strategy), _scratch_dir(workdir, strategy)
    per_batch, replicas = config_lib.classes_per_batch(config), strategy.num_replicas_in_sync
    if per_batch % replicas:
        raise config_lib.ConfigError(
            f"data.batch_size: {per_batch} classes per batch do not split evenly over "
            f"{replicas} replicas")

    splits = load_splits(config)
    num_classes = splits["train"].num_classes
    config_lib.check_against_dataset(config, num_classes)
    if chief:
        _write_json(os.path.join(workdir, "config.json"), {
            "config": config.to_dict(), "num_classes": num_classes,
            "class_names": {k: list(map(str, v.class_names)) for k, v in splits.items()}})
    with strategy.scope():
        model = build_model(config, num_classes)
        checkpoint = checkpoints.make_checkpoint(model)
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(scratch, "checkpoints"),
                                         max_to_keep=config.train.keep_checkpoints)
    start_step = _resume(checkpoint, workdir, config.train.steps_per_epoch, log)

    preprocessing = model.embedder.preprocessing
    iterator = _distributed_iterator(config, strategy, splits["train"], preprocessing,
                                     start_step)
    callbacks, states = _callbacks(config, workdir, splits, preprocessing, chief,
                                   start_step)
    # A stalled update ends the run before a checkpoint would save it.
    callbacks.append(nonfinite.StopOnNonFinite(config.model.window))
    callbacks.append(_Checkpointer(manager, checkpoint, scratch,
                                   config.train.steps_per_epoch, states))
    t = config.train
    if t.verbose and chief:
        callbacks.append(ProgressLine(t.steps, t.steps_per_epoch, config.data.batch_size,
                                      print_fn=log))
    callback_list = keras.callbacks.CallbackList(
        callbacks, add_history=True, add_progbar=False, model=model,
        epochs=-(-t.steps // t.steps_per_epoch), steps=t.steps_per_epoch)
    return Run(config=config, workdir=workdir, strategy=strategy, chief=chief,
               scratch=scratch, splits=splits, model=model, checkpoint=checkpoint,
               manager=manager, start_step=start_step, iterator=iterator,
               steps=_step_function(model, strategy, t.xla), callbacks=callback_list,
               states=states, log=log)


def _resume(checkpoint, workdir, steps_per_epoch, log):
    """Restore the latest checkpoint of ``workdir`` (every worker resumes from the
    chief's) into ``checkpoint``; returns the step to start from."""
    latest = checkpoints.latest(os.path.join(workdir, "checkpoints"))
    if latest:
        checkpoints.restore(checkpoint, latest).assert_existing_objects_matched()
        log(f"resumed from {latest} at step {int(checkpoint.step.numpy())}")
    start_step = int(checkpoint.step.numpy())
    if start_step % steps_per_epoch:
        raise RuntimeError(f"checkpoint step {start_step} is not a multiple of "
                           f"train.steps_per_epoch={steps_per_epoch}")
    return start_step


def _distributed_iterator(config, strategy, train_split, preprocessing, start_step):
    """The training batches from ``start_step`` on, distributed over the replicas."""
    dataset = training_dataset(config, train_split, preprocessing, start_batch=start_step)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # Every worker draws the same seeded global batches; DATA sharding hands each
        # worker its slice of every batch (pairs stay aligned: the layout is nested).
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA)
        dataset = dataset.with_options(options)
    return iter(strategy.experimental_distribute_dataset(dataset))


def _step_function(model, strategy, xla):
    """``steps(iterator, count)``: ``count`` train steps in one ``tf.function`` call
    (the host waits for logs once per call); the logs after the last step.

    Every step runs in the body of the same ``tf.range`` loop, whatever ``count`` is
    (a tensor: one trace), so a run computes the same floats at every
    ``train.steps_per_execution`` (a first step outside the loop would be a second
    graph, which TensorFlow's optimizer rewrites differently: not bit-identical).
    """

    # train_step has no data-dependent Python control flow (it uses tf.cond itself),
    # so AutoGraph has nothing to convert.
    @tf.autograph.experimental.do_not_convert
    def replica_step(batch):
        return model.train_step(batch)

    step_fn = tf.function(replica_step, jit_compile=True) if xla else replica_step

    @tf.function
    def distributed_steps(it, count):
        for _ in tf.range(count):
            strategy.run(step_fn, args=(next(it),))
        logs = strategy.run(model.logs)
        # Every replica holds the same (globally reduced) values: take the first.
        return {k: strategy.experimental_local_results(v)[0] for k, v in logs.items()}

    return distributed_steps


def run_loop(run):
    """Train from ``run.start_step`` to ``config.train.steps``, with the callbacks
    (logs, evaluations, a checkpoint at each epoch end) at the end of each call."""
    config, model, callbacks = run.config, run.model, run.callbacks
    t = config.train
    run.log(f"training {config.name}: {t.steps} steps from step {run.start_step}, "
            f"{run.strategy.num_replicas_in_sync} replica(s), "
            f"HDML {'on' if config.model.hdml else 'off'}")
    started = time.time()
    callbacks.on_train_begin()
    logs = {}
    boundaries = _boundary_checks(config)
    for epoch in range(run.start_step // t.steps_per_epoch, -(-t.steps // t.steps_per_epoch)):
        model.reset_metrics()
        callbacks.on_epoch_begin(epoch)
        first = epoch * t.steps_per_epoch  # global step before this epoch
        steps_here = min(t.steps_per_epoch, t.steps - first)
        step = 0
        while step < steps_here:
            count = _steps_to_boundary(first + step, t.steps_per_execution,
                                       first + steps_here, boundaries)
            logs = {k: float(v) for k, v in run.steps(run.iterator, tf.constant(count)).items()}
            # As in Keras' fit with steps_per_execution: one call, one pair of batch
            # hooks, with the call's first and last batch index; every step a
            # callback acts on ends a call (a boundary).
            callbacks.on_train_batch_begin(step)
            callbacks.on_train_batch_end(step + count - 1, logs)
            step += count
        callbacks.on_epoch_end(epoch, dict(logs))
        if model.stop_training:
            break
    callbacks.on_train_end(logs)
    run.logs, run.train_seconds = logs, time.time() - started


def finish(run):
    """Save the final model, evaluate it on the test split, write ``metrics.json``,
    log the summary and export (``train.export``); returns the results dict."""
    config, model = run.config, run.model
    results = {"train_seconds": run.train_seconds, "steps": config.train.steps,
               "final_logs": run.logs, "statistics": model.statistics()}
    checkpoints.atomic_save(model, os.path.join(run.scratch, "model.keras"))
    if not run.chief:
        shutil.rmtree(run.scratch, ignore_errors=True)  # the chief holds the run
        return results
    test_metrics = evaluate_model(model, config, run.splits["test"])
    results["test"] = test_metrics  # the headline: the final checkpoint
    results["paper"] = dict(config.paper)
    tables = {config.name: test_metrics}
    for state in run.states:
        if state.name == "authors_eval":
            selected = _authors_selected(state.callback)
            results["authors_selected"] = selected
            if selected:
                tables["authors' protocol"] = selected["metrics"]
    _write_json(os.path.join(run.workdir, "metrics.json"), results)
    run.log(summary_table(tables, paper=config.paper))
    if "authors_selected" in results:
        run.log(_authors_note(results["authors_selected"]))
    if config.train.export:
        results["export"] = export_workdir(run.workdir, config, log=run.log, model=model)
    return results


def _boundary_checks(config):
    """Steps after which a callback acts (a log row, an evaluation): a group of
    ``train.steps_per_execution`` steps always ends there, so they see the weights of
    exactly that step."""
    from hdml_tf.evaluation.callbacks import authors_schedule

    t = config.train
    checks = [lambda s: s % t.log_every == 0]
    if t.eval_every:
        checks.append(lambda s: s % t.eval_every == 0)
    if t.authors_selection:
        checks.append(authors_schedule)
    return checks


def _steps_to_boundary(step, per_execution, stop, checks):
    """How many steps to run from global ``step``: up to ``per_execution``, ending
    early at ``stop`` (the epoch's end) or at the first step a check names."""
    for end in range(step + 1, min(step + per_execution, stop) + 1):
        if end == stop or any(check(end) for check in checks):
            return end - step
    return min(per_execution, stop - step)


def _callbacks(config, workdir, splits, preprocessing, chief, start_step):
    """Logs, evaluations (with their checkpointed state) and the schedule log.

    A resumed run first drops log rows written after the checkpoint it resumes from,
    so its logs end as an uninterrupted run's would.
    """
    from hdml_tf.evaluation.callbacks import EvaluationCallback, authors_schedule

    t = config.train
    if not chief:
        return [], []
    initial_epoch = start_step // t.steps_per_epoch
    _truncate_csv(os.path.join(workdir, "train_log.csv"),
                  lambda row: int(row["epoch"]) < initial_epoch)
    _truncate_csv(os.path.join(workdir, "schedule_log.csv"),
                  lambda row: int(row["step"]) <= start_step)
    callbacks = [
        _AppendingCSVLogger(os.path.join(workdir, "train_log.csv"), append=True),
        keras.callbacks.TensorBoard(os.path.join(workdir, "tensorboard"), write_graph=False),
        _ScheduleLog(os.path.join(workdir, "schedule_log.csv"), t.log_every, start_step),
    ]
    evaluations = []
    if t.eval_every:
        evaluations.append(("eval", t.eval_split, dict(
            every_n_steps=t.eval_every, monitor=t.monitor, restore_best_weights=True,
            allow_test_selection=t.select_on_test)))
    if t.authors_selection:
        # Their protocol, reported beside the final numbers: it never changes the
        # weights the run ends with.
        evaluations.append(("authors_eval", "test", dict(
            schedule=authors_schedule, monitor="nmi", restore_best_weights=False,
            allow_test_selection=True, seed=1)))
    states = []
    for name, split, kwargs in evaluations:
        csv_path = os.path.join(workdir, f"{name}_log.csv")
        _truncate_csv(csv_path, lambda row: int(row["step"]) <= start_step)
        callback = EvaluationCallback(
            evaluation_dataset(config, splits[split], preprocessing), split_name=split,
            ks=t.ks, log_dir=os.path.join(workdir, "tensorboard", name), csv_path=csv_path,
            verbose=t.verbose, kmeans_nredo=t.kmeans_restarts, **kwargs)
        state = EvaluationState(callback, name, os.path.join(workdir, "checkpoints"))
        if start_step:
            state.restore(start_step)
        callbacks.insert(0, callback)
        states.append(state)
    return callbacks, states


def _authors_selected(callback):
    """The authors' number: the evaluation with the best test NMI, and its step."""
    if callback.best_step is None:
        return None
    best = next(e for e in callback.evaluations if e["step"] == callback.best_step)
    metrics = {k[len("test_"):]: v for k, v in best.items() if k.startswith("test_")}
    return {"selected_on": "test", "criterion": "best test NMI over the authors' "
            "evaluation steps (every 500, every 64 from step 5000)",
            "step": callback.best_step, "metrics": metrics}


def _authors_note(selected):
    if not selected:
        return "authors' protocol: no evaluation step was reached (first at step 500)"
    return (f"authors' protocol: step {selected['step']}, chosen for its test NMI (selected "
            "on the test set,\n  as their code did; the first column is the final "
            "checkpoint, the number to compare)")


def evaluate_model(model, config, split):
    from hdml_tf.evaluation import evaluate

    data = evaluation_dataset(config, split, model.embedder.preprocessing)
    return evaluate(model.embedder, data, ks=config.train.ks, metrics=EVAL_METRICS,
                    kmeans_nredo=config.train.kmeans_restarts)


def export_workdir(workdir, config, log=print, model=None):
    """Export the embedder to ``<export_dir>/<export_name>/<version>/``.

    ``model``: the run's HDML model, if in memory (else ``model.keras`` is read).
    Returns the model base directory, or None when the export failed (the run's
    results stand; the error is printed as ``hdml-tf export`` prints it).
    """
    from hdml_tf import export as export_lib

    out = os.path.join(config.train.export_dir, config.train.export_name or config.name)
    try:
        export_lib.export_run(workdir, out, log=log, model=model, config=config)
    except (export_lib.ExportError, ValueError) as error:
        print(f"hdml-tf export: error: {error}", file=sys.stderr)
        return None
    return out


def summary_table(results, paper=None, keys=None):
    """Results side by side: one column per run, one row per metric (in %)."""
    runs = list(results)
    keys = keys or [k for k in next(iter(results.values())) if isinstance(
        next(iter(results.values()))[k], (int, float))]
    header = ["metric"] + runs + (["paper"] if paper else [])
    rows = []
    for key in keys:
        row = [key] + [f"{100 * results[r][key]:.2f}" if key in results[r] else "-"
                       for r in runs]
        if paper:
            row.append(f"{paper[key]:.1f}" if key in paper else "-")
        rows.append(row)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])
