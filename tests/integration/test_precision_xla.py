"""hdml-tf train with train.precision and train.xla; a float16 NaN step is skipped.

The runs go through ``hdml_tf.training.train`` on the bundled ``digits`` data with the
``small_cnn`` backbone, a few steps each; they check the pieces the switches change:
a loss-scaled metric optimizer, float16 compute in the embedder and float32 generator,
classifier and losses (mixed precision), the jit-compiled
step (XLA), finite losses, checkpoints, and float32 embeddings from ``model.keras`` and
from the exported SavedModel.
"""

import csv
import glob
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from hdml_tf import config as config_lib
from hdml_tf import training
from hdml_tf.data.preprocess import normalize
from hdml_tf import HDML, Embedder

# The small digits config of tests/integration/test_training.py, 4 steps.
DIGITS = {
    "name": "digits_precision",
    "data": {"name": "digits", "resize": 12, "crop": 10, "batch_size": 10, "cache": True,
             "eval_batch_size": 300},
    "model": {"backbone": "small_cnn", "embedding_dim": 16, "window": 2, "alpha": 1.0,
              "beta": 1000.0, "weight_decay": 0.0005},
    "optim": {"lr_metric": 0.001, "lr_gen": 0.001, "lr_cls": 0.001},
    "train": {"steps": 4, "steps_per_epoch": 2, "export": False, "verbose": 0},
}
LOSS_TERMS = ("j_m", "j_syn", "j_metric", "j_recon", "j_soft", "j_gen", "j_cls")


@pytest.fixture(autouse=True)
def _float32_policy_after():
    yield
    keras.config.set_dtype_policy("float32")


def _config(tmp_path, **train):
    payload = json.loads(json.dumps(DIGITS))
    payload["train"].update(train)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(payload))
    return config_lib.load_config(str(path))


def _images(count=3, size=10):
    return np.random.default_rng(0).uniform(-1, 1, (count, size, size, 3)).astype(np.float32)


def _check_run(workdir, results, model, atol=1e-6):
    logs = results["final_logs"]
    for term in LOSS_TERMS:
        assert np.isfinite(logs[term]), (term, logs)
    assert logs["nonfinite_steps"] == 0
    assert tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints")).endswith("ckpt-4")
    assert sorted(os.path.basename(p) for p in glob.glob(
        os.path.join(workdir, "checkpoints", "ckpt-*.index"))) == ["ckpt-2.index",
                                                                  "ckpt-4.index"]
    # The saved HDML model embeds in float32, as the model in memory does.
    x = _images()
    saved = keras.models.load_model(os.path.join(workdir, "model.keras"))
    ours, theirs = model.embedder(x), saved.embedder(x)
    assert ours.dtype == tf.float32 and theirs.dtype == tf.float32
    np.testing.assert_allclose(theirs.numpy(), ours.numpy(), atol=atol)
    np.testing.assert_allclose(np.linalg.norm(ours.numpy(), axis=1), 1.0, rtol=1e-3)


@pytest.mark.manual
def test_mixed_precision_training_checkpoints_and_export(tmp_path):
    workdir = str(tmp_path / "run")
    config = _config(tmp_path, precision="mixed_float16", export=True,
                     export_dir=str(tmp_path / "exports"), log_every=1)
    results, model = training.train(config, workdir, log=lambda *a: None,
                                    return_model=True)

    # Only the embedder computes in float16, so only the metric optimizer scales its
    # loss; the generator and classifier (J_soft at scale 1e4 would overflow float16
    # gradients) compute in float32 with plain Adam. The policy does not leak out.
    inner = lambda opt: opt.inner_optimizer  # noqa: E731 (inside SkipNonFinite)
    assert isinstance(inner(model.metric_optimizer), keras.optimizers.LossScaleOptimizer)
    for opt in (model.generator_optimizer, model.classifier_optimizer):
        assert not isinstance(inner(opt), keras.optimizers.LossScaleOptimizer), type(opt)
        assert int(inner(opt).iterations.numpy()) == config.train.steps  # no step skipped
    assert keras.config.dtype_policy().name == "float32"
    assert model.embedder.backbone.dtype_policy.compute_dtype == "float16"
    # The embedding head computes in float32 too: its output is what the losses, the
    # synthesis and retrieval compare (bfloat16 embeddings cost NMI/F1).
    for layer in (model.embedder.head, model.embedder.head.bn, model.embedder.head.fc,
                  model.generator, model.classifier):
        assert layer.dtype_policy.compute_dtype == "float32", layer.name
    assert {v.dtype for v in model.trainable_variables} == {"float32"}
    # Dynamic loss scaling: every metric step either applied (iterations + 1) or
    # overflowed in float16, was skipped by the LossScaleOptimizer and halved its scale;
    # statistics() counts those skips.
    opt = model.metric_optimizer.inner_optimizer
    skipped = np.log2(opt.initial_scale / float(opt.dynamic_scale.numpy()))
    assert int(opt.iterations.numpy()) + skipped == config.train.steps
    assert int(model.metric_optimizer.iterations.numpy()) == config.train.steps  # the step
    assert model.statistics()["metric_loss_scale_skips"] == skipped
    # schedule_log.csv says when: cumulative skips after every step (log_every=1).
    with open(os.path.join(workdir, "schedule_log.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, config.train.steps + 1))
    per_row = [int(r["loss_scale_skips"]) for r in rows]
    print("loss-scale skips after each step:", per_row)
    assert per_row[-1] == skipped
    assert all(b - a in (0, 1) for a, b in zip([0] + per_row, per_row))
    assert {r["skipped_steps"] for r in rows} == {"0"}
    x = tf.constant(_images())
    assert model.embedder.embed_raw(x, training=False).dtype == tf.float32
    # model.keras reloads with the mixed policy: the same float16 computation.
    _check_run(workdir, results, model)

    # The exported SavedModel serves float32 embeddings close to the Keras embedder.
    versions = glob.glob(str(tmp_path / "exports" / "digits_precision" / "*"))
    assert [os.path.basename(v) for v in versions] == ["1"], versions
    loaded = tf.saved_model.load(versions[0])
    rgb = np.random.default_rng(1).uniform(0, 255, (3, 10, 10, 3)).astype(np.float32)
    embedding = loaded.signatures["serving_default"](images=tf.constant(rgb))["embedding"]
    assert embedding.dtype == tf.float32 and embedding.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(embedding.numpy(), axis=1), 1.0, rtol=1e-5)
    # The export normalises inside ("tf" mode for small_cnn) and computes in float32.
    keras_embedding = model.embedder(normalize(rgb, model.embedder.preprocessing))
    np.testing.assert_allclose(embedding.numpy(), keras_embedding.numpy(), atol=5e-3)


class _RecordingTF:
    """``tensorflow`` as hdml_tf.training sees it, recording every tf.function it
    makes and, for jit-compiled ones, the input signatures they were traced with."""

    def __init__(self):
        self.functions, self.jit_inputs = [], []

    def __getattr__(self, name):
        return getattr(tf, name)

    def function(self, func=None, **kwargs):
        if func is None:  # @tf.function(...) with arguments
            return lambda f: self.function(f, **kwargs)
        if kwargs.get("jit_compile"):
            inputs, inner = self.jit_inputs, func

            @tf.autograph.experimental.do_not_convert
            def func(*args):
                inputs.append(tf.nest.map_structure(
                    lambda t: tf.TensorSpec(t.shape, t.dtype), args))
                return inner(*args)

        function = tf.function(func, **kwargs)
        self.functions.append((function, kwargs))
        return function


@pytest.mark.manual
def test_xla_training_runs_and_checkpoints(tmp_path, monkeypatch):
    """train.xla=true: the step that ran is one jit-compiled function (its graph
    carries _XlaMustCompile, which makes TensorFlow compile it with XLA or fail)."""
    recorder = _RecordingTF()
    monkeypatch.setattr(training.loop, "tf", recorder)
    workdir = str(tmp_path / "run")
    results, model = training.train(_config(tmp_path, xla=True), workdir,
                                    log=lambda *a: None, return_model=True)
    assert int(model.metric_optimizer.iterations.numpy()) == 4
    compiled = [f for f, kwargs in recorder.functions if kwargs.get("jit_compile")]
    assert len(compiled) == 1, recorder.functions
    step = compiled[0]
    assert step.experimental_get_tracing_count() == len(recorder.jit_inputs) == 1
    concrete = step.get_concrete_function(*recorder.jit_inputs[0])
    assert step.experimental_get_tracing_count() == 1  # the function that ran
    assert concrete.function_def.attr["_XlaMustCompile"].b
    monkeypatch.undo()
    _check_run(workdir, results, model)


@pytest.mark.manual
def test_without_xla_no_step_is_compiled(tmp_path, monkeypatch):
    """The premise of the test above: without train.xla nothing asks for XLA."""
    recorder = _RecordingTF()
    monkeypatch.setattr(training.loop, "tf", recorder)
    training.train(_config(tmp_path, steps=2), str(tmp_path / "run"), log=lambda *a: None)
    assert recorder.functions  # the recorder sees train's tf.functions
    assert not [f for f, kwargs in recorder.functions if kwargs.get("jit_compile")]


def _nan_gradient(armed):
    """A layer that passes its input through unchanged and, while ``armed`` (a boolean
    tf.Variable) holds True, sends NaN back as its input's gradient."""

    @tf.custom_gradient
    def identity(x):
        def grad(upstream):
            return tf.where(armed, tf.fill(tf.shape(upstream), np.nan), upstream)

        return tf.identity(x), grad

    return keras.layers.Lambda(identity, name="nan_gradient")


def _tiny_hdml(policy, size=12, classes=6, armed=None):
    """A small HDML N-pair model built under ``policy``, compiled, one good step done.

    With ``armed``, a `_nan_gradient` layer follows the convolution.
    """
    keras.config.set_dtype_policy(policy)
    try:
        inputs = keras.Input((size, size, 3))
        h = keras.layers.Conv2D(8, 3)(inputs)
        if armed is not None:
            h = _nan_gradient(armed)(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
        features = keras.layers.Dense(16, dtype="float32")(h)
        backbone = keras.Model(inputs, features, name="tiny")
        model = HDML(Embedder(backbone, embedding_dim=8), num_classes=classes,
                     loss="npair", hdml=True, window=2)
    finally:
        keras.config.set_dtype_policy("float32")
    optimizers = [keras.optimizers.Adam(lr) for lr in (1e-3, 1e-2, 1e-3)]
    if policy == "mixed_float16":
        optimizers = [keras.optimizers.LossScaleOptimizer(opt) for opt in optimizers]
    model.compile(*optimizers)
    rng = np.random.default_rng(0)
    labels = np.arange(4, dtype=np.int32)
    x = tuple(rng.normal(0, 1, (4, size, size, 3)).astype(np.float32) for _ in range(2))
    y = (labels, labels)
    model.train_on_batch(x, y)  # a good step first: optimizer state exists
    return model, x, y


def _snapshot(variables):
    return [np.array(v.numpy(), copy=True) for v in variables]


def _changed(variables, before):
    return [v.path for v, b in zip(variables, before)
            if not np.array_equal(v.numpy(), b, equal_nan=True)]


@pytest.mark.manual
def test_mixed_precision_step_skips_a_nan_batch():
    """A float16 HDML step on a NaN batch changes no weight, no optimizer state (loss
    scales included) and no running statistic, and is counted (tests/test_models.py):
    only the SkipNonFinite wrappers' step and skip counters move."""
    model, x, y = _tiny_hdml("mixed_float16")
    assert model.generator.dtype_policy.compute_dtype == "float16"
    windows = (model.j_avg_window, model.j_gen_window)
    tracked = (model.trainable_variables
               + [v for opt in model.skipping_optimizers().values()
                  for v in opt.inner_optimizer.variables]
               + [v for w in windows for v in (w.total, w.count, w.mean)])
    before = _snapshot(tracked)
    bad = (np.full_like(x[0], np.nan), x[1])
    logs = model.train_on_batch(bad, y, return_dict=True)
    assert logs["nonfinite_steps"] == 1
    assert _changed(tracked, before) == []
    assert int(model.metric_optimizer.iterations.numpy()) == 2  # after one good step
    logs = model.train_on_batch(x, y, return_dict=True)  # training goes on
    assert logs["nonfinite_steps"] == 1 and np.isfinite(logs["j_metric"])


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_nan_batch_leaves_batchnorm_statistics_and_inference_intact(policy):
    """The forward pass of a skipped step has already moved the head's and the
    generator's BatchNorm statistics; they must be put back, or one NaN batch makes
    every later inference embedding NaN (fixed in fb2f2ec)."""
    model, x, y = _tiny_hdml(policy)
    moving = (model.embedder.non_trainable_variables
              + model.generator.non_trainable_variables)
    assert moving, "the head and the generator have BatchNorm statistics"
    before = _snapshot(moving)
    model.train_on_batch((np.full_like(x[0], np.nan), x[1]), y)
    assert _changed(moving, before) == []
    assert np.isfinite(model.embedder(x[1]).numpy()).all()


@pytest.mark.manual
def test_mixed_precision_model_reloads_with_its_policy(tmp_path):
    """Sub-layers created in __init__ follow the parent's dtype policy, so model.keras
    of a mixed-precision run reloads computing in float16 (fixed in fb2f2ec)."""
    model, x, y = _tiny_hdml("mixed_float16")
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    conv = (model.embedder.backbone.layers[1], loaded.embedder.backbone.layers[1])
    for ours, theirs in (conv, (model.generator.fc1, loaded.generator.fc1),
                         (model.classifier, loaded.classifier)):
        assert theirs.dtype_policy.name == ours.dtype_policy.name == "mixed_float16"
    # The embedding head computes in float32 under any policy, reloaded too.
    assert loaded.embedder.dtype_policy.name == "mixed_float16"
    for head in (model.embedder.head, loaded.embedder.head):
        assert head.fc.dtype_policy.name == head.bn.dtype_policy.name == "float32"
    np.testing.assert_array_equal(loaded.embedder(x[1]).numpy(), model.embedder(x[1]).numpy())


def test_nonfinite_metric_gradient_with_finite_losses_is_skipped():
    """Finite losses do not make a step safe: a NaN gradient (oneDNN's fused Conv+ReLU
    gives one on a NaN input) must skip the metric step, or the kernel becomes NaN,
    uncounted, and every later step is NaN (fixed in fb2f2ec). The NaN is injected
    here by a layer whose backward pass returns NaN."""
    armed = tf.Variable(False)
    model, x, y = _tiny_hdml("float32", armed=armed)
    armed.assign(True)
    terms = model.loss_terms((x, y))
    assert all(np.isfinite(v) for v in terms.values()), terms  # the premise
    window = model.j_avg_window
    metric_side = (model.embedder.trainable_variables
                   + model.metric_optimizer.inner_optimizer.variables
                   + [window.total, window.count, window.mean])
    before = _snapshot(metric_side)
    logs = model.train_on_batch(x, y, return_dict=True)
    assert logs["metric_skipped_steps"] == 1 and logs["nonfinite_steps"] == 1
    assert logs["generator_skipped_steps"] == logs["classifier_skipped_steps"] == 0
    assert _changed(metric_side, before) == []
    armed.assign(False)  # training goes on
    model.train_on_batch(x, y)
    assert _changed(model.embedder.trainable_variables, before) != []
    assert all(np.isfinite(v.numpy()).all() for v in model.trainable_variables)
