"""The HDML keras.Model: gradient routing, statistics, NaN steps, saving, fitting."""

import json

import numpy as np
import pytest
import keras
import tensorflow as tf

from hdml_tf import losses as losses_lib
from hdml_tf import HDML, Embedder, EmbeddingHead, Generator
from tests.conftest import randomise_batchnorm

SIZE = 12
NUM_CLASSES = 6


def tiny_backbone(feature_dim=16, activation="relu"):
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, activation=activation)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(feature_dim)(x), name="tiny")


def make_batch(loss, per_group=4, seed=0, noise=0.2):
    """A learnable toy batch: each class is a colour, plus noise."""
    rng = np.random.default_rng(seed)
    anchors = rng.choice(NUM_CLASSES, per_group, replace=False).astype(np.int32)
    negatives = (anchors + 1 + rng.integers(0, NUM_CLASSES - 1, per_group)) % NUM_CLASSES
    label_groups = [anchors, anchors, negatives.astype(np.int32)][: 2 if loss == "npair" else 3]
    colours = np.linspace(0, 1, NUM_CLASSES * 3).reshape(NUM_CLASSES, 3)
    images = [
        (colours[l][:, None, None, :] + rng.normal(0, noise, (per_group, SIZE, SIZE, 3)))
        .astype(np.float32) for l in label_groups
    ]
    return tuple(images), tuple(label_groups)


def dataset(loss, per_group=4, seed=0):
    def gen():
        i = 0
        while True:
            yield make_batch(loss, per_group, seed + i)
            i += 1

    groups = 2 if loss == "npair" else 3
    spec = (tuple(tf.TensorSpec((per_group, SIZE, SIZE, 3)) for _ in range(groups)),
            tuple(tf.TensorSpec((per_group,), tf.int32) for _ in range(groups)))
    return tf.data.Dataset.from_generator(gen, output_signature=spec)


def make_model(loss="npair", hdml=True, lrs=(1e-3, 1e-2, 1e-3), backbone=None, **kwargs):
    kwargs.setdefault("window", 4)
    backbone = backbone or tiny_backbone()
    model = HDML(Embedder(backbone, embedding_dim=8), num_classes=NUM_CLASSES,
                 loss=loss, hdml=hdml, **kwargs)
    model.compile(metric_optimizer=keras.optimizers.Adam(lrs[0]),
                  generator_optimizer=keras.optimizers.Adam(lrs[1]),
                  classifier_optimizer=keras.optimizers.Adam(lrs[2]))
    return model


def snapshot(variables):
    return [np.array(v.numpy()) for v in variables]


def changed(before, variables):
    return [not np.array_equal(b, v.numpy()) for b, v in zip(before, variables)]


# ------------------------------------------------------------------- structure


def test_sub_networks_and_shared_head():
    model = make_model()
    model.build((None, SIZE, SIZE, 3))
    heads = [l for l in model._flatten_layers() if isinstance(l, EmbeddingHead)]
    assert len(heads) == 1 and heads[0] is model.embedder.head
    assert isinstance(model.generator, Generator)
    assert model.generator.feature_dim == 16
    assert model.classifier.units == NUM_CLASSES


def test_synthetic_rows_use_the_same_head(monkeypatch):
    """The head is called twice per forward (real rows, synthetic rows), both times as
    the one object model.embedder.head."""
    model = make_model()
    x, y = make_batch("npair")
    model.build_from_data(x)
    calls = []
    original = EmbeddingHead.call

    def spy(self, features, training=None):
        calls.append((self, int(features.shape[0])))
        return original(self, features, training=training)

    monkeypatch.setattr(EmbeddingHead, "call", spy)
    model._forward((x, y), training=True)
    assert [c[0] for c in calls] == [model.embedder.head] * 2
    assert [c[1] for c in calls] == [8, 4 + 16]  # 2P real rows; P + P^2 synthetic rows


def test_embedder_outputs_unit_vectors():
    model = make_model()
    x, _ = make_batch("npair")
    z = model.embedder(x[0]).numpy()
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(model.predict(x[0], verbose=0), z, rtol=1e-5)


def _assert_optimizers_own_their_variables(model):
    groups = [
        (model.metric_optimizer, model.embedder.trainable_variables),
        (model.generator_optimizer, model.generator.trainable_variables),
        (model.classifier_optimizer, model.classifier.trainable_variables),
    ]
    for optimizer, variables in groups:
        assert optimizer.built
        assert [id(v) for v in optimizer._trainable_variables] == [id(v) for v in variables]


def test_optimizers_own_disjoint_variables():
    model = make_model()
    model.build_from_data(make_batch("npair")[0])
    _assert_optimizers_own_their_variables(model)
    assert model.optimizer is None  # Keras itself builds and applies no optimizer
    assert model.image_shape == (None, SIZE, SIZE, 3)


def test_build_and_compile_in_either_order_build_the_optimizers():
    """Whichever of build and compile comes second builds the three optimizers."""
    built_first = HDML(Embedder(tiny_backbone(), embedding_dim=8), num_classes=NUM_CLASSES)
    assert built_first.image_shape is None
    built_first.build((None, SIZE, SIZE, 3))
    assert built_first.metric_optimizer is None
    built_first.compile()
    _assert_optimizers_own_their_variables(built_first)
    compiled_first = make_model()
    assert not compiled_first.metric_optimizer.built
    compiled_first.build((None, SIZE, SIZE, 3))
    _assert_optimizers_own_their_variables(compiled_first)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_builds_an_unbuilt_model_inside_keras_own_loop(jit_compile):
    """No explicit build: the first traced train_step builds the model and the
    optimizers (over their own variables, not Keras' model.optimizer over all)."""
    model = HDML(Embedder(tiny_backbone(), embedding_dim=8), num_classes=NUM_CLASSES,
                 window=4)
    model.compile(jit_compile=jit_compile)
    model.fit(dataset("npair"), steps_per_epoch=2, epochs=1, verbose=0)
    _assert_optimizers_own_their_variables(model)
    assert int(model.metric_optimizer.iterations.numpy()) == 2


# ------------------------------------------------------------- gradient routing


@pytest.mark.parametrize("loss", ["npair", "triplet"])
def test_each_objective_updates_only_its_variables(loss):
    """Only one optimizer has a non-zero learning rate at a time: after a step only its
    variables have moved. So J_gen reaches only G, J_cls only C, J_metric only F + H."""
    x, y = make_batch(loss)
    parts = ["embedder", "generator", "classifier"]
    optimizers = ["metric_optimizer", "generator_optimizer", "classifier_optimizer"]
    # A wide margin keeps every triplet active, so no objective is exactly zero. One
    # model (one traced step) for the three cases: the learning rates are variables,
    # set before each step.
    model = make_model(loss, lrs=(0.0, 0.0, 0.0), margin=100.0)
    model.build_from_data(x)
    for active in range(3):
        for i, name in enumerate(optimizers):
            getattr(model, name).learning_rate = 1e-2 if i == active else 0.0
        assert [float(getattr(model, name).learning_rate) for name in optimizers] == (
            pytest.approx([1e-2 if i == active else 0.0 for i in range(3)]))
        before = {p: snapshot(getattr(model, p).trainable_variables) for p in parts}
        model.train_on_batch(x, y)
        for i, part in enumerate(parts):
            moved = changed(before[part], getattr(model, part).trainable_variables)
            if i == active:
                assert any(moved), f"{part} did not move with its own optimizer"
            else:
                assert not any(moved), f"{part} moved under the {parts[active]} optimizer"


def test_j_syn_backpropagates_through_generator_into_backbone():
    """J_metric's synthetic term reaches F through G and H (gradients not stopped)."""
    model = make_model()
    x, y = make_batch("npair")
    model.build_from_data(x)
    with tf.GradientTape() as tape:
        shares, _ = model._forward((x, y), training=True)
    grads = tape.gradient(shares["j_syn"], model.embedder.backbone.trainable_variables)
    assert all(g is not None for g in grads)
    assert sum(float(tf.reduce_sum(tf.abs(g))) for g in grads) > 0


def test_baseline_trains_only_the_embedder():
    model = make_model(hdml=False)
    x, y = make_batch("npair")
    model.build_from_data(x)
    before = snapshot(model.generator.trainable_variables + model.classifier.trainable_variables)
    logs = model.train_on_batch(x, y, return_dict=True)
    assert set(logs) == {"j_m", "weight_decay", "nonfinite_steps"}
    assert not any(changed(before, model.generator.trainable_variables
                           + model.classifier.trainable_variables))


def test_j_m_equals_the_loss_function():
    """The logged J_m is npair_embedding_loss on the raw embeddings plus the weight decay."""
    model = make_model(hdml=False, lrs=(0.0, 0.0, 0.0), weight_decay=1e-3, l2_reg=0.01)
    x, y = make_batch("npair")
    logs = model.test_on_batch(x, y, return_dict=True)
    z_a = model.embedder.embed_raw(x[0], training=False)
    z_p = model.embedder.embed_raw(x[1], training=False)
    kernels = [v for v in model.embedder.trainable_variables if v.name == "kernel"]
    wd = 1e-3 * sum(float(np.sum(np.square(v))) / 2 for v in kernels)
    expected = float(losses_lib.npair_embedding_loss(y[0], z_a, z_p, 0.01)) + wd
    np.testing.assert_allclose(logs["j_m"], expected, rtol=1e-5)
    np.testing.assert_allclose(logs["weight_decay"], wd, rtol=1e-5)


# -------------------------------------------------------- official statistics


def test_lambda_and_w_near_one_in_first_window_then_window_mean():
    """J_avg and J_gen_avg stay at 1e6 (λ, w ~ 1) until W values are recorded, then
    equal the mean of the W recorded values (w * J_m, the official default)."""
    window = 3
    model = make_model(window=window)
    recorded_jm, recorded_gen = [], []
    for step in range(window):
        x, y = make_batch("npair", seed=step)
        model.reset_metrics()
        logs = model.train_on_batch(x, y, return_dict=True)
        np.testing.assert_allclose(logs["lambda"], np.exp(-90 / 1e6), rtol=1e-6)
        np.testing.assert_allclose(logs["w"], np.exp(-1e4 / 1e6), rtol=1e-6)
        recorded_jm.append(logs["w"] * logs["j_m"])
        recorded_gen.append(logs["j_gen"])
        stats = model.statistics()
        if step < window - 1:
            assert stats["j_avg"] == 1e6 and stats["j_gen_avg"] == 1e6
    stats = model.statistics()
    np.testing.assert_allclose(stats["j_avg"], np.mean(recorded_jm), rtol=1e-5)
    np.testing.assert_allclose(stats["j_gen_avg"], np.mean(recorded_gen), rtol=1e-5)
    np.testing.assert_allclose(stats["lambda"], np.exp(-90 / np.mean(recorded_jm)), rtol=1e-4)


@pytest.fixture(scope="module")
def one_step_of_window_one():
    """One step of a window-1 model that records the raw J_m and has α, β given: the
    two tests below share it (neither setting acts on what the other test checks).
    β = 1e5 puts w = exp(-β / 1e6) at 0.90, so w J_m is far from J_m."""
    model = make_model(window=1, record_weighted_jm=False, alpha=7.0, beta=1e5)
    logs = model.train_on_batch(*make_batch("npair"), return_dict=True)
    return logs, model.statistics()


@pytest.mark.xdist_group("test_models_window_one")  # one worker builds the fixture
def test_raw_jm_recording_option(one_step_of_window_one):
    logs, stats = one_step_of_window_one
    assert logs["w"] < 0.95  # the weighted value would differ by 5 % or more
    np.testing.assert_allclose(stats["j_avg"], logs["j_m"], rtol=1e-5)


def test_fitted_schedule_starts_where_asked_then_follows_the_formula():
    """lambda_start / w_start: α and β are set at the first window's end so that λ and
    w equal the starts there; from then on λ = exp(-α / J_avg) with that α."""
    window = 3
    model = make_model(window=window, lambda_start=0.8, w_start=0.6)
    recorded_jm, recorded_gen = [], []
    for step in range(2 * window):
        x, y = make_batch("npair", seed=step)
        logs = model.train_on_batch(x, y, return_dict=True)
        if step < window:
            recorded_jm.append(logs["w"] * logs["j_m"])
            recorded_gen.append(logs["j_gen"])
        if step == window - 1:
            first = model.statistics()
            np.testing.assert_allclose(first["lambda"], 0.8, rtol=1e-5)
            np.testing.assert_allclose(first["w"], 0.6, rtol=1e-5)
            np.testing.assert_allclose(first["alpha"], -np.mean(recorded_jm) * np.log(0.8),
                                       rtol=1e-5)
            np.testing.assert_allclose(first["beta"], -np.mean(recorded_gen) * np.log(0.6),
                                       rtol=1e-5)
    stats = model.statistics()
    assert stats["j_avg_windows"] == 2 and stats["j_avg"] != first["j_avg"]
    assert (stats["alpha"], stats["beta"]) == (first["alpha"], first["beta"])  # fitted once
    np.testing.assert_allclose(stats["lambda"], np.exp(-first["alpha"] / stats["j_avg"]),
                               rtol=1e-5)
    np.testing.assert_allclose(stats["lambda"],
                               0.8 ** (first["j_avg"] / stats["j_avg"]), rtol=1e-4)


@pytest.mark.xdist_group("test_models_window_one")
def test_schedule_constants_as_given_without_starts(one_step_of_window_one):
    _, stats = one_step_of_window_one
    assert stats["j_avg_windows"] == 1  # a window ended: the first point a fit happens
    assert (stats["alpha"], stats["beta"]) == (7.0, 1e5)
    with pytest.raises(ValueError, match="lambda_start=1.0: must be in"):
        make_model(lambda_start=1.0)


@pytest.fixture(scope="module")
def head_statistics_reference():
    """What every mode is compared with, trained once for the three modes: a "real"
    model's initial and final weights over 3 steps, and the head's statistics of a
    baseline (same embedder) after its first step."""
    x, y = make_batch("npair")
    reference = make_model(window=2, head_bn_updates="real")
    baseline = make_model(window=2, hdml=False)
    for m in (reference, baseline):
        m.build_from_data((x, y))
    initial = reference.get_weights()
    baseline.embedder.set_weights(reference.embedder.get_weights())
    for step in range(3):
        batch = make_batch("npair", seed=step)
        reference.train_on_batch(*batch)
        if step == 0:
            baseline.train_on_batch(*batch)
    return (initial, [v.numpy() for v in reference.trainable_weights],
            [v.numpy() for v in baseline.embedder.head.non_trainable_weights])


@pytest.mark.xdist_group("test_models_head_statistics")  # one worker builds the fixture
@pytest.mark.parametrize("mode", ["real", "sequential", "prestep"])
def test_head_statistics_modes_train_the_same_weights(mode, head_statistics_reference):
    """The moving statistics are never read in training, so every head_bn_updates mode
    trains bit-identical weights. "real" moves the head's moving statistics exactly as
    the baseline's single (real) pass does; the other two let the synthetic pass move
    them as well."""
    initial, reference_weights, theirs = head_statistics_reference
    x, y = make_batch("npair")
    model = make_model(window=2, head_bn_updates=mode)
    model.build_from_data((x, y))
    model.set_weights(initial)
    for step in range(3):
        model.train_on_batch(*make_batch("npair", seed=step))
        if step == 0:
            ours = [v.numpy() for v in model.embedder.head.non_trainable_weights]
    assert len(reference_weights) == len(model.trainable_weights)
    for a, b in zip(reference_weights, model.trainable_weights):
        np.testing.assert_array_equal(a, b.numpy())
    same = all(np.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(ours, theirs))
    assert same == (mode == "real")


def test_head_statistics_are_reestimated_from_real_features():
    """`Embedder.feature_moments` over a dataset, then `set_moving_statistics`: the
    head then normalises with the mean and population variance of F(x)."""
    model = make_model(window=2, head_bn_updates="sequential")
    model.run_eagerly = True  # the steps only move the weights: no need to trace them
    model.fit(dataset("npair"), steps_per_epoch=3, epochs=1, verbose=0)
    images = np.concatenate([make_batch("npair", seed=s)[0][0] for s in range(5)])
    batches = tf.data.Dataset.from_tensor_slices(
        (images, np.zeros(len(images), np.int32))).batch(7)
    mean, variance, count = model.embedder.feature_moments(batches)
    y = model.embedder.features(images).numpy().astype(np.float64)
    assert count == len(images)
    np.testing.assert_allclose(mean, y.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(variance, y.var(0), rtol=1e-4, atol=1e-6)
    model.embedder.head.set_moving_statistics(mean, variance)
    bn = model.embedder.head.bn
    np.testing.assert_allclose(bn.moving_variance.numpy(), variance, rtol=1e-6)
    normalised = bn(tf.constant(y, tf.float32), training=False).numpy()
    np.testing.assert_allclose(normalised.mean(0), bn.beta.numpy(), atol=1e-4)


# ------------------------------------------------------------------ NaN steps


@pytest.mark.parametrize("loss", ["npair", "triplet"])
def test_nonfinite_step_is_skipped_and_counted(loss):
    # A linear backbone: a fused Conv+ReLU kernel may map NaN to 0 inside tf.function.
    model = make_model(loss, window=2, backbone=tiny_backbone(activation=None))
    x, y = make_batch(loss)
    model.train_on_batch(x, y)  # one good step: optimizer state exists
    # Every weight and optimizer slot; the SkipNonFinite wrappers count the step.
    everything = model.trainable_variables + [
        v for opt in model.skipping_optimizers().values() for v in opt.inner_optimizer.variables]
    before = snapshot(everything)
    window = model.j_avg_window
    stats_before = snapshot([window.total, window.count, window.mean])
    bad = tuple(np.full_like(x[0], np.nan) if i == 0 else im for i, im in enumerate(x))
    logs = model.train_on_batch(bad, y, return_dict=True)
    assert logs["nonfinite_steps"] == 1
    assert not any(changed(before, everything))
    assert not any(changed(stats_before, [window.total, window.count, window.mean]))
    assert model.statistics()["metric_skipped_steps"] == 1
    logs = model.train_on_batch(x, y, return_dict=True)  # training goes on
    assert logs["nonfinite_steps"] == 1 and np.isfinite(logs["j_metric"])


# ---------------------------------------------------------------------- fitting


@pytest.mark.parametrize("loss", ["npair", "triplet"])
@pytest.mark.parametrize("hdml", [True, False])
def test_fit_decreases_metric_loss(loss, hdml):
    """beta = 1 keeps w = exp(-1 / J_gen_avg) near 1: at these toy loss scales the
    default beta drives w to ~0 after the first window, and J_metric is then mostly
    J_syn, whose minimum need not lower J_m within 60 steps."""
    model = make_model(loss, hdml=hdml, lrs=(3e-3, 1e-2, 1e-3), beta=1.0)
    history = model.fit(dataset(loss), steps_per_epoch=15, epochs=4, verbose=0)
    expected = {"j_m", "weight_decay", "nonfinite_steps"}
    if hdml:
        expected |= {"j_syn", "j_metric", "j_recon", "j_soft", "j_gen", "j_cls",
                     "lambda", "w", "hardened_fraction", "j_avg", "j_gen_avg",
                     "metric_skipped_steps", "generator_skipped_steps",
                     "classifier_skipped_steps", "syn_fallback_steps"}
    assert set(history.history) == expected
    j_m = history.history["j_m"]
    assert j_m[-1] < j_m[0], j_m
    if hdml:
        assert all(np.isfinite(history.history["j_gen"]))
        assert history.history["j_recon"][-1] < history.history["j_recon"][0]


def test_evaluate_reports_the_same_terms():
    model = make_model()
    result = model.evaluate(dataset("npair"), steps=2, verbose=0, return_dict=True)
    assert {"j_m", "j_syn", "j_gen", "j_cls", "lambda", "w"} <= set(result)


def test_bad_batch_layout_is_explained():
    model = make_model("npair")
    x, y = make_batch("triplet")
    with pytest.raises(ValueError, match="anchors, positives"):
        model.train_on_batch(x, y)


def test_hdml_params_are_the_models_arguments_and_config():
    """One source: HDMLParams' fields are HDML's keyword arguments and get_config's
    keys, and the experiment config's model section holds the same defaults."""
    import dataclasses

    from hdml_tf.config import ModelConfig
    from hdml_tf.params import HDMLParams

    params = HDMLParams(loss="triplet", alpha=7.0, beta=5e3, weight_decay=1e-3,
                        weight_decay_scope="authors", window=3, j_avg_init=2.0)
    model = HDML(Embedder(tiny_backbone()), NUM_CLASSES, **dataclasses.asdict(params))
    assert model.params == params
    config = model.get_config()
    assert {k: config[k] for k in HDMLParams.names()} == dataclasses.asdict(params)
    assert HDML.from_config(config).params == params
    default = HDML(Embedder(tiny_backbone()), NUM_CLASSES)
    assert default.params == HDMLParams() == HDMLParams(**ModelConfig().hdml_kwargs())
    assert default.params.weight_decay == 5e-3  # the authors' Regular_factor, as ModelConfig


def test_constructor_validation():
    with pytest.raises(ValueError, match="loss='lifted'"):
        HDML(Embedder(tiny_backbone()), num_classes=3, loss="lifted")
    with pytest.raises(ValueError, match="window"):
        HDML(Embedder(tiny_backbone()), num_classes=3, window=0)
    with pytest.raises(ValueError, match="optimizer"):
        make_model().compile(optimizer="adam")


# ---------------------------------------------------------------------- saving


def _all_variables(model):
    return (model.weights + model.metric_optimizer.variables
            + model.generator_optimizer.variables + model.classifier_optimizer.variables)


def _all_state(model):
    return snapshot(_all_variables(model))


def test_keras_save_load_restores_everything(tmp_path):
    model = make_model(window=2)
    model.fit(dataset("npair"), steps_per_epoch=5, epochs=1, verbose=0)
    assert model.statistics()["j_avg"] != 1e6  # the statistics have moved
    path = tmp_path / "hdml.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    for a, b in zip(_all_state(model), _all_state(loaded)):
        np.testing.assert_array_equal(a, b)
    assert loaded.statistics() == model.statistics()
    as_json = lambda c: json.loads(json.dumps(c))  # tuples come back as lists
    assert as_json(loaded.get_config()) == as_json(model.get_config())
    x, y = make_batch("npair", seed=99)
    np.testing.assert_allclose(loaded.embedder(x[0]), model.embedder(x[0]), rtol=1e-6)
    # Training continues identically from the loaded copy.
    logs_a = model.train_on_batch(x, y, return_dict=True)
    logs_b = loaded.train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs_a["j_metric"], logs_b["j_metric"], rtol=1e-5)
    for a, b in zip(_all_state(model), _all_state(loaded)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def small_cnn_backbone():
    """The demo's backbone, narrowed: BatchNorm statistics inside a nested Keras model."""
    from hdml_tf.backbones import build_backbone

    return build_backbone("small_cnn", input_shape=(SIZE, SIZE, 3), widths=(4, 8, 8))


def test_tf_checkpoint_restores_everything(tmp_path):
    """`make_checkpoint`, what training saves and resumes from, restores every variable
    exactly, the nested backbone's BatchNorm statistics included (randomised, then
    randomised again before the restore, so a statistic the checkpoint missed is far
    from its saved value)."""
    from hdml_tf.checkpoints import make_checkpoint

    model = make_model(window=2, backbone=small_cnn_backbone())
    model.run_eagerly = True  # the steps only move the state: no need to trace them
    model.fit(dataset("npair"), steps_per_epoch=3, epochs=1, verbose=0)
    statistics = randomise_batchnorm(model, seed=1)
    assert any("small_cnn" in v.path for v in statistics)  # the nested backbone's
    path = make_checkpoint(model).save(str(tmp_path / "ckpt"))
    variables = _all_variables(model)
    saved = snapshot(variables)
    model.fit(dataset("npair", seed=50), steps_per_epoch=3, epochs=1, verbose=0)
    randomise_batchnorm(model, seed=2)
    moved = {v.path for v, a in zip(variables, saved) if not np.array_equal(v.numpy(), a)}
    assert {v.path for v in statistics} <= moved
    make_checkpoint(model).restore(path).assert_consumed()
    for variable, value in zip(variables, saved):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)
