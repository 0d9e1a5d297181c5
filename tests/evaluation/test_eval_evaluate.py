"""Tests of hdml_tf.evaluation.evaluate / evaluate_embeddings / embed."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from hdml_tf import evaluation as ev


def _toy(n_classes=6, per_class=5, d=8, seed=0):
    """Images are 4x4x1 'pictures' whose flattened pixels are the first 16 dims of a
    class centre plus noise; the toy embedder is a fixed linear map to 8 dims."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    centres = rng.standard_normal((n_classes, 16))
    images = (centres[labels] + 0.3 * rng.standard_normal((labels.size, 16)))
    return images.reshape(-1, 4, 4, 1).astype(np.float32), labels


def _embedder(d=8):
    inp = keras.Input((4, 4, 1))
    out = keras.layers.Dense(d, use_bias=False, kernel_initializer="orthogonal")(
        keras.layers.Flatten()(inp))
    return keras.Model(inp, out)


def test_evaluate_array_and_dataset_agree_with_precomputed():
    images, labels = _toy()
    model = _embedder()
    emb = model.predict(images, verbose=0)
    expected = ev.evaluate_embeddings(emb, labels, (1, 2, 4, 8))
    assert list(expected) == ["recall@1", "recall@2", "recall@4", "recall@8", "map@r",
                              "r_precision", "nmi", "f1"]
    got_arrays = ev.evaluate(model, (images, labels), (1, 2, 4, 8), batch_size=7)
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    got_ds = ev.evaluate(model, ds, (1, 2, 4, 8))
    assert got_arrays == pytest.approx(expected, abs=1e-6)
    assert got_ds == pytest.approx(expected, abs=1e-6)
    for v in expected.values():
        assert isinstance(v, float) and 0.0 <= v <= 1.0


def test_evaluate_plain_callable_and_metric_subset():
    images, labels = _toy()
    fn = lambda x: np.reshape(x, (len(x), -1))  # noqa: E731 - identity embedder
    res = ev.evaluate(fn, (images, labels), ks=(1, 3), metrics=("recall", "nmi"))
    assert list(res) == ["recall@1", "recall@3", "nmi"]
    # The noise is small against the class spread, so the classes are perfectly found.
    assert res["recall@1"] == 1.0 and res["nmi"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown metric"):
        ev.evaluate_embeddings(np.eye(3), [0, 0, 1], metrics=("accuracy",))


def test_evaluate_query_gallery():
    images, labels = _toy(per_class=6)
    q = (images[::2], labels[::2])
    g = (images[1::2], labels[1::2])
    fn = lambda x: np.reshape(x, (len(x), -1))  # noqa: E731
    res = ev.evaluate(fn, q, ks=(1,), gallery=g)
    direct = ev.evaluate_embeddings(q[0].reshape(len(q[0]), -1), q[1], (1,),
                                    gallery_embeddings=g[0].reshape(len(g[0]), -1),
                                    gallery_labels=g[1])
    assert res == pytest.approx(direct)
    assert res["recall@1"] == 1.0


def test_k_too_large_is_reported():
    images, labels = _toy(n_classes=2, per_class=2)
    fn = lambda x: np.reshape(x, (len(x), -1))  # noqa: E731
    with pytest.raises(ValueError, match="clip_k"):
        ev.evaluate(fn, (images, labels), ks=(1, 8))
    res = ev.evaluate(fn, (images, labels), ks=(1, 8), clip_k=True)
    assert res["recall@8"] == 1.0


def test_embed_rejects_bad_data():
    with pytest.raises(ValueError):
        ev.embed(lambda x: x, (np.zeros((2, 3)),))
    ds = tf.data.Dataset.from_tensor_slices(np.zeros((4, 3), np.float32)).batch(2)
    with pytest.raises(ValueError, match="images, labels"):
        ev.embed(lambda x: x, ds)


def test_the_package_re_exports_the_protocol():
    """The main functions live in evaluation/protocol.py; the package re-exports them."""
    from hdml_tf.evaluation import protocol

    for name in ("evaluate", "evaluate_embeddings", "embed", "ALL_METRICS", "KS_SMALL"):
        assert getattr(ev, name) is getattr(protocol, name)
