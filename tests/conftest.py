"""Test configuration: CPU determinism, two logical CPU devices, quiet TensorFlow.

Two logical CPU devices are configured before TensorFlow initialises so that
MirroredStrategy tests can split batches across replicas on a CPU-only machine.
Under pytest-xdist the controlling process runs no test, so it does not import
TensorFlow at all (its start-up messages would otherwise print after the summary).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("MPLBACKEND", "Agg")
# One OpenMP/OpenBLAS thread per process (inherited by the subprocesses tests start).
# CI runs two xdist workers on two cores, so a second thread only competes with the
# other worker; scikit-learn's OpenMP t-SNE and k-means then spin-wait on descheduled
# threads (t-SNE of 300 points: 37 s of CPU instead of 0.8 s). TensorFlow's own
# thread pools do not read it; results do not depend on it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def _is_xdist_controller(config):
    if hasattr(config, "workerinput"):  # an xdist worker
        return False
    try:
        workers = config.getoption("numprocesses")
    except ValueError:  # xdist not installed or disabled
        return False
    return bool(workers)


def _configure_tensorflow():
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
        )
    except RuntimeError:  # already initialised; tests needing 2 devices then fail loudly
        pass
    tf.config.experimental.enable_tensor_float_32_execution(False)


def pytest_configure(config):
    config.addinivalue_line("markers", "two_devices: needs 2 logical CPU devices")
    if not _is_xdist_controller(config):
        _configure_tensorflow()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``manual`` run only when asked for (``pytest -m manual``): they are
    deselected otherwise, not skipped, so a CI run never counts them."""
    if config.option.markexpr:
        return
    manual = [item for item in items if item.get_closest_marker("manual")]
    if manual:
        config.hook.pytest_deselected(items=manual)
        items[:] = [item for item in items if not item.get_closest_marker("manual")]


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same seeds."""
    import keras

    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    yield


@pytest.fixture(scope="session")
def two_replicas():
    """One MirroredStrategy over the 2 logical CPUs for the whole session.

    Strategies created one after another in a process number their collective
    instances from the same start, so a second strategy's all-gather can meet the
    first one's all-reduce under the same key ("Collective instance N expected type
    ..."); sharing one strategy avoids that.
    """
    import tensorflow as tf

    devices = tf.config.list_logical_devices("CPU")
    assert len(devices) >= 2, "tests/conftest.py configures 2 logical CPUs"
    return tf.distribute.MirroredStrategy([d.name for d in devices[:2]])


def randomise_batchnorm(model, seed=0):
    """Random moving statistics in every BatchNormalization layer of ``model``.

    Freshly built layers hold mean 0 and variance 1, which a save/restore that loses
    them reproduces by accident; random values make a lost statistic visible. Returns
    the variables assigned (at least one: a fixture without BatchNorm is a mistake).
    """
    import keras

    rng = np.random.default_rng(seed)
    assigned = []
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            for variable, (low, high) in ((layer.moving_mean, (-3.0, 3.0)),
                                          (layer.moving_variance, (0.5, 4.0))):
                variable.assign(rng.uniform(low, high, variable.shape)
                                .astype(variable.dtype))
                assigned.append(variable)
    assert assigned, f"{model.name} has no BatchNormalization layer"
    return assigned
