"""Training-time retrieval evaluation as a Keras callback, with best-weight selection.

The official HDML code picked its best checkpoint on the test set; this callback refuses
to *select* on a split named "test" unless told to (`allow_test_selection=True`).
Logging metrics of the test split without selecting on them (``monitor=None``) is
allowed.

Metric values go into the `logs` dict that Keras passes along the callback list, so
`fit`'s History records them, as do callbacks placed *after* this one (put it first if
EarlyStopping or ModelCheckpoint should monitor its values). They also go to TensorBoard
(a `tf.summary` file writer in `log_dir`) and to a CSV file.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from hdml_tf.evaluation.protocol import ALL_METRICS, KS_SMALL, embed, evaluate_embeddings
from hdml_tf.workdir import append_row


def _names_test(split_name: str) -> bool:
    """True for "test" and names with "test" as a word: "Test", "cub_test", "test-set"."""
    return re.search(r"(^|[^a-z])test([^a-z]|$)", split_name.lower()) is not None


def authors_schedule(step: int, every: int = 64, every_initial: int = 500) -> bool:
    """Whether the authors' training loop evaluates after ``step``.

    ``main_npair.py`` evaluates when ``step % bp_epoch == 0``, ``bp_epoch`` starting at
    ``init_batch_per_epoch`` (``every_initial``: 500) and set to ``batch_per_epoch``
    (``every``: 64 for Cars196, 46 for CUB, ``FLAGS.py``) by the first evaluation at a
    step >= 5000. Cars196: 500, 1000, ..., 5000, 5056, 5120, ...; CUB: ..., 5000,
    5014, 5060, ...
    """
    switch = -(-5000 // every_initial) * every_initial  # that first evaluation
    return step % every_initial == 0 if step <= switch else step % every == 0


def _check_arguments(split_name, monitor, mode, every_n_epochs, every_n_steps,
                     save_best_path, allow_test_selection):
    """The argument checks of `EvaluationCallback` (see its Raises)."""
    if monitor is not None and _names_test(split_name) and not allow_test_selection:
        raise ValueError(
            "refusing to select weights on the test split: monitor a validation "
            "split held out from the training classes, pass monitor=None to only "
            "log test metrics, or pass allow_test_selection=True deliberately")
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    if every_n_steps is not None and every_n_steps < 1:
        raise ValueError("every_n_steps must be >= 1")
    if every_n_epochs < 1:
        raise ValueError("every_n_epochs must be >= 1")
    if save_best_path is not None and monitor is None:
        raise ValueError("save_best_path needs a monitor")
    if save_best_path is not None and not save_best_path.endswith(".weights.h5"):
        raise ValueError("save_best_path must end with '.weights.h5' (Keras 3)")


_SHORT_NAMES = {"map@r": "MAP@R", "r_precision": "RP", "nmi": "NMI", "f1": "F1"}


def evaluation_line(split_name: str, step: int, metrics: dict) -> str:
    """One short line for a person: ``test at step 500: R@1 53.1  R@2 65.7 ... NMI 70.3``
    (metrics in %)."""
    shown = "  ".join(f"{_SHORT_NAMES.get(k, k.replace('recall', 'R'))} {100 * v:.1f}"
                      for k, v in metrics.items())
    return f"{split_name} at step {step}: {shown}"


def _every(n):
    """The schedule that evaluates after every n-th step."""
    return lambda step: step % n == 0


class EvaluationCallback(keras.callbacks.Callback):
    """Evaluates retrieval / clustering metrics every N epochs or steps.

    The embedder is `self.model.embedder` when the model has one (the HDML model does: a
    keras.Model from images to L2-normalised embeddings), else the model itself.

    Args:
        data: the evaluation split, given explicitly: a tf.data.Dataset of
            (images, labels) batches or a tuple of arrays (see `hdml_tf.evaluation.embed`).
        split_name: name of the split, used as the key prefix ("val" -> "val_recall@1").
        ks: K values of Recall@K.
        metrics: subset of ("recall", "map@r", "r_precision", "nmi", "f1").
        every_n_epochs: evaluate at the end of every n-th epoch (ignored when
            `every_n_steps` is set).
        every_n_steps: evaluate every n training steps (the optimizer's iterations,
            checked after each execution: with steps_per_execution > 1 under ``fit``,
            choose n a multiple of it). The latest values are also written into each
            epoch's logs, so History has them once per epoch.
        schedule: instead of ``every_n_steps``, a function of the step count that says
            whether to evaluate after that step (e.g. the authors' every 500 steps,
            every 64 or 46 from step 5000 on: :func:`authors_schedule`).
        monitor: metric that selects the best weights, without prefix (e.g. "recall@1",
            "map@r"), or None to only log.
        mode: "max" or "min" for `monitor`. A later evaluation replaces the best only if
            it is strictly better.
        restore_best_weights: at the end of training, load the best weights into the
            model (the whole model, not only the embedder).
        save_best_path: if set, the best weights are also saved there each time they
            improve (Keras 3 requires the suffix ".weights.h5").
        log_dir: if set, TensorBoard scalars are written there, step = training step.
        csv_path: if set, one row per evaluation (epoch, step, metrics) is appended.
        allow_test_selection: permit `monitor` on a split whose name has "test" as a
            word ("test", "Test", "cub_test"). Off by default: choosing a checkpoint on
            the test set inflates the reported numbers.
        batch_size: batch size used to embed array data.
        verbose: print the metrics after every evaluation when > 0.
        **eval_kwargs: forwarded to `evaluate_embeddings` (clip_k, singleton_queries,
            backend, seed, kmeans_backend, kmeans_niter).

    Raises:
        ValueError: if `monitor` is set on a split named "test" without
            `allow_test_selection=True`, or arguments are inconsistent.
    """

    def __init__(
        self,
        data,
        *,
        split_name: str = "val",
        ks: Sequence[int] = KS_SMALL,
        metrics: Iterable[str] = ALL_METRICS,
        every_n_epochs: int = 1,
        every_n_steps: int | None = None,
        schedule=None,
        monitor: str | None = "recall@1",
        mode: str = "max",
        restore_best_weights: bool = True,
        save_best_path: str | None = None,
        log_dir: str | None = None,
        csv_path: str | None = None,
        allow_test_selection: bool = False,
        batch_size: int = 256,
        verbose: int = 0,
        **eval_kwargs,
    ):
        super().__init__()
        _check_arguments(split_name, monitor, mode, every_n_epochs, every_n_steps,
                         save_best_path, allow_test_selection)
        self.data = data
        self.split_name = split_name
        self.prefix = f"{split_name}_" if split_name else ""
        self.ks = tuple(int(k) for k in ks)
        self.metrics = tuple(metrics)
        self.every_n_epochs = int(every_n_epochs)
        self.every_n_steps = None if every_n_steps is None else int(every_n_steps)
        if schedule is None and self.every_n_steps:
            schedule = _every(self.every_n_steps)
        self.schedule = schedule
        self.monitor = monitor
        self.mode = mode
        self.restore_best_weights = restore_best_weights
        self.save_best_path = save_best_path
        self.log_dir = log_dir
        self.csv_path = csv_path
        self.batch_size = batch_size
        self.verbose = verbose
        self.eval_kwargs = eval_kwargs
        self.best: float | None = None
        self.best_weights: list[np.ndarray] | None = None
        self.best_epoch: int | None = None
        self.best_step: int | None = None
        self.evaluations: list[dict] = []  # every evaluation: epoch, step and metrics
        self._latest: dict[str, float] = {}
        self._epoch = 0
        self._writer = None
        self._restored = False
        self._state = None  # the variables a checkpoint holds (checkpoint_state)

    # -- helpers ---------------------------------------------------------------------

    def _embedder(self):
        embedder = getattr(self.model, "embedder", None)
        return self.model if embedder is None else embedder

    def _step(self) -> int:
        """Training steps done: the model's step counter (HDML's metric optimizer, else
        Keras' optimizer), so evaluations fall on their steps whatever the number of
        steps per execution or a resume."""
        optimizer = getattr(self.model, "metric_optimizer", None) or self.model.optimizer
        return int(optimizer.iterations.numpy())

    def _is_better(self, value: float) -> bool:
        if value is None or math.isnan(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def evaluate_now(self) -> dict[str, float]:
        """Embed the split with the current weights and return prefixed metrics."""
        emb, lab = embed(self._embedder(), self.data, self.batch_size)
        res = evaluate_embeddings(emb, lab, self.ks, self.metrics, **self.eval_kwargs)
        if self.monitor is not None and self.monitor not in res:
            raise ValueError(f"monitor {self.monitor!r} is not among the computed "
                             f"metrics {sorted(res)}")
        return res

    def _run(self):
        res = self.evaluate_now()
        step = self._step()
        self._latest = {self.prefix + k: float(v) for k, v in res.items()}
        self.evaluations.append({"epoch": self._epoch, "step": step, **self._latest})
        self._write_tensorboard()
        self._write_csv()
        if self.monitor is not None and self._is_better(res[self.monitor]):
            self.best = float(res[self.monitor])
            self.best_epoch, self.best_step = self._epoch, step
            if self.restore_best_weights:
                self.best_weights = [np.array(w, copy=True) for w in self.model.get_weights()]
            if self.save_best_path:
                os.makedirs(os.path.dirname(os.path.abspath(self.save_best_path)),
                            exist_ok=True)
                self.model.save_weights(self.save_best_path)
        if self.verbose:
            print(evaluation_line(self.split_name, step, res))

    def _write_tensorboard(self):
        if not self.log_dir:
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        # tf.summary.scalar lives in the tensorboard package, which is not a dependency;
        # the raw write op with the "scalars" plugin metadata produces the same event
        # that TensorBoard's scalar dashboard reads.
        meta = summary_pb2.SummaryMetadata()
        meta.plugin_data.plugin_name = "scalars"
        meta.data_class = summary_pb2.DATA_CLASS_SCALAR
        meta = meta.SerializeToString()
        with self._writer.as_default():
            for k, v in self._latest.items():
                tf.summary.write(k, tf.constant(v, tf.float32), step=self._step(),
                                 metadata=meta)
        self._writer.flush()

    def _write_csv(self):
        if not self.csv_path:
            return
        row = {"epoch": self._epoch + 1, "step": self._step(), **self._latest}
        os.makedirs(os.path.dirname(os.path.abspath(self.csv_path)), exist_ok=True)
        append_row(self.csv_path, list(row), row)

    # -- state, for checkpoints -----------------------------------------------------

    def get_state(self) -> dict:
        """What a resumed run needs to go on as if never stopped (JSON-serialisable;
        the best weights are `best_weights`, from step ``best_step``)."""
        return {"best": self.best, "best_epoch": self.best_epoch,
                "best_step": self.best_step, "epoch": self._epoch,
                "latest": dict(self._latest), "evaluations": list(self.evaluations)}

    def set_state(self, state: dict, best_weights=None):
        """Restore `get_state`'s output (and the best weights) before training resumes."""
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.best_step, self._epoch = state["best_step"], int(state["epoch"])
        self._latest = dict(state["latest"])
        self.evaluations = list(state["evaluations"])
        self.best_weights = None if best_weights is None else list(best_weights)
        self._restored = True

    def checkpoint_state(self):
        """The variables that hold this callback's state in a ``tf.train.Checkpoint``
        (``{"record": ..., "best_weights": {...}}``), so a run's one checkpoint holds
        its evaluations too. Call `save_state` before each save and `load_state` after
        a restore; the model must be set and built."""
        if self._state is None:
            best = {}
            if self.restore_best_weights:
                best = {str(i): tf.Variable(tf.zeros(w.shape, w.dtype), trainable=False)
                        for i, w in enumerate(self.model.weights)}
            self._state = {"record": tf.Variable("", dtype=tf.string, trainable=False),
                           "best_weights": best}
        return self._state

    def save_state(self):
        """Copy the state into `checkpoint_state`'s variables."""
        state = self.checkpoint_state()
        state["record"].assign(json.dumps(self.get_state()))
        if self.best_weights is not None:
            for i, value in enumerate(self.best_weights):
                state["best_weights"][str(i)].assign(value)

    def load_state(self):
        """Take the state from `checkpoint_state`'s variables (after a restore)."""
        state = self.checkpoint_state()
        record = state["record"].numpy().decode()
        saved = json.loads(record) if record else None
        if saved is None:
            return
        best = None
        if saved["best_step"] is not None and state["best_weights"]:
            best = [state["best_weights"][str(i)].numpy()
                    for i in range(len(state["best_weights"]))]
        self.set_state(saved, best)

    # -- Keras hooks -----------------------------------------------------------------

    def on_train_begin(self, logs=None):
        if self._restored:  # resumed: keep the state set_state() brought back
            self._restored = False
            return
        self.best = None
        self.best_weights = None
        self.best_epoch = self.best_step = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        # With N steps per execution Keras (and hdml-tf train) call this once per
        # execution; every step a schedule names ends an execution in hdml-tf train.
        if self.schedule is not None and self.schedule(self._step()):
            self._run()

    def on_epoch_end(self, epoch, logs=None):
        self._epoch = epoch
        if self.schedule is None and (epoch + 1) % self.every_n_epochs == 0:
            self._run()
        if logs is not None:
            # Latest values (possibly from an earlier epoch or step) so that every
            # History row has the keys once the first evaluation has happened.
            logs.update(self._latest)

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_weights is not None:
            self.model.set_weights(self.best_weights)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
