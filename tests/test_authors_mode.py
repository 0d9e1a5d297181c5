"""The behaviours of the `authors` mode one by one (docs/method.md, rows 3, 4, 7, 9-12)
and the paper presets' provenance; the parity with their graph itself is
tests/test_authors_parity.py."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from hdml_tf import config as config_lib
from hdml_tf import experiment
from hdml_tf.configs._common import Source
from hdml_tf.data import preprocess
from hdml_tf.evaluation.callbacks import authors_schedule
from hdml_tf import HDML, Embedder
from hdml_tf.schedules import GlobalStepDecay
from tests.test_models import NUM_CLASSES, make_batch, tiny_backbone

# The presets of the paper's datasets (the others, Fashion-MNIST and glyphs, are ours).
PAPER_PRESETS = [n for n in config_lib.available_presets()
                 if config_lib.get_preset(n).data.name in config_lib.AUTHORS_EVAL_EVERY]


def model_with(loss="npair", lr=1e-3, **kwargs):
    model = HDML(Embedder(tiny_backbone(activation=None), embedding_dim=8),
                 num_classes=NUM_CLASSES, loss=loss, window=4, **kwargs)
    model.compile(keras.optimizers.Adam(lr), keras.optimizers.Adam(1e-2),
                  keras.optimizers.Adam(1e-3))
    return model


# ---------------------------------------------------------------- the model


def test_the_extra_class_is_one_more_output_never_a_target():
    model = model_with(classifier_extra_class=True)
    x, y = make_batch("npair")
    model.train_on_batch(x, y)
    assert model.classifier.units == NUM_CLASSES + 1
    assert model_with().classifier.units == NUM_CLASSES
    assert model.get_config()["classifier_extra_class"] is True


def test_prestep_head_bn_updates_both_start_from_the_pre_step_value():
    """Keras moves the head's statistics twice, the second from the first's result;
    "prestep" re-bases the second on the pre-step value, which adds exactly
    (1 - m)(after_real - pre) = (1 - m)^2 (b_real - pre), b_real the real features'
    batch statistics (biased variance), m = 0.99."""
    x, y = make_batch("npair")
    models = {mode: model_with(head_bn_updates=mode) for mode in ("sequential", "prestep")}
    models["sequential"].build((None,) + x[0].shape[1:])
    models["prestep"].build((None,) + x[0].shape[1:])
    models["prestep"].set_weights(models["sequential"].get_weights())
    bn = models["prestep"].embedder.head.bn
    pre = [v.numpy().astype(np.float64) for v in (bn.moving_mean, bn.moving_variance)]
    features = models["prestep"].embedder.features(tf.concat(x, 0), training=True)
    features = features.numpy().astype(np.float64)
    batch_stats = [features.mean(0), features.var(0)]
    for model in models.values():
        model.train_on_batch(x, y)
    rate = 1.0 - bn.momentum
    for name, before, b_real in zip(("moving_mean", "moving_variance"), pre, batch_stats):
        sequential = getattr(models["sequential"].embedder.head.bn, name).numpy()
        prestep = getattr(bn, name).numpy()
        np.testing.assert_allclose(prestep - sequential, rate ** 2 * (b_real - before),
                                   rtol=1e-3, atol=1e-6, err_msg=name)
        assert np.abs(prestep - sequential).max() > 1e-5  # the check can fail


def _nonfinite_syn_model(rule):
    """J_syn non-finite, J_m finite: an overflowing generator makes ỹ infinite, the
    head's BatchNorm of it NaN."""
    model = model_with("triplet", nonfinite_syn=rule)
    x, y = make_batch("triplet")
    model.build((None,) + x[0].shape[1:])
    model.generator.fc2.kernel.assign(tf.fill(model.generator.fc2.kernel.shape, 1e38))
    return model, (x, y)


def test_zero_metric_rule_steps_on_a_zero_gradient():
    """The authors' triplet: a NaN J_syn reaches J_metric, which their
    nn_Ops.training replaces by 0; Adam still steps (its moments move)."""
    model, batch = _nonfinite_syn_model("zero_metric")
    terms = model.loss_terms(batch)
    assert not np.isfinite(terms["j_syn"]) and np.isfinite(terms["j_m"])
    grads = model.objective_gradients(batch)["metric"]
    assert all(not np.any(g.numpy()) for g, _ in grads)
    logs = model.train_on_batch(*batch, return_dict=True)
    assert logs["j_metric"] == 0.0
    stats = model.statistics()
    assert stats["metric_skipped_steps"] == 0 and stats["syn_fallback_steps"] == 1
    assert int(model.metric_optimizer.iterations.numpy()) == 1


def test_fallback_rule_keeps_the_gradient_of_w_jm():
    model, batch = _nonfinite_syn_model("fallback")
    terms = model.loss_terms(batch)
    grads = model.objective_gradients(batch)["metric"]
    assert any(np.any(g.numpy()) for g, _ in grads)
    logs = model.train_on_batch(*batch, return_dict=True)
    np.testing.assert_allclose(logs["j_metric"], terms["w"] * terms["j_m"], rtol=1e-5)


@pytest.mark.parametrize("key, value", [
    ("head_bn_updates", "both"), ("nonfinite_syn", "zero"), ("weight_decay_scope", "all")])
def test_hdml_refuses_unknown_choices(key, value):
    with pytest.raises(ValueError, match=key):
        model_with(**{key: value})


# ------------------------------------------------------- the learning rate


def test_global_step_decay_changes_after_the_boundary_step():
    """Boundary 5632: the 5632 updates with step 0 ... 5631 use the full rate, the
    5633rd (step 5632) the half, as main_npair.py's `_lr` halved after step 5632."""
    schedule = GlobalStepDecay(7e-5, [5632, 6848], 0.5)
    rates = [float(schedule(s)) for s in (0, 5631, 5632, 6847, 6848, 8000)]
    np.testing.assert_allclose(rates, [7e-5, 7e-5, 3.5e-5, 3.5e-5, 1.75e-5, 1.75e-5])
    again = GlobalStepDecay.from_config(schedule.get_config())
    assert again.get_config() == schedule.get_config()
    with pytest.raises(ValueError, match="increasing"):
        GlobalStepDecay(1e-3, [10, 5])


def test_the_learning_rate_follows_the_global_step_not_the_update_count():
    """A skipped metric step advances the batches trained, not Adam's iterations.

    One model (one traced step): the rate halves at step 1 and again at step 2, so
    after an applied step and a skipped one the global step (2) and Adam's count (1)
    give different rates."""
    model = model_with(lr=GlobalStepDecay(1e-3, [1, 2], 0.5))
    x, y = make_batch("npair")
    model.train_on_batch(x, y)  # step 0 applied
    assert int(model.metric_optimizer.inner_optimizer.iterations.numpy()) == 1
    assert float(model.metric_optimizer.learning_rate) == pytest.approx(5e-4)
    bad = (np.full_like(x[0], np.nan), x[1])
    model.train_on_batch(bad, y)  # step 1 skipped
    assert int(model.metric_optimizer.inner_optimizer.iterations.numpy()) == 1
    assert int(model.metric_optimizer.iterations.numpy()) == 2  # the step advanced
    assert float(model.metric_optimizer.learning_rate) == pytest.approx(2.5e-4)


@pytest.mark.parametrize("preset, rule, expected", [
    ("cars196_npair", "authors", (5632, 6848)), ("cub200_npair", "authors", ()),
    ("sop_npair", "authors", ()), ("cub200_npair", "global_step", (5632, 6848))])
def test_lr_decay_boundaries(preset, rule, expected):
    config = config_lib.load_config(preset, [f"optim.lr_decay_rule={rule}"])
    assert experiment.lr_decay_boundaries(config) == expected


def test_build_model_puts_the_rule_on_the_global_step():
    config = config_lib.load_config("fashion_mnist_npair", [
        "optim.lr_decay_steps=3", "data.batch_size=4"])
    model = experiment.build_model(config, 5)
    schedule = model.metric_optimizer.inner_optimizer._learning_rate
    assert isinstance(schedule, GlobalStepDecay) and schedule.boundaries == (3,)
    model.metric_optimizer.iterations.assign(3)  # the step
    assert float(model.metric_optimizer.learning_rate) == pytest.approx(
        config.optim.lr_metric * 0.5)


def test_a_saved_model_reloads_with_its_rule_on_the_global_step(tmp_path):
    config = config_lib.load_config("fashion_mnist_npair", [
        "optim.lr_decay_steps=3", "data.batch_size=4"])
    path = str(tmp_path / "model.keras")
    experiment.build_model(config, 5).save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.metric_optimizer.inner_optimizer._learning_rate, GlobalStepDecay)
    loaded.metric_optimizer.iterations.assign(3)  # the step
    assert float(loaded.metric_optimizer.learning_rate) == pytest.approx(
        config.optim.lr_metric * 0.5)


# ------------------------------------------------- evaluation and cropping


def test_authors_schedule_per_dataset():
    """CUB: after 5000 every 46 (5014, 5060, ...); SOP: every 4650 until the first
    evaluation at or after 5000 (9300), then every 465."""
    steps = range(1, 10001)
    cub = [s for s in steps if authors_schedule(s, every=46)]
    assert cub[:12] == [500 * i for i in range(1, 11)] + [5014, 5060]
    assert 5632 not in cub and 6848 not in cub
    cars = [s for s in steps if authors_schedule(s)]
    assert 5632 in cars and 6848 in cars and 5056 in cars
    sop = [s for s in steps if authors_schedule(s, every=465, every_initial=4650)]
    assert sop == [4650, 9300, 9765]


def test_centre_crop_rounding():
    image = tf.reshape(tf.range(256 * 256, dtype=tf.float32), (256, 256, 1))
    corner = {r: int(preprocess.center_crop(image, 227, rounding=r)[0, 0, 0])
              for r in ("floor", "ceil")}
    assert corner == {"floor": 14 * 256 + 14, "ceil": 15 * 256 + 15}
    assert preprocess.center_crop(image, 227, rounding="ceil").shape == (227, 227, 1)
    even = tf.zeros((10, 10, 1))
    assert preprocess.center_crop(even, 8, rounding="ceil").shape == (8, 8, 1)
    with pytest.raises(ValueError, match="rounding"):
        preprocess.center_crop(image, 227, rounding="round")


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize("override, key", [
    ("model.head_bn_updates=both", "model.head_bn_updates"),
    ("model.nonfinite_syn=skip", "model.nonfinite_syn"),
    ("data.center_crop_rounding=round", "data.center_crop_rounding"),
    ("optim.lr_decay_rule=iterations", "optim.lr_decay_rule"),
    ("train.authors_eval_every=0", "train.authors_eval_every"),
    ("train.authors_eval_every_initial=-5", "train.authors_eval_every_initial"),
    ("train.kmeans_seed=-1", "train.kmeans_seed"),
    ("optim.lr_decay_steps=6848,5632", "optim.lr_decay_steps"),
    ("model.classifier_extra_class=maybe", "model.classifier_extra_class")])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(config_lib.ConfigError, match=key) as error:
        config_lib.load_config("cub200_npair", [override])
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("override", [
    "model.classifier_extra_class=false", "model.head_bn_updates=sequential",
    "data.center_crop_rounding=floor", "optim.lr_decay_rule=global_step",
    "train.kmeans_seed=0", "train.authors_eval_every=64", "model.nonfinite_syn=zero_metric"])
def test_each_behaviour_is_part_of_the_authors_fidelity(override):
    assert config_lib.fidelity(config_lib.load_config("cub200_npair")) == "authors"
    assert config_lib.fidelity(config_lib.load_config("cub200_npair", [override])) == "custom"


def test_triplet_presets_zero_the_metric_and_npair_presets_fall_back():
    for name in PAPER_PRESETS:
        config = config_lib.get_preset(name)
        assert config.model.nonfinite_syn == config_lib.AUTHORS_NONFINITE_SYN[
            config.model.loss]
        every = (config.train.authors_eval_every_initial, config.train.authors_eval_every)
        assert every == config_lib.AUTHORS_EVAL_EVERY[config.data.name]


# -------------------------------------------------------------- provenance

# Keys that change nothing a run computes (names, logging, checkpoints) or that are
# the dataset itself.
_NOT_SETTINGS = {"data.name", "train.export_name", "train.steps_per_epoch"}


def _flat(config):
    return {f"{s}.{k}": v for s, f in config.to_dict().items()
            if s in ("data", "model", "optim", "train") for k, v in f.items()}


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_every_setting_of_a_paper_preset_has_a_source(name):
    """Each key a paper preset sets away from the defaults has a source; each source
    names a key, and an authors' one a commit."""
    provenance = config_lib.get_provenance(name)
    values, defaults = _flat(config_lib.get_preset(name)), _flat(config_lib.ExperimentConfig())
    changed = {k for k in values if values[k] != defaults[k]} - _NOT_SETTINGS
    assert changed <= set(provenance), sorted(changed - set(provenance))
    assert set(provenance) <= set(values), sorted(set(provenance) - set(values))
    for key, source in provenance.items():
        assert isinstance(source, Source) and source.origin in ("authors", "ours"), key
        if source.origin == "authors":
            assert source.commit in ("fa03ef0", "6071626", "e6dfab3", "6bcc861"), key
    assert config_lib.get_provenance("fashion_mnist_npair") == {}


def test_sop_and_triplet_settings_say_which_are_ours():
    sop = config_lib.get_provenance("sop_npair")
    assert sop["model.beta"].commit == "e6dfab3" and sop["optim.lr_gen"].commit == "e6dfab3"
    assert sop["train.steps"].origin == "ours"
    triplet = config_lib.get_provenance("cub200_triplet")
    assert triplet["data.batch_size"].origin == "ours"
    assert triplet["model.loss"].commit == "6bcc861"
    assert config_lib.get_provenance("cub200_npair")["train.authors_eval_every"].commit == (
        "6071626")


def test_presets_listing_shows_the_provenance(capsys):
    from hdml_tf import cli

    assert cli.main(["presets"]) == 0
    out = capsys.readouterr().out
    assert all(len(line) <= 100 for line in out.splitlines())
    assert "e6dfab3" in out and "6071626" in out and "ours: data.batch_size" in out
    assert cli.main(["presets", "sop_npair", "--provenance"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert any(r.startswith("model.beta") and "authors e6dfab3" in r for r in rows)
    assert any(r.startswith("train.steps") and "ours:" in r for r in rows)
    assert all(len(r) <= 100 for r in rows)

