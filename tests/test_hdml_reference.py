"""Every HDML loss term against an independent numpy computation of one forward pass.

The reference below is written from the equations (docs/method.md, "One training step",
steps 1-9; paper eq. 3-9; the authors' ``main_npair.py`` / ``main_triplet.py``), with
explicit loops and float64, not from hdml_tf's code. The network is tiny and fixed (a linear backbone, the head's
BatchNorm + Dense, the generator, the classifier), λ and w are well below 1, so the
synthesis and the J_m / J_syn weighting both matter. A mistake such as ``tf.repeat``
for ``tf.tile`` in the synthetic labels, a mean for the sum in J_recon, a missing
s·λ_g in J_soft or a wrong J_syn target makes these tests fail.

Also here: the running statistics past the first window, what skipped steps record,
the per-objective non-finite handling (on one device and on two replicas).
"""

import numpy as np
import pytest
import keras
import tensorflow as tf

from hdml_tf import HDML, Embedder
from hdml_tf.nonfinite import NonFiniteTrainingError, StopOnNonFinite

SIZE, FEATURES, EMBED, HIDDEN, CLASSES = 4, 12, 6, 10, 8
ALPHA, BETA, J_AVG0, J_GEN0 = 1.0, 100.0, 2.0, 100.0  # λ = e^-0.5, w = e^-1
S, LAMBDA_GEN, L2_REG, WD, MARGIN, EPS = 1e4, 0.5, 0.01, 1e-3, 1.0, 1e-3


def linear_backbone():
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Flatten()(inputs)
    return keras.Model(inputs, keras.layers.Dense(FEATURES, name="dense")(x), name="linear")


def make_model(loss, scope="kernels", synchronized=False, lr=0.0, **kwargs):
    model = HDML(Embedder(linear_backbone(), EMBED, synchronized_bn=synchronized),
                 num_classes=CLASSES, loss=loss, alpha=ALPHA, beta=BETA,
                 softmax_factor=S, lambda_gen=LAMBDA_GEN, l2_reg=L2_REG, margin=MARGIN,
                 weight_decay=WD, weight_decay_scope=scope, generator_hidden=HIDDEN,
                 j_avg_init=J_AVG0, j_gen_avg_init=J_GEN0, synchronized_bn=synchronized,
                 **kwargs)
    model.compile(*(keras.optimizers.SGD(lr) for _ in range(3)))
    model.build((None, SIZE, SIZE, 3))
    model.build_from_data(np.zeros((1, SIZE, SIZE, 3), np.float32))
    rng = np.random.default_rng(7)
    for v in model.weights:  # every weight random, BN scales around 1
        if v.trainable:
            base = 1.0 if v.name == "gamma" else 0.0
            v.assign(base + rng.normal(0, 0.5, v.shape).astype(np.float32))
    return model


def make_batch(loss, per_group=4, seed=0):
    rng = np.random.default_rng(seed)
    anchors = rng.choice(CLASSES, per_group, replace=False).astype(np.int32)
    groups = [anchors, anchors]
    if loss == "triplet":
        groups.append(((anchors + 1 + rng.integers(0, CLASSES - 1, per_group)) % CLASSES)
                      .astype(np.int32))
    images = tuple(rng.normal(0, 1, (per_group, SIZE, SIZE, 3)).astype(np.float32)
                   for _ in groups)
    return images, tuple(groups)


# ------------------------------------------------------------ numpy reference


def weights_of(model):
    def arr(v):
        return v.numpy().astype(np.float64)

    dense = model.embedder.backbone.get_layer("dense")
    head, gen = model.embedder.head, model.generator
    return dict(
        wb=arr(dense.kernel), bb=arr(dense.bias),
        hg=arr(head.bn.gamma), hb=arr(head.bn.beta), wh=arr(head.fc.kernel), bh=arr(head.fc.bias),
        w1=arr(gen.fc1.kernel), b1=arr(gen.fc1.bias), gg=arr(gen.bn.gamma), gb=arr(gen.bn.beta),
        w2=arr(gen.fc2.kernel), b2=arr(gen.fc2.bias),
        wc=arr(model.classifier.kernel), bc=arr(model.classifier.bias))


def bn_train(x, gamma, beta):
    """BatchNorm in training mode: batch mean and biased variance, epsilon 1e-3."""
    return gamma * (x - x.mean(0)) / np.sqrt(x.var(0) + EPS) + beta


def cross_entropy(logits, target):
    logits = logits - logits.max()
    return float(np.log(np.exp(logits).sum()) - logits[target])


def dist(a, b):
    return float(np.sqrt(((a - b) ** 2).sum()))


def harden(anchor, positive, negative, lam):
    """Eq. (4): move the negative toward the anchor where it is farther than d+."""
    d_pos, d_neg = dist(anchor, positive), dist(anchor, negative)
    if d_neg > d_pos:
        return anchor + (d_pos + lam * (d_neg - d_pos)) / d_neg * (negative - anchor)
    return negative


def reference(model, batch, loss, scope="kernels"):
    """All terms of one training-mode forward pass, from the equations."""
    p = weights_of(model)
    images, labels = batch
    x = np.concatenate([im.reshape(len(im), -1) for im in images]).astype(np.float64)
    lab = np.concatenate(labels)
    n = len(x)
    y = x @ p["wb"] + p["bb"]
    head = lambda f: bn_train(f, p["hg"], p["hb"]) @ p["wh"] + p["bh"]  # noqa: E731
    z = head(y)
    P = len(images[0])
    decayed = [p["wb"], p["wh"]] + ([p["bb"], p["bh"]] if scope == "authors" else [])
    wd = WD * sum(0.5 * (v ** 2).sum() for v in decayed)
    lam, w = np.exp(-ALPHA / J_AVG0), np.exp(-BETA / J_GEN0)
    out = {"weight_decay": wd, "lambda": lam, "w": w}
    if loss == "npair":
        za, zp = z[:P], z[P:]
        j_m = np.mean([cross_entropy(za[i] @ zp.T, i) for i in range(P)])
        j_m += 0.25 * L2_REG * ((za ** 2).sum(1).mean() + (zp ** 2).sum(1).mean())
        synth = [za[i] for i in range(P)]
        synth_labels = list(labels[0])
        moved = negatives = 0
        for i in range(P):
            for j in range(P):
                synth.append(harden(za[i], zp[i], zp[j], lam))
                synth_labels.append(labels[1][j])  # candidate j keeps its own class
                if labels[0][i] != labels[1][j]:
                    negatives += 1
                    moved += dist(za[i], zp[j]) > dist(za[i], zp[i])
        out["hardened_fraction"] = moved / negatives
    else:
        za, zp, zn = z[:P], z[P:2 * P], z[2 * P:]
        j_m = sum(max(((za[t] - zp[t]) ** 2).sum() - ((za[t] - zn[t]) ** 2).sum() + MARGIN, 0)
                  for t in range(P))
        synth = list(za) + list(zp) + [harden(za[t], zp[t], zn[t], lam) for t in range(P)]
        synth_labels = list(lab)
        out["hardened_fraction"] = np.mean([dist(za[t], zn[t]) > dist(za[t], zp[t])
                                            for t in range(P)])
    out["j_m"] = j_m + wd
    synth = np.array(synth)
    g_in = np.concatenate([z, synth])
    h = bn_train(np.maximum(g_in @ p["w1"] + p["b1"], 0), p["gg"], p["gb"])
    y_gen = h @ p["w2"] + p["b2"]
    y_prime, y_tilde = y_gen[:n], y_gen[n:]
    z_tilde = head(y_tilde)
    if loss == "npair":
        ta, tc = z_tilde[:P], z_tilde[P:]
        j_syn = np.mean([cross_entropy(np.array([ta[i] @ tc[i * P + j] for j in range(P)]), i)
                         for i in range(P)])
        j_syn += 0.25 * L2_REG * ((ta ** 2).sum(1).mean() + (tc ** 2).sum(1).mean())
    else:
        ta, tp, tn = z_tilde[:P], z_tilde[P:2 * P], z_tilde[2 * P:]
        j_syn = sum(max(((ta[t] - tp[t]) ** 2).sum() - ((ta[t] - tn[t]) ** 2).sum() + MARGIN, 0)
                    for t in range(P))
    out["j_syn"] = j_syn
    out["j_metric"] = w * out["j_m"] + (1 - w) * j_syn
    out["j_recon"] = (1 - LAMBDA_GEN) * ((y_prime - y) ** 2).sum()
    logits = y_tilde @ p["wc"] + p["bc"]
    ce = [cross_entropy(logits[r], synth_labels[r]) for r in range(len(synth))]
    bracket = np.mean(ce[P:]) + np.mean(ce[:P]) if loss == "npair" else np.mean(ce)
    out["j_soft"] = S * LAMBDA_GEN * bracket
    out["j_gen"] = out["j_recon"] + out["j_soft"]
    real_logits = y @ p["wc"] + p["bc"]
    out["j_cls"] = np.mean([cross_entropy(real_logits[r], lab[r]) for r in range(n)])
    return out


TERMS = ["j_m", "weight_decay", "j_syn", "j_metric", "j_recon", "j_soft", "j_gen", "j_cls",
         "hardened_fraction", "lambda", "w"]


@pytest.mark.parametrize("loss", ["npair", "triplet"])
@pytest.mark.parametrize("scope", ["kernels", "authors"])
def test_every_term_matches_the_numpy_reference(loss, scope):
    model = make_model(loss, scope)
    batch = make_batch(loss)
    expected = reference(model, batch, loss, scope)
    assert 0.2 < expected["lambda"] < 0.7 and 0.2 < expected["w"] < 0.5
    assert 0 < expected["hardened_fraction"] < 1 or loss == "triplet"
    assert expected["j_syn"] > 0 and expected["j_m"] > 0
    got = model.loss_terms(batch)
    assert set(got) == set(TERMS)
    for key in TERMS:
        np.testing.assert_allclose(got[key], expected[key], rtol=2e-4, atol=1e-6,
                                   err_msg=key)


def test_loss_terms_take_no_step_and_keep_statistics():
    model = make_model("npair")
    before = [v.numpy().copy() for v in model.variables]
    model.loss_terms(make_batch("npair"))
    grads = model.objective_gradients(make_batch("npair"))
    assert set(grads) == {"metric", "generator", "classifier"}
    assert all(np.all(np.isfinite(g)) for group in grads.values() for g, _ in group)
    for a, b in zip(before, model.variables):
        np.testing.assert_array_equal(a, b.numpy(), err_msg=b.path)


# ------------------------------------------------- running statistics, windows


def test_running_statistics_past_the_first_window():
    """With fixed weights (lr 0), window W = 2: the statistics publish the mean of the
    two recorded values of each window (w * J_m with weight decay, J_gen), the next
    step's λ and w use it, and the second window starts from an empty sum."""
    model = make_model("npair", window=2)
    j_avg, j_gen_avg = J_AVG0, J_GEN0
    window_jm, window_gen = [], []
    for step in range(6):
        batch = make_batch("npair", seed=step)
        expected = model.loss_terms(batch)
        np.testing.assert_allclose(expected["lambda"], np.exp(-ALPHA / j_avg), rtol=1e-5)
        np.testing.assert_allclose(expected["w"], np.exp(-BETA / j_gen_avg), rtol=1e-5)
        model.reset_metrics()
        logs = model.train_on_batch(batch, return_dict=True)
        np.testing.assert_allclose(logs["lambda"], expected["lambda"], rtol=1e-5)
        assert expected["weight_decay"] > 0  # J_m as recorded includes the decay
        window_jm.append(expected["w"] * expected["j_m"])
        window_gen.append(expected["j_gen"])
        if len(window_jm) == 2:
            j_avg, j_gen_avg = np.mean(window_jm), np.mean(window_gen)
            window_jm, window_gen = [], []
        np.testing.assert_allclose(model.statistics()["j_avg"], j_avg, rtol=1e-5)
        np.testing.assert_allclose(model.statistics()["j_gen_avg"], j_gen_avg, rtol=1e-5)


def _assert_embedder_trained(before, model):
    """Every embedder weight finite, every kernel moved (a bias in front of BatchNorm
    gets no gradient: BN removes the mean)."""
    for old, v in zip(before, model.embedder.trainable_variables):
        assert np.all(np.isfinite(v.numpy())), v.path
        if v.name == "kernel":
            assert not np.array_equal(old, v.numpy()), v.path


def _poison_generator(model):
    kernel = model.generator.fc2.kernel
    kernel.assign(np.full(kernel.shape, np.nan, np.float32))


def test_generator_turned_nan_falls_back_to_w_jm_and_keeps_training():
    """J_syn non-finite: J_metric = w J_m for that step, the embedder still trains,
    the generator step is skipped with its BatchNorm statistics put back, and the
    skipped J_gen is not recorded."""
    model = make_model("npair", lr=0.05, window=2)
    batch = make_batch("npair")
    model.train_on_batch(batch)
    _poison_generator(model)
    terms = model.loss_terms(batch)
    assert not np.isfinite(terms["j_syn"]) and not np.isfinite(terms["j_gen"])
    embedder = [v.numpy().copy() for v in model.embedder.trainable_variables]
    gen_stats = [v.numpy().copy() for v in model.generator.non_trainable_variables]
    head_stats = [v.numpy().copy() for v in model.embedder.head.non_trainable_variables]
    gen_window = float(model.j_gen_window.count.numpy())
    for _ in range(3):
        logs = model.train_on_batch(batch, return_dict=True)
    np.testing.assert_allclose(logs["j_metric"], logs["w"] * logs["j_m"], rtol=1e-6)
    stats = model.statistics()
    assert stats["syn_fallback_steps"] == 3 and stats["generator_skipped_steps"] == 3
    assert stats["metric_skipped_steps"] == 0 and stats["classifier_skipped_steps"] == 0
    assert stats["nonfinite_steps"] == 3
    _assert_embedder_trained(embedder, model)
    for before, v in zip(gen_stats, model.generator.non_trainable_variables):
        np.testing.assert_array_equal(before, v.numpy())
    for before, v in zip(head_stats, model.embedder.head.non_trainable_variables):
        assert np.all(np.isfinite(v.numpy())) and not np.array_equal(before, v.numpy())
    assert float(model.j_gen_window.count.numpy()) == gen_window  # nothing recorded
    _stop(model, 2)  # the metric step is healthy: no error


def _stop(model, window, logs=None):
    """StopOnNonFinite's check after a batch, as fit would call it."""
    callback = StopOnNonFinite(window=window)
    callback.set_model(model)
    callback.on_train_batch_end(0, logs)
    return callback


def test_metric_nan_for_a_window_stops_with_the_last_finite_values():
    model = make_model("npair", lr=0.05, window=3)
    images, labels = make_batch("npair")
    callback = StopOnNonFinite(window=3)
    callback.set_model(model)
    good = model.train_on_batch((images, labels), return_dict=True)
    callback.on_train_batch_end(0, good)
    bad = ((np.full_like(images[0], np.nan), images[1]), labels)
    for _ in range(2):
        callback.on_train_batch_end(0, model.train_on_batch(bad, return_dict=True))
    logs = model.train_on_batch(bad, return_dict=True)  # fewer than a window: going on
    with pytest.raises(NonFiniteTrainingError,
                       match=r"3 steps in a row.*step 4; last applied at step 1.*J_m=") as err:
        callback.on_train_batch_end(0, logs)
    assert f"{good['j_m']:.6g}" in str(err.value)
    assert model.statistics()["metric_skipped_steps"] == 3


def test_one_nonfinite_step_does_not_make_the_epoch_means_nan():
    model = make_model("npair", lr=0.01)
    images, labels = make_batch("npair")
    bad = ((np.full_like(images[0], np.nan), images[1]), labels)
    batches = [(images, labels), bad, (images, labels)]
    spec = ((tf.TensorSpec((4, SIZE, SIZE, 3)),) * 2, (tf.TensorSpec((4,), tf.int32),) * 2)
    ds = tf.data.Dataset.from_generator(lambda: iter(batches), output_signature=spec)
    history = model.fit(ds, epochs=1, verbose=0).history
    for key in ("j_m", "j_metric", "j_gen", "j_cls", "j_syn"):
        assert np.isfinite(history[key][0]), key
    assert history["nonfinite_steps"][0] == 1 and history["metric_skipped_steps"][0] == 1


# ------------------------------------------------------------------ two replicas


def _run_step(strategy, model, batch):
    ds = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))

    @tf.function
    def step(element):
        logs = strategy.run(model.train_step, args=(element,))
        return {k: strategy.experimental_local_results(v)[0] for k, v in logs.items()}

    return {k: float(v) for k, v in step(next(iter(ds))).items()}


@pytest.mark.parametrize("loss", ["npair", "triplet"])
def test_two_replica_contributions_sum_to_the_one_device_value(loss, two_replicas):
    batch = make_batch(loss, per_group=4)
    expected = make_model(loss, synchronized=True).loss_terms(batch)
    strategy = two_replicas
    with strategy.scope():
        model = make_model(loss, synchronized=True)
    logs = _run_step(strategy, model, batch)
    for key in TERMS:
        np.testing.assert_allclose(logs[key], expected[key], rtol=2e-4, atol=1e-6,
                                   err_msg=key)


@pytest.mark.manual
def test_two_replica_nonfinite_generator_branch(two_replicas):
    """Under MirroredStrategy the J_syn fallback and the generator skip run too."""
    batch = make_batch("npair")
    strategy = two_replicas
    with strategy.scope():
        model = make_model("npair", synchronized=True, lr=0.05)
    _poison_generator(model)
    embedder = [v.numpy().copy() for v in model.embedder.trainable_variables]
    gen_stats = [v.numpy().copy() for v in model.generator.non_trainable_variables]
    logs = _run_step(strategy, model, batch)
    assert logs["syn_fallback_steps"] == 1 and logs["generator_skipped_steps"] == 1
    assert logs["metric_skipped_steps"] == 0
    np.testing.assert_allclose(logs["j_metric"], logs["w"] * logs["j_m"], rtol=1e-6)
    _assert_embedder_trained(embedder, model)
    for before, v in zip(gen_stats, model.generator.non_trainable_variables):
        np.testing.assert_array_equal(before, v.numpy())
