"""hdml_tf's `authors` mode against the authors' own TF1 graph, step for step.

The fixture (tests/fixtures/authors_parity*, written by tools/authors_parity.py from
their repository, commit in its metadata) holds, for N-pair (batch 8) and triplet
(batch 12) HDML on a fixed batch with fixed initial weights and λ ≈ 0.50, w ≈ 0.37:
every loss term of K = 2 steps, the three objectives' gradients at the initial weights,
and every weight after the 2 steps. The run-to-run noise of their graph (oneDNN on vs
off) is stored too: tolerances are max(the issue's bound, twice that noise).

A one-line change to any term (the LRN constants, the decay scope, a loss scale, the
synthesis condition) makes these tests fail.
"""

import os
import sys

import numpy as np
import pytest
import keras

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import authors_parity_common as common  # noqa: E402

from hdml_tf.backbones.inception_v1 import InceptionV1  # noqa: E402
from hdml_tf import HDML, Embedder  # noqa: E402


def build(loss):
    """hdml_tf in the authors' mode with the fixture's settings and initial weights."""
    s = common.SETTINGS[loss]
    backbone = InceptionV1(input_shape=(s["image_size"], s["image_size"], 3), lrn="authors")
    model = HDML(Embedder(backbone, embedding_dim=s["embedding_size"]),
                 num_classes=s["num_class"], loss=loss, alpha=s["alpha"], beta=s["beta"],
                 lambda_gen=s["_lambda"], softmax_factor=s["Softmax_factor"],
                 l2_reg=s["loss_l2_reg"], margin=s["triplet_margin"],
                 weight_decay=s["Regular_factor"], weight_decay_scope="authors",
                 j_avg_init=s["Javg"], j_gen_avg_init=s["Jgen"], generator_hidden=512)
    adam = lambda lr: keras.optimizers.Adam(  # noqa: E731
        lr, beta_1=s["adam_beta1"], beta_2=s["adam_beta2"], epsilon=s["adam_epsilon"])
    model.compile(adam(s["init_learning_rate"]), adam(s["lr_gen"]), adam(s["s_lr"]))
    model.build((None, s["image_size"], s["image_size"], 3))
    variables = neutral_variables(model)
    weights = common.initial_weights(loss)
    assert set(weights) == set(variables)
    for name, value in weights.items():
        variables[name].assign(value)
    return model


def neutral_variables(model):
    """The fixture's neutral names -> this model's variables."""
    head, gen = model.embedder.head, model.generator
    out = {}
    for layer_name, layer in model.embedder.backbone.caffe_layers().items():
        out[f"backbone/{layer_name}/kernel"] = layer.kernel
        out[f"backbone/{layer_name}/bias"] = layer.bias
    for prefix, bn in (("head/bn", head.bn), ("generator/bn", gen.bn)):
        for attr in ("gamma", "beta", "moving_mean", "moving_variance"):
            out[f"{prefix}/{attr}"] = getattr(bn, attr)
    for prefix, dense in (("head/fc", head.fc), ("generator/fc1", gen.fc1),
                          ("generator/fc2", gen.fc2), ("classifier", model.classifier)):
        out[f"{prefix}/kernel"], out[f"{prefix}/bias"] = dense.kernel, dense.bias
    return out


def batch_of(loss):
    images, labels = common.fixed_batch(loss)
    groups = 2 if loss == "npair" else 3
    images = np.split(np.asarray(images, np.float32), groups)
    labels = np.split(np.asarray(labels).reshape(-1).astype(np.int32), groups)
    return tuple(images), tuple(labels)


def ours_as_theirs(terms):
    """hdml_tf's terms named and scaled as the authors' graph reports them."""
    w = terms["w"]
    return {"metric_loss": terms["j_m"] - terms["weight_decay"],
            "wd_loss": terms["weight_decay"], "J_m": w * terms["j_m"],
            "J_syn": (1 - w) * terms["j_syn"], "J_metric": terms["j_metric"],
            "J_recon": terms["j_recon"], "J_soft": terms["j_soft"], "J_gen": terms["j_gen"],
            "cross_entropy": terms["j_cls"], "lambda": terms["lambda"], "w": w}


@pytest.fixture(scope="module", params=common.LOSSES)
def case(request):
    loss = request.param
    fixture = common.load_fixture(loss)
    model = build(loss)
    return loss, fixture["arrays"], fixture["meta"], model, batch_of(loss)


def _close(got, want, noise, rtol, what):
    tol = max(rtol * abs(want), 2.0 * float(np.max(noise)), 1e-7)
    assert abs(got - want) <= tol, f"{what}: ours {got!r}, authors' {want!r} (tol {tol:.3g})"


def test_setup_matches_the_fixture(case):
    loss, arrays, meta, model, batch = case
    made = common.fingerprint(dict(zip(("images", "labels"), common.fixed_batch(loss))))
    assert meta["input_fingerprint"]["sha256"] == made["sha256"]
    made = common.fingerprint(common.initial_weights(loss))
    assert meta["initial_weights_fingerprint"]["sha256"] == made["sha256"]
    decayed = {v.path for v in model.decayed_variables()}
    names = {v.path: k for k, v in neutral_variables(model).items()}
    assert sorted(names[p] for p in decayed) == sorted(meta["wd_loss_variables_neutral"])


def test_every_loss_term_at_the_initial_weights(case):
    loss, arrays, meta, model, batch = case
    ours = ours_as_theirs(model.loss_terms(batch))
    for term, value in ours.items():
        want = float(arrays[f"loss/{term}"][0])
        noise = arrays.get(f"noise/loss/{term}", np.zeros(2))[0]
        _close(value, want, noise, 1e-4, term)


def _compare_summary(arrays, key, got, noise, rtol):
    """A stored (norm, sum, values at idx) summary against an array of ours."""
    got = np.asarray(got, np.float64).reshape(-1)
    idx = arrays[f"{key}/idx"]
    norm = float(arrays[f"{key}/norm"])
    atol = max(rtol * norm, 2.0 * float(noise))
    np.testing.assert_allclose(got[idx], arrays[f"{key}/values"], rtol=0, atol=atol + 1e-12,
                               err_msg=key)
    tol = max(rtol * norm, 2.0 * float(noise) * np.sqrt(got.size), 1e-12)
    assert abs(np.linalg.norm(got) - norm) <= tol, f"{key}: norm {np.linalg.norm(got)} vs {norm}"


OBJECTIVES = {"J_metric": "metric", "J_gen": "generator", "cross_entropy": "classifier"}


def test_gradients_at_the_initial_weights(case):
    """The sharpest check: no training noise. Within 1e-3 of each variable's gradient
    norm (or twice the authors' own oneDNN noise, where that is larger)."""
    loss, arrays, meta, model, batch = case
    grads = model.objective_gradients(batch)
    names = {id(v): k for k, v in neutral_variables(model).items()}
    checked = 0
    for theirs, ours in OBJECTIVES.items():
        for grad, variable in grads[ours]:
            name = names[id(variable)]
            key = f"grad0/{theirs}/{name}"
            assert f"{key}/norm" in arrays, f"{key}: no such gradient in the fixture"
            _compare_summary(arrays, key, grad.numpy(), arrays[f"noise/{key}"], 1e-3)
            checked += 1
    assert checked == sum(len(v) for v in meta["objective_variables"].values())


def test_weights_and_batchnorm_statistics_after_two_steps(case):
    loss, arrays, meta, model, batch = case
    terms = []
    for _ in range(common.K_STEPS):
        terms.append(ours_as_theirs(model.loss_terms(batch)))
        model.train_on_batch(batch)
    for step, ours in enumerate(terms):
        for term, value in ours.items():
            want = float(arrays[f"loss/{term}"][step])
            noise = arrays.get(f"noise/loss/{term}", np.zeros(2))[step]
            _close(value, want, noise, 1e-4, f"step {step} {term}")
    for name, variable in neutral_variables(model).items():
        key = f"weights/{name}"
        # Adam's first step is ±lr where a gradient is near zero, so round-off can
        # flip an element by 2·lr: the bound is max(1e-3, twice the authors' noise).
        np.testing.assert_allclose(
            variable.numpy().reshape(-1)[arrays[f"{key}/idx"]], arrays[f"{key}/values"],
            rtol=0, atol=max(1e-3, 2 * float(arrays[f"noise/{key}"])), err_msg=key)
