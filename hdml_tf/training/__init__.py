"""Training runs: ``hdml-tf train`` as a library.

``train(config, workdir)`` runs (or resumes) one experiment; where the pieces are:

* ``loop.py``: `train` = `setup` -> `run_loop` -> `finish`, the workdir layout, why the
  driver is a custom loop and not ``fit``;
* ``strategies.py``: ``train.strategy`` -> a ``tf.distribute`` strategy, the chief;
* ``inputs.py``: the splits, the training batches from a step on, evaluation sets;
* ``callbacks.py``: checkpoints, the CSV logs, the progress line;
* ``report.py``: test metrics, the authors' selection, the table, the export;
* ``head_statistics.py``: the head's BatchNorm statistics from the real training images.

The model a config describes is built by ``hdml_tf.experiment.build_model``;
checkpoints are ``hdml_tf.checkpoints``.
"""

from hdml_tf.training.inputs import evaluation_dataset, load_splits, subsample_split
from hdml_tf.training.loop import Run, finish, run_loop, setup, train
from hdml_tf.training.report import evaluate_model, export_checkpoint, summary_table

__all__ = ["Run", "evaluate_model", "evaluation_dataset", "export_checkpoint", "finish",
           "load_splits", "run_loop", "setup", "subsample_split", "summary_table", "train"]
