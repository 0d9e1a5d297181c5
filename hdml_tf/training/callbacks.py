"""The callbacks of a training run: checkpoints, logs, and the line a person watches.

Every one reads the step from the model's one step counter (the metric optimizer's
``iterations``, :func:`step_of`), so they act on the same steps whatever the number of
steps per execution, under ``fit`` or ``hdml-tf train``, and after a resume.

* `Checkpointer`: at each epoch end, the evaluations' state into the checkpoint, then
  the checkpoint (``checkpoints/ckpt-<step>``).
* `ScheduleLog`: ``schedule_log.csv``, HDML's hardness schedule every ``log_every`` steps.
* `PinnedScheduleWarning`: one line when λ or w sat at 0 or 1 for a whole window.
* `EpochLog`: ``train_log.csv``, one row of epoch means per epoch.
* `ProgressLine`: one short line per epoch on the console.
"""

import csv
import glob
import os
import shutil
import time

import keras
import tensorflow as tf

from hdml_tf.workdir import WriteError, append_row, atomic_write


def step_of(model):
    """The training steps the model has taken (its metric optimizer's ``iterations``)."""
    return int(model.metric_optimizer.iterations.numpy())


def keep_rows(path, keep):
    """Drop the rows of a CSV log that ``keep(row)`` rejects, atomically (a resumed
    run: the rows written after the checkpoint it goes on from)."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    kept = [row for row in rows if keep(row)]
    if fields is None or len(kept) == len(rows):
        return

    def write(f):
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)

    atomic_write(path, write)


class Checkpointer(keras.callbacks.Callback):
    """At each epoch end: the evaluation callbacks' state, then a checkpoint.

    Args:
      manager: the run's ``tf.train.CheckpointManager`` (its checkpoint holds the
        evaluation callbacks' `checkpoint_state`).
      evaluations: the `EvaluationCallback` s whose state the checkpoint holds.
    """

    def __init__(self, manager, evaluations=()):
        super().__init__()
        self.manager, self.evaluations = manager, list(evaluations)

    def on_epoch_end(self, epoch, logs=None):
        for callback in self.evaluations:
            callback.save_state()
        step = step_of(self.model)
        try:
            self.manager.save(checkpoint_number=step)
        except (OSError, tf.errors.OpError) as error:
            # TensorFlow writes into ckpt-<step>_temp and renames when complete: the
            # previous checkpoints and the state file are as they were.
            prefix = os.path.join(self.manager.directory, f"ckpt-{step}")
            for partial in glob.glob(glob.escape(prefix) + "_temp*"):
                shutil.rmtree(partial, ignore_errors=True)
            reason = getattr(error, "strerror", None) or getattr(error, "message", error)
            raise WriteError(f"could not write {prefix}: {reason}; the previous "
                             "checkpoints are kept") from None


class EpochLog(keras.callbacks.Callback):
    """``train_log.csv``: one row of the epoch's logs per epoch (``epoch`` 0-based, then
    the log keys sorted). Appending to a log a resumed run started keeps its columns (a
    resumed run's first epoch can carry keys the first run's lacked); each row is
    appended whole or not at all (`hdml_tf.workdir.append_row`)."""

    def __init__(self, path):
        super().__init__()
        self.path, self.fields = path, None

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if self.fields is None:
            header = None
            if os.path.exists(self.path) and os.path.getsize(self.path):
                with open(self.path, newline="") as f:
                    header = next(csv.reader(f), None)
            self.fields = header or ["epoch"] + sorted(logs)
        row = {k: logs.get(k, "NA") for k in self.fields[1:]}
        append_row(self.path, self.fields, {"epoch": epoch, **row})


class ScheduleLog(keras.callbacks.Callback):
    """``schedule_log.csv``: every ``every`` steps, the λ and w the next step uses,
    J_avg, J_gen_avg, and the share of candidate negatives the last step's synthesis
    moved (d- > d+): HDML's hardness schedule as it happens. Also the steps skipped so
    far: ``skipped_steps`` (a non-finite objective, any optimizer) and
    ``loss_scale_skips`` (float16: a loss-scaled gradient overflowed), so a log shows
    when steps were skipped, not only how many."""

    FIELDS = ("step", "lambda", "w", "j_avg", "j_gen_avg", "alpha", "beta",
              "hardened_fraction", "skipped_steps", "loss_scale_skips")

    def __init__(self, path, every):
        super().__init__()
        self.path, self.every = path, int(every)

    def on_train_batch_end(self, batch, logs=None):
        step = step_of(self.model)
        if step % self.every or not self.model.params.hdml:
            return
        stats = self.model.statistics()
        stats.update(step=step,
                     skipped_steps=sum(v for k, v in stats.items()
                                       if k.endswith("_skipped_steps")),
                     loss_scale_skips=sum(v for k, v in stats.items()
                                          if k.endswith("_loss_scale_skips")))
        append_row(self.path, self.FIELDS, {k: stats[k] for k in self.FIELDS})


class PinnedScheduleWarning(keras.callbacks.Callback):
    """One line, once per quantity, when λ or w stayed pinned near 0 or 1 (within
    ``PINNED``) for a whole window after the first: λ = exp(-α / J_avg) or
    w = exp(-β / J_gen_avg) then no longer follows training, because the constant is
    far from the size of the loss it divides. Nothing is said for a fitted schedule
    (``model.lambda_start`` / ``w_start`` set: the user chose where it starts) or a
    constant of 0.

    Args:
      window: W, the steps of a window.
      every: the steps between checks (``train.log_every``).
      print_fn: where the line goes.
    """

    PINNED = 0.01
    # (key, symbol, constant, its symbol, loss average, its symbol, start parameter)
    _QUANTITIES = (("lambda", "λ", "alpha", "α", "j_avg", "J_avg", "lambda_start"),
                   ("w", "w", "beta", "β", "j_gen_avg", "J_gen_avg", "w_start"))

    def __init__(self, window, every, print_fn=print):
        super().__init__()
        self.window, self.every, self.print_fn = int(window), int(every), print_fn
        self._pinned_since, self.warned = {}, []

    def _asked(self, constant, start):
        params = self.model.params
        # A fitted schedule is the user's: its start, then the paper's formula, which
        # takes λ toward 0 as the loss falls.
        return getattr(params, start) is not None or getattr(params, constant) == 0.0

    def on_train_batch_end(self, batch, logs=None):
        step = step_of(self.model)
        if step % self.every or not self.model.params.hdml:
            return
        stats = self.model.statistics()
        for key, symbol, constant, c_symbol, loss, l_symbol, start in self._QUANTITIES:
            if (key in self.warned or self._asked(constant, start)
                    or stats[f"{loss}_windows"] < 1):
                continue
            if not self.PINNED <= stats[key] <= 1.0 - self.PINNED:
                since = self._pinned_since.setdefault(key, step)
            else:
                self._pinned_since.pop(key, None)
                continue
            if step - since >= self.window:
                self.warned.append(key)
                edge = 0 if stats[key] < self.PINNED else 1
                self.print_fn(
                    f"warning: {symbol} stayed at {edge} from step {since} to {step} "
                    f"({symbol} = exp(-{c_symbol} / {l_symbol}) = {stats[key]:.2g} with "
                    f"{c_symbol} = {stats[constant]:.4g}, {l_symbol} = {stats[loss]:.3g}); "
                    f"model.{start} sets where {symbol} starts instead (docs/method.md)")


class ProgressLine(keras.callbacks.Callback):
    """One short line per epoch (each train_log.csv row) for the person watching:

      step  250/1500   412 img/s  J_m 1.406  J_metric 1.388  λ 0.920  w 0.911  ETA 2m55s

    J_m and J_metric are the epoch's means, λ and w what the next step uses; skipped
    steps are added only when there are some. Everything else is in the CSV logs and
    TensorBoard.

    Args:
      total_steps: the run's last step.
      batch_size: images per step.
      print_fn: where the lines go.
    """

    def __init__(self, total_steps, batch_size, print_fn=print):
        super().__init__()
        self.total, self.batch_size, self.print_fn = int(total_steps), batch_size, print_fn
        self._started = self._first = None

    def on_epoch_begin(self, epoch, logs=None):
        self._started, self._first = time.perf_counter(), step_of(self.model)

    def on_epoch_end(self, epoch, logs=None):
        logs, step = logs or {}, step_of(self.model)
        steps = max(step - self._first, 1)
        seconds = max(time.perf_counter() - self._started, 1e-9)
        parts = [f"step {step:>{len(str(self.total))}}/{self.total}",
                 f"{steps * self.batch_size / seconds:.0f} img/s"]
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
