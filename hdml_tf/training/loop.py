"""``hdml-tf train``'s driver: `setup` a `Run`, `run_loop` it, `finish` it.

One loop serves every strategy: a ``tf.function`` around ``strategy.run(train_step)``
over a distributed dataset, up to ``train.steps_per_execution`` steps a call, driving
the same Keras callbacks ``fit`` would (``CallbackList``). Why not ``fit`` (measured in
Keras 3.15 / TF 2.21, docs/benchmarks.md):

* ``fit`` fails under MultiWorkerMirroredStrategy (``ValueError: Attempt to convert a
  value (PerReplica...)``, even for a one-layer model);
* ``fit`` runs every execution for exactly N steps, so a call cannot end at the
  authors' evaluation steps (every 500, then every 64 or 46 from step 5000) or at a log
  row unless N divides all of them (N = 2 for the paper presets). Here a call ends at
  the next step a callback acts on (`steps_to_boundary`), and every step runs in the
  same loop body, so any N trains bit-identical weights.

Callbacks read the step from the model's one counter (the metric optimizer's
``iterations``), so the library's callbacks work under ``fit`` too.

Workdir layout:
  config.json                 the resolved experiment config and the class split
  checkpoints/ckpt-<step>     tf.train.Checkpoint every ``train.steps_per_epoch`` steps:
                              every model and optimizer variable (the step is the metric
                              optimizer's iterations) and the evaluations' state
  train_log.csv, tensorboard/ epoch means; schedule_log.csv every ``train.log_every``
  eval_log.csv, ...           one row per evaluation
  model.keras, metrics.json   the final model and its test metrics (and, when the
                              head's statistics carry synthetic features, the test
                              metrics with them re-estimated from the real images)

Killed at any moment (even ``kill -9``) and run again with the same workdir, training
resumes from the last checkpoint; the rows its logs got after that checkpoint are
dropped first, so they end as an uninterrupted run's.
"""

import dataclasses
import json
import os
import shutil
import time
import typing

import keras
import tensorflow as tf

from hdml_tf import checkpoints
from hdml_tf import config as config_lib
from hdml_tf import nonfinite
from hdml_tf import workdir as workdir_lib
from hdml_tf.evaluation.callbacks import EvaluationCallback
from hdml_tf.experiment import authors_eval_schedule, build_model
from hdml_tf.training import head_statistics, inputs, report, strategies
from hdml_tf.training.callbacks import (Checkpointer, EpochLog, PinnedScheduleWarning,
                                        ProgressLine, ScheduleLog, keep_rows, step_of)
from hdml_tf.workdir import write_json


@dataclasses.dataclass
class Run:
    """One experiment ready to train: what `setup` builds, `run_loop` advances and
    `finish` reports on. ``steps(iterator, count)`` runs ``count`` training steps in one
    call and returns the last step's logs."""

    config: typing.Any
    workdir: str
    strategy: tf.distribute.Strategy
    chief: bool
    scratch: str  # where this worker writes: the workdir on the chief
    splits: dict
    model: keras.Model
    start_step: int
    iterator: typing.Any
    steps: typing.Callable
    callbacks: keras.callbacks.CallbackList
    evaluations: dict  # name -> EvaluationCallback
    log: typing.Callable = print
    logs: dict = dataclasses.field(default_factory=dict)
    train_seconds: float = 0.0


def train(config, workdir, strategy=None, devices=None, log=print, return_model=False):
    """Run (or resume) one experiment in ``workdir``; returns the results dict.

    Args:
      config: a validated ExperimentConfig.
      workdir: created if missing; an existing one with a different config is refused,
        and one another process trains in (`hdml_tf.workdir.WorkdirLock`).
      strategy: a tf.distribute strategy (default: from ``config.train.strategy``).
      devices: device list for a "mirrored" strategy built here.
      log: where progress lines go.
      return_model: return ``(results, model)`` instead of ``results``.
    """
    strategy = strategy or strategies.build_strategy(config.train.strategy, devices)
    # One writer per workdir: the chief (the other workers write their scratch folders).
    with workdir_lib.locked(workdir, enabled=strategies.is_chief(strategy)):
        run = setup(config, workdir, strategy=strategy, log=log)
        run_loop(run)
        results = finish(run)
    return (results, run.model) if return_model else results


def check_workdir(config, workdir):
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
    check_workdir(config, workdir)
    keras.utils.set_random_seed(config.train.seed)
    strategy = strategy or strategies.build_strategy(config.train.strategy, devices)
    chief = strategies.is_chief(strategy)
    per_batch, replicas = config_lib.classes_per_batch(config), strategy.num_replicas_in_sync
    if per_batch % replicas:
        raise config_lib.ConfigError(
            f"data.batch_size: {per_batch} classes per batch do not split evenly over "
            f"{replicas} replicas")
    splits = inputs.load_splits(config)
    num_classes = splits["train"].num_classes
    config_lib.check_against_dataset(config, num_classes)
    if chief:
        write_json(os.path.join(workdir, "config.json"), {
            "config": config.to_dict(), "num_classes": num_classes,
            "class_names": {k: list(map(str, v.class_names)) for k, v in splits.items()}})
    with strategy.scope():
        model = build_model(config, num_classes)
    preprocessing = model.embedder.preprocessing
    evaluations = _evaluations(config, workdir, splits, preprocessing) if chief else {}
    for callback in evaluations.values():
        callback.set_model(model)
    checkpoint = checkpoints.make_checkpoint(model, **{
        f"evaluation_{name}": callback.checkpoint_state()
        for name, callback in evaluations.items()})
    start_step = _resume(checkpoint, model, workdir, config.train.steps_per_epoch, log)
    for callback in evaluations.values():
        callback.load_state()
    scratch = strategies.scratch_dir(workdir, strategy)
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(scratch, "checkpoints"),
                                         max_to_keep=config.train.keep_checkpoints)
    callbacks = _callbacks(config, workdir, chief, start_step, evaluations, log)
    callbacks.append(Checkpointer(manager, evaluations.values()))
    t = config.train
    return Run(config=config, workdir=workdir, strategy=strategy, chief=chief,
               scratch=scratch, splits=splits, model=model, start_step=start_step,
               iterator=inputs.distributed_batches(config, strategy, splits["train"],
                                                   preprocessing, start_step),
               steps=_step_function(model, strategy, t.xla), evaluations=evaluations,
               callbacks=keras.callbacks.CallbackList(
                   callbacks, add_history=True, add_progbar=False, model=model,
                   epochs=-(-t.steps // t.steps_per_epoch), steps=t.steps_per_epoch),
               log=log)


def _resume(checkpoint, model, workdir, steps_per_epoch, log):
    """Restore the newest checkpoint of ``workdir`` that restores (every worker resumes
    from the chief's; a damaged one is set aside and its steps re-run) into
    ``checkpoint``; returns the step to start from."""
    restored = checkpoints.restore_newest(checkpoint, os.path.join(workdir, "checkpoints"),
                                          log=log)
    if restored:
        log(f"resumed from {restored} at step {step_of(model)}")
    start_step = step_of(model)
    if start_step % steps_per_epoch:
        raise RuntimeError(f"checkpoint step {start_step} is not a multiple of "
                           f"train.steps_per_epoch={steps_per_epoch}")
    return start_step


def _evaluations(config, workdir, splits, preprocessing):
    """name -> the run's `EvaluationCallback` s: periodic evaluation with best-weight
    selection (``train.eval_every``) and the authors' protocol
    (``train.authors_selection``), reported beside the final numbers; it never changes
    the weights the run ends with."""
    t = config.train
    specs = {}
    if t.eval_every:
        specs["eval"] = (t.eval_split, dict(
            every_n_steps=t.eval_every, monitor=t.monitor, restore_best_weights=True,
            allow_test_selection=t.select_on_test))
    if t.authors_selection:
        specs["authors_eval"] = ("test", dict(
            schedule=authors_eval_schedule(config), monitor="nmi",
            restore_best_weights=False, allow_test_selection=True))
    return {name: EvaluationCallback(
        inputs.evaluation_dataset(config, splits[split], preprocessing), split_name=split,
        ks=t.ks, log_dir=os.path.join(workdir, "tensorboard", name),
        csv_path=os.path.join(workdir, f"{name}_log.csv"), verbose=t.verbose,
        kmeans_nredo=t.kmeans_restarts, seed=t.kmeans_seed, **kwargs)
        for name, (split, kwargs) in specs.items()}


def _callbacks(config, workdir, chief, start_step, evaluations, log):
    """The run's callbacks but the checkpointer; on the chief, first the log rows
    written after the checkpoint the run resumes from are dropped."""
    t = config.train
    # A stalled metric update ends the run before a checkpoint would save it.
    callbacks = [nonfinite.StopOnNonFinite(config.model.window)]
    if not chief:
        return callbacks
    epoch = start_step // t.steps_per_epoch
    keep_rows(os.path.join(workdir, "train_log.csv"), lambda row: int(row["epoch"]) < epoch)
    for name in ["schedule"] + list(evaluations):
        keep_rows(os.path.join(workdir, f"{name}_log.csv"),
                  lambda row: int(row["step"]) <= start_step)
    callbacks = list(evaluations.values()) + callbacks + [
        EpochLog(os.path.join(workdir, "train_log.csv")),
        keras.callbacks.TensorBoard(os.path.join(workdir, "tensorboard"), write_graph=False),
        ScheduleLog(os.path.join(workdir, "schedule_log.csv"), t.log_every),
        PinnedScheduleWarning(config.model.window, t.log_every, print_fn=log)]
    if t.verbose:
        callbacks.append(ProgressLine(t.steps, config.data.batch_size, print_fn=log))
    return callbacks


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


def boundaries(config):
    """Steps after which a callback acts (a log row, an evaluation): an execution of
    ``train.steps_per_execution`` steps always ends there, so they see the weights of
    exactly that step."""
    t = config.train
    checks = [lambda s: s % t.log_every == 0]
    if t.eval_every:
        checks.append(lambda s: s % t.eval_every == 0)
    if t.authors_selection:
        checks.append(authors_eval_schedule(config))
    return checks


def steps_to_boundary(step, per_execution, stop, checks):
    """How many steps to run from global ``step``: up to ``per_execution``, ending
    early at ``stop`` (the epoch's end) or at the first step a check names."""
    for end in range(step + 1, min(step + per_execution, stop) + 1):
        if end == stop or any(check(end) for check in checks):
            return end - step
    return min(per_execution, stop - step)


def run_loop(run):
    """Train from ``run.start_step`` to ``config.train.steps``, the callbacks at the end
    of each call (as ``fit`` with steps_per_execution: one batch-begin/end pair per
    call, with the call's first and last batch index) and each epoch."""
    config, model, callbacks = run.config, run.model, run.callbacks
    t = config.train
    run.log(f"training {config.name}: {t.steps} steps from step {run.start_step}, "
            f"{run.strategy.num_replicas_in_sync} replica(s), "
            f"HDML {'on' if config.model.hdml else 'off'}")
    started, logs, checks = time.time(), {}, boundaries(config)
    callbacks.on_train_begin()
    for epoch in range(run.start_step // t.steps_per_epoch, -(-t.steps // t.steps_per_epoch)):
        model.reset_metrics()
        callbacks.on_epoch_begin(epoch)
        first, batch = epoch * t.steps_per_epoch, 0
        stop = min(first + t.steps_per_epoch, t.steps)
        while first + batch < stop:
            count = steps_to_boundary(first + batch, t.steps_per_execution, stop, checks)
            callbacks.on_train_batch_begin(batch)
            logs = {k: float(v) for k, v in run.steps(run.iterator, tf.constant(count)).items()}
            callbacks.on_train_batch_end(batch + count - 1, logs)
            batch += count
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
    results["test"] = report.evaluate_model(model, config, run.splits["test"])
    results["paper"] = dict(config.paper)
    tables = {config.name: results["test"]}  # the headline: the final checkpoint
    if head_statistics.carries_synthetic(model.params):
        # model.keras keeps them as trained; what follows (the export) sees the head
        # normalising with the real training images' statistics.
        results["head_statistics"] = head_statistics.reestimate(model, config,
                                                                run.splits["train"])
        results["test_real_head_statistics"] = report.evaluate_model(
            model, config, run.splits["test"])
        tables["head statistics of real images"] = results["test_real_head_statistics"]
    if "authors_eval" in run.evaluations:
        results["authors_selected"] = report.authors_selected(
            run.evaluations["authors_eval"], config.train)
        if results["authors_selected"]:
            tables["authors' protocol"] = results["authors_selected"]["metrics"]
    write_json(os.path.join(run.workdir, "metrics.json"), results)
    run.log(report.summary_table(tables, paper=config.paper))
    if "authors_selected" in results:
        run.log(report.authors_note(results["authors_selected"], config.train))
    if config.train.export:
        results["export"] = report.export_workdir(
            run.workdir, config, log=run.log, model=model,
            head_statistics=results.get("head_statistics"))
    return results
