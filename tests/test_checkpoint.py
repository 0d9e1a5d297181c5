"""hdml_tf.checkpoints: make_checkpoint, restore and restore_model on their own.

The model is what ``hdml-tf train`` builds (``build_model``) with the ``small_cnn``
backbone: BatchNorm statistics inside a nested Keras model, which Keras 3 objects hide
from tf.train.Checkpoint's object-graph tracking. Every BatchNorm statistic is
randomised before saving, so one that a save or a restore misses cannot come back
equal by chance (fresh layers hold mean 0, variance 1).

A resume or an export usually restores in a new process, where Keras's name counters
start again (``keras.backend.clear_session`` does the same here); a second ``train``
in one process restores with the counters moved on (optimizers ``adam_3``, ...), which
the tests without ``clear_session`` cover.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from hdml_tf import checkpoints
from hdml_tf import config as config_lib
from hdml_tf import experiment
from tests.conftest import randomise_batchnorm

NUM_CLASSES = 5
CONFIG = {
    "name": "checkpoint_test",
    "data": {"name": "digits", "resize": 12, "crop": 10, "batch_size": 4},
    "model": {"backbone": "small_cnn", "embedding_dim": 8, "window": 2},
}


def _config():
    return config_lib.from_dict(json.loads(json.dumps(CONFIG)))


def _variables(model):
    return (model.variables + model.metric_optimizer.variables
            + model.generator_optimizer.variables + model.classifier_optimizer.variables)


def _trained_model(seed=1):
    """build_model's model after one training step, with random BatchNorm statistics.

    The step runs eagerly: it only has to move the optimizer slots and statistics (the
    variables exist from build on), and tracing the train step took most of each test.
    """
    keras.backend.clear_session()
    model = experiment.build_model(_config(), NUM_CLASSES)
    model.run_eagerly = True
    rng = np.random.default_rng(seed)
    labels = np.arange(4, dtype=np.int32) % NUM_CLASSES
    x = tuple(rng.uniform(-1, 1, (4, 10, 10, 3)).astype(np.float32) for _ in range(2))
    model.train_on_batch(x, (labels, labels))  # optimizer slots and statistics move
    statistics = randomise_batchnorm(model, seed=seed)
    assert any("small_cnn" in v.path for v in statistics)  # the nested backbone's
    return model


def _assert_same_state(restored, model):
    ours, theirs = _variables(model), _variables(restored)
    assert len(theirs) == len(ours)
    # In the same order; the paths may differ (a model reloaded from model.keras has
    # "hdml/embedder/..." where build_model's has "embedder/...").
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(b.numpy(), a.numpy(), err_msg=f"{a.path} {b.path}")


def _images():
    return np.random.default_rng(0).uniform(-1, 1, (3, 10, 10, 3)).astype(np.float32)


def test_make_checkpoint_restores_into_a_fresh_model(tmp_path):
    """A resumed run builds a new model and restores into it: every variable, the
    nested backbone's BatchNorm statistics and all three optimizers' slots included."""
    model = _trained_model()
    path = checkpoints.make_checkpoint(model).save(str(tmp_path / "ckpt"))
    keras.backend.clear_session()  # a new process
    fresh = experiment.build_model(_config(), NUM_CLASSES)
    assert not np.array_equal(fresh.embedder.backbone.non_trainable_variables[0].numpy(),
                              model.embedder.backbone.non_trainable_variables[0].numpy())
    checkpoints.restore(checkpoints.make_checkpoint(fresh), path).assert_consumed()
    _assert_same_state(fresh, model)
    np.testing.assert_array_equal(fresh.embedder(_images()).numpy(),
                                  model.embedder(_images()).numpy())


def test_make_checkpoint_keys_every_variable_by_its_path():
    model = _trained_model()
    checkpoint = checkpoints.make_checkpoint(model)
    keys = set(checkpoint.model)
    assert keys == {v.path.replace("/", ".") for v in model.variables}
    assert {k for k in keys if "moving_" in k and k.startswith("small_cnn.")}
    assert int(checkpoint.metric_optimizer["0.iteration"].numpy()) == 1  # the step


def test_restore_model_prefers_model_keras(tmp_path):
    model = _trained_model()
    model.save(str(tmp_path / "model.keras"))
    restored = checkpoints.restore_model(str(tmp_path))
    _assert_same_state(restored, model)
    np.testing.assert_array_equal(restored.embedder(_images()).numpy(),
                                  model.embedder(_images()).numpy())


def test_restore_model_from_config_and_the_latest_checkpoint(tmp_path):
    """No model.keras (a run killed before its end): the config.json that train
    writes plus the newest checkpoint in checkpoints/."""
    model = _trained_model(seed=1)
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"config": _config().to_dict(), "num_classes": NUM_CLASSES}, f)
    checkpoint = checkpoints.make_checkpoint(model)
    manager = tf.train.CheckpointManager(checkpoint, str(tmp_path / "checkpoints"), 3)
    manager.save(checkpoint_number=2)
    randomise_batchnorm(model, seed=2)  # the newer checkpoint holds other statistics
    model.embedder.head.fc.kernel.assign(model.embedder.head.fc.kernel * 2.0)
    manager.save(checkpoint_number=4)
    keras.backend.clear_session()  # a new process
    restored = checkpoints.restore_model(str(tmp_path))
    _assert_same_state(restored, model)
    np.testing.assert_array_equal(restored.embedder(_images()).numpy(),
                                  model.embedder(_images()).numpy())


def test_restore_model_errors_name_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model.keras and no config.json"):
        checkpoints.restore_model(str(tmp_path))
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"config": _config().to_dict(), "num_classes": NUM_CLASSES}, f)
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        checkpoints.restore_model(str(tmp_path))
    os.makedirs(tmp_path / "checkpoints")
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        checkpoints.restore_model(str(tmp_path))


def test_restore_in_the_same_process_without_clearing_keras_names(tmp_path):
    """A second model in one process has other optimizer names (``adam_3`` where the
    saved one had ``adam``): its restore still matches every variable."""
    model = _trained_model()
    path = checkpoints.make_checkpoint(model).save(str(tmp_path / "ckpt"))
    fresh = experiment.build_model(_config(), NUM_CLASSES)  # no clear_session
    assert fresh.metric_optimizer.name != model.metric_optimizer.name
    checkpoints.restore(checkpoints.make_checkpoint(fresh), path).assert_consumed()
    _assert_same_state(fresh, model)


def test_optimizer_keys_do_not_depend_on_the_process():
    model = _trained_model()
    keys = {name: set(getattr(checkpoints.make_checkpoint(model), name))
            for name in checkpoints.OPTIMIZERS}
    fresh = experiment.build_model(_config(), NUM_CLASSES)  # other optimizer names
    assert keys == {name: set(getattr(checkpoints.make_checkpoint(fresh), name))
                    for name in checkpoints.OPTIMIZERS}
    assert not any("adam" in key for group in keys.values() for key in group), keys
    assert "0.iteration" in keys["metric_optimizer"]
