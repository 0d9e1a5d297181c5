"""Tests of hdml_tf.evaluation.callbacks.EvaluationCallback inside `fit`."""

import csv
import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from hdml_tf.evaluation.callbacks import EvaluationCallback


def _data(seed=0, n_classes=4, per_class=8, d=6):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    centres = 3 * np.eye(d)[:n_classes]
    x = (centres[labels] + 0.3 * rng.standard_normal((labels.size, d))).astype(np.float32)
    return x, labels


def _model(d=6):
    """Identity-initialised linear embedder: retrieval is perfect before training."""
    inp = keras.Input((d,))
    out = keras.layers.Dense(d, kernel_initializer="identity", use_bias=False)(inp)
    return keras.Model(inp, out)


class _Snapshots(keras.callbacks.Callback):
    """Records the weights at the end of every epoch (runs after the evaluation)."""

    def __init__(self):
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append([w.copy() for w in self.model.get_weights()])


def test_fit_logs_history_and_restores_best(tmp_path):
    """Training regresses every embedding onto the same constant vector, which pulls the
    linear map towards rank one and destroys the class structure the identity
    initialisation starts with, so the monitored MAP@R falls. The callback must put
    val_* keys into History, and at the end put back the weights of the best epoch (the
    first strict maximum)."""
    x, y = _data()
    x_val, y_val = _data(seed=1)
    targets = np.ones_like(x)
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(0.2), loss="mse")
    cb = EvaluationCallback((x_val, y_val), split_name="val", ks=(1, 2), monitor="map@r",
                            csv_path=str(tmp_path / "eval.csv"),
                            log_dir=str(tmp_path / "tb"),
                            save_best_path=str(tmp_path / "best.weights.h5"))
    snaps = _Snapshots()
    hist = model.fit(x, targets, epochs=6, batch_size=8, verbose=0, callbacks=[cb, snaps])
    for key in ("loss", "val_recall@1", "val_recall@2", "val_map@r", "val_r_precision",
                "val_nmi", "val_f1"):
        assert key in hist.history and len(hist.history[key]) == 6, key
    scores = hist.history["val_map@r"]
    best = int(np.argmax(scores))  # argmax returns the first maximum, as the callback
    assert best < 5 and scores[best] > scores[-1], "training must degrade the metric"
    assert cb.best_epoch == best and cb.best == pytest.approx(scores[best])
    for w_now, w_best, w_last in zip(model.get_weights(), snaps.weights[best],
                                     snaps.weights[-1]):
        np.testing.assert_array_equal(w_now, w_best)
        assert not np.array_equal(w_best, w_last)
    # CSV: header + one row per evaluation, values equal to History's.
    with open(tmp_path / "eval.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    assert [float(r["val_map@r"]) for r in rows] == pytest.approx(scores)
    events = glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*"))
    assert len(events) == 1
    logged = {}
    for record in tf.data.TFRecordDataset(events[0]):
        event = tf.compat.v1.Event.FromString(record.numpy())
        for v in event.summary.value:
            assert v.metadata.plugin_data.plugin_name == "scalars"
            logged.setdefault(v.tag, []).append(float(tf.make_ndarray(v.tensor)))
    assert logged["val_map@r"] == pytest.approx(scores)
    # The saved best weights load back into a fresh model and equal the restored ones.
    fresh = _model()
    fresh.load_weights(str(tmp_path / "best.weights.h5"))
    for a, b in zip(fresh.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_refuses_to_select_on_test():
    x, y = _data()
    with pytest.raises(ValueError, match="test"):
        EvaluationCallback((x, y), split_name="test")
    with pytest.raises(ValueError, match="test"):
        EvaluationCallback((x, y), split_name="Test", monitor="map@r")
    with pytest.raises(ValueError, match="test"):
        EvaluationCallback((x, y), split_name="cub_test")
    EvaluationCallback((x, y), split_name="contest_val")  # "test" only inside a word
    EvaluationCallback((x, y), split_name="test", monitor=None)  # logging only: fine
    EvaluationCallback((x, y), split_name="test", allow_test_selection=True)


def test_every_n_steps_and_embedder_attribute():
    """A model exposing `.embedder` is evaluated through it: here the embedder maps every
    input to a class-independent constant, so Recall@1 is decided by the tie rule alone
    (nearest = lowest other index), whereas the full model would score 1.0. 32 samples in
    batches of 8 = 4 steps per epoch, every 3 steps over 2 epochs -> 2 evaluations
    (steps 3 and 6)."""
    x, y = _data()

    class WithEmbedder(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(6, kernel_initializer="identity")
            self.embedder = keras.Sequential([keras.Input((6,)),
                                              keras.layers.Lambda(lambda t: t * 0 + 1.0)])

        def call(self, inputs):
            return self.dense(inputs)

    model = WithEmbedder()
    model.compile(optimizer="sgd", loss="mse")
    cb = EvaluationCallback((x, y), ks=(1,), metrics=("recall",), every_n_steps=3,
                            monitor=None)
    hist = model.fit(x, x, epochs=2, batch_size=8, verbose=0, callbacks=[cb])
    assert [e["step"] for e in cb.evaluations] == [3, 6]
    # Tie rule: the neighbour of query 0 is 1 (same class), of every other query is 0;
    # queries 1..7 share class 0 with it: hits 0..7 = 8 of 32.
    assert hist.history["val_recall@1"] == pytest.approx([0.25, 0.25])


def test_monitor_must_be_computed():
    x, y = _data()
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    cb = EvaluationCallback((x, y), metrics=("nmi",), monitor="recall@1")
    with pytest.raises(ValueError, match="monitor"):
        model.fit(x, x, epochs=1, verbose=0, callbacks=[cb])
    with pytest.raises(ValueError, match="weights.h5"):
        EvaluationCallback((x, y), save_best_path=os.path.join("a", "best.h5"))
