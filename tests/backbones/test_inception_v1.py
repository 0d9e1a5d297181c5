"""Tests for hdml_tf.backbones.inception_v1: the BVLC GoogLeNet as a Keras subclass.

References compared against are written here from Caffe's definitions, not from the
module under test: the pooling loop of Caffe's PoolingLayer (MAX, ceil rounding, window
clipped to the image), Caffe's LRNLayer formula, and GoogLeNet's layer table.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from hdml_tf.backbones import inception_v1 as iv1
from hdml_tf.backbones.inception_v1 import (
    CAFFE_LAYER_NAMES,
    CaffeConv2D,
    CaffeMaxPooling2D,
    InceptionV1,
    LocalResponseNormalization,
    caffe_pool_output_size,
    caffe_to_keras_name,
    keras_to_caffe_name,
)

# BVLC GoogLeNet's inception table (Szegedy et al., "Going deeper with convolutions",
# Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj), typed in again so the
# parameter count does not depend on the module's own copy.
SPEC_TABLE = [
    (64, 96, 128, 16, 32, 32),
    (128, 128, 192, 32, 96, 64),
    (192, 96, 208, 16, 48, 64),
    (160, 112, 224, 24, 64, 64),
    (128, 128, 256, 24, 64, 64),
    (112, 144, 288, 32, 64, 64),
    (256, 160, 320, 32, 128, 128),
    (256, 160, 320, 32, 128, 128),
    (384, 192, 384, 48, 128, 128),
]


@pytest.fixture(scope="module")
def model():
    return InceptionV1()


# ----------------------------------------------------------------------------------
# Brute-force references


def caffe_max_pool_reference(x, k, s, p):
    """Caffe PoolingLayer MAX forward, written as its loops (NHWC numpy array)."""
    n, h, w, c = x.shape

    def out_size(size):
        out = int(math.ceil((size + 2 * p - k) / s)) + 1
        if p > 0 and (out - 1) * s >= size + p:
            out -= 1
        return out

    oh, ow = out_size(h), out_size(w)
    y = np.full((n, oh, ow, c), -np.inf, dtype=x.dtype)
    for i in range(oh):
        hs = i * s - p
        he = min(hs + k, h + p)
        hs, he = max(hs, 0), min(he, h)
        for j in range(ow):
            ws = j * s - p
            we = min(ws + k, w + p)
            ws, we = max(ws, 0), min(we, w)
            y[:, i, j, :] = x[:, hs:he, ws:we, :].max(axis=(1, 2))
    return y


def caffe_lrn_reference(x, local_size=5, alpha=1e-4, beta=0.75, k=1.0):
    """Caffe LRNLayer ACROSS_CHANNELS: a_c / (k + alpha/n * sum_{|j-c|<=r} a_j^2)^beta."""
    r = (local_size - 1) // 2
    c = x.shape[-1]
    y = np.empty_like(x)
    for ch in range(c):
        lo, hi = max(0, ch - r), min(c, ch + r + 1)
        scale = k + alpha / local_size * np.sum(x[..., lo:hi] ** 2, axis=-1)
        y[..., ch] = x[..., ch] / scale**beta
    return y


def expected_parameter_count(include_top):
    def conv(c_in, c_out, size):
        return size * size * c_in * c_out + c_out

    total = conv(3, 64, 7) + conv(64, 64, 1) + conv(64, 192, 3)
    c = 192
    for f1, f3r, f3, f5r, f5, fp in SPEC_TABLE:
        total += conv(c, f1, 1) + conv(c, f3r, 1) + conv(f3r, f3, 3)
        total += conv(c, f5r, 1) + conv(f5r, f5, 5) + conv(c, fp, 1)
        c = f1 + f3 + f5 + fp
    return total + (c * 1000 + 1000 if include_top else 0)


# ----------------------------------------------------------------------------------
# Architecture


def test_parameter_counts_match_spec():
    """5,973,552 without the classifier, 6,998,552 with the 1000-way one (spec)."""
    assert expected_parameter_count(False) == 5_973_552
    assert expected_parameter_count(True) == 6_998_552
    assert InceptionV1().count_params() == 5_973_552
    assert InceptionV1(include_top=True).count_params() == 6_998_552


@pytest.mark.parametrize("size", [(64, 64), (100, 100), (224, 224), (227, 227), (97, 131)])
def test_output_shape_and_dtype(model, size):
    x = np.random.uniform(-120, 130, (2, *size, 3)).astype("float32")
    y = model(x)
    assert tuple(y.shape) == (2, 1024)
    assert y.dtype == tf.float32
    assert np.all(np.isfinite(y.numpy()))


@pytest.mark.parametrize(
    "size, expected",
    [
        # conv1: floor((224 + 6 - 7) / 2) + 1 = 112; ceil pools: 112 -> 56 -> 28 -> 14 -> 7
        (224, [112, 56, 28, 14, 7]),
        # conv1: floor((227 + 6 - 7) / 2) + 1 = 114; pool1 ceil(111 / 2) + 1 = 57
        # (floor rounding would give 56); then 57 -> 28 -> 14 -> 7
        (227, [114, 57, 28, 14, 7]),
    ],
)
def test_feature_map_sizes_follow_caffe(model, size, expected):
    """Caffe's GoogLeNet ends in a 7x7 map at both 224 and 227 (pool5 is 7x7)."""
    x = tf.zeros((1, size, size, 3))
    sizes = []
    h = model.conv1(x)
    sizes.append(h.shape[1])
    h = model.norm1(model.pool1(h))
    sizes.append(h.shape[1])
    h = model.pool2(model.norm2(model.conv2(model.conv2_reduce(h))))
    sizes.append(h.shape[1])
    for block in model.inception_blocks:
        h = block(h)
        if block.name in model.block_pools:
            h = model.block_pools[block.name](h)
            sizes.append(h.shape[1])
    assert sizes == expected
    assert h.shape[-1] == 1024


def test_input_shape_contract():
    with pytest.raises(ValueError, match="64"):
        InceptionV1(input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="H, W, 3"):
        InceptionV1(input_shape=(64, 64, 1))
    assert InceptionV1.feature_dim == 1024
    assert InceptionV1.preprocessing == "caffe"


def test_include_top_classifier():
    m = InceptionV1(include_top=True, num_classes=10, input_shape=(64, 64, 3))
    y = m(np.random.rand(3, 64, 64, 3).astype("float32"), training=False).numpy()
    assert y.shape == (3, 10)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)
    # Dropout is inactive at inference: two calls agree.
    y2 = m(np.random.rand(3, 64, 64, 3).astype("float32") * 0 + 0.5, training=False)
    y3 = m(np.random.rand(3, 64, 64, 3).astype("float32") * 0 + 0.5, training=False)
    np.testing.assert_array_equal(y2.numpy(), y3.numpy())
    logits = InceptionV1(include_top=True, num_classes=10, classifier_activation=None)
    assert logits.caffe_layers()["loss3/classifier"].kernel.shape == (1024, 10)


def test_gradients_are_finite(model):
    """-inf padding must never win a max, or the gradient would be NaN."""
    x = tf.Variable(np.random.uniform(-100, 100, (2, 65, 71, 3)).astype("float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x, training=True) ** 2)
    grads = tape.gradient(loss, [x] + model.trainable_variables)
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)
    assert np.any(grads[0].numpy() != 0)


# ----------------------------------------------------------------------------------
# Caffe layers against brute-force references


@pytest.mark.parametrize(
    "n, k, s, p, expected",
    [
        (114, 3, 2, 0, 57),  # ceil(111 / 2) + 1; floor rounding would give 56
        (112, 3, 2, 0, 56),  # ceil(109 / 2) + 1
        (7, 3, 1, 1, 7),  # the inception pool branch keeps the size
        (5, 2, 2, 1, 3),  # ceil(5 / 2) + 1 = 4, but window 4 starts at 6 >= 5 + 1: dropped
    ],
)
def test_caffe_pool_output_size_golden(n, k, s, p, expected):
    assert caffe_pool_output_size(n, k, s, p) == expected


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "k, s, p, h, w",
    [
        (3, 2, 0, 114, 113),
        (3, 2, 0, 8, 9),
        (3, 1, 1, 7, 9),
        (2, 2, 1, 5, 6),
        (3, 2, 1, 8, 7),
        (3, 3, 0, 10, 11),
    ],
)
def test_max_pool_matches_caffe_loop(dtype, k, s, p, h, w):
    # Negative values matter: zero padding would wrongly win the max there.
    x = np.random.uniform(-5, -1, (2, h, w, 3)).astype(dtype)
    layer = CaffeMaxPooling2D(k, s, pad=p, dtype=dtype)
    expected = caffe_max_pool_reference(x, k, s, p)
    got = layer(x).numpy()
    assert got.shape == expected.shape
    assert layer.compute_output_shape((2, h, w, 3)) == expected.shape
    np.testing.assert_array_equal(got, expected)
    # Same result when the spatial size is only known at run time.
    dynamic = tf.function(
        layer.call, input_signature=[tf.TensorSpec([None, None, None, 3], dtype)]
    )
    np.testing.assert_array_equal(dynamic(x).numpy(), expected)


@pytest.mark.parametrize(
    "layer",
    [
        CaffeConv2D(8, 7, strides=2, pad=3, activation="relu", name="c"),
        CaffeConv2D(8, 3, pad=1),
        CaffeMaxPooling2D(3, 2, pad=1),
        LocalResponseNormalization(3, 2e-4, 0.5, 2.0),
        iv1.InceptionModule((1, 2, 3, 4, 5, 6), name="inception_x"),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_layer_config_round_trip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer) and restored.get_config() == config
    x = np.random.rand(1, 9, 9, 8).astype("float32")
    assert clone(x).shape == layer(x).shape == clone.compute_output_shape(x.shape)


def test_max_pool_rejects_stride_larger_than_window():
    with pytest.raises(ValueError, match="strides"):
        CaffeMaxPooling2D(2, 3)


def test_lrn_golden_single_channel():
    """One channel of value 10: b = 10 / (1 + 1e-4 / 5 * 10^2)^0.75 = 10 / 1.002^0.75."""
    layer = LocalResponseNormalization()
    got = layer(np.full((1, 1, 1, 1), 10.0, "float32")).numpy().item()
    assert got == pytest.approx(10.0 / 1.002**0.75, rel=1e-6)


@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-5), ("float64", 1e-12)])
@pytest.mark.parametrize("channels", [1, 3, 7, 64])
def test_lrn_matches_caffe_formula(dtype, rtol, channels):
    # Values at conv1's 0-255 scale make the normalisation actually bite.
    x = np.random.uniform(-300, 300, (2, 4, 5, channels)).astype(dtype)
    got = LocalResponseNormalization(dtype=dtype)(x).numpy()
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_allclose(got, caffe_lrn_reference(x), rtol=rtol, atol=0)


def test_lrn_float16_does_not_overflow():
    """Sum of squares of 300-valued activations is ~4.5e5 > float16 max 65504."""
    x = np.full((1, 2, 2, 5), 300.0, "float32")
    got = LocalResponseNormalization(dtype="float16")(x.astype("float16")).numpy()
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, caffe_lrn_reference(x), rtol=2e-3)


@pytest.mark.parametrize(
    "kernel, strides, pad, size",
    [(7, 2, 3, 10), (7, 2, 3, 11), (3, 1, 1, 6), (5, 1, 2, 7), (1, 1, 0, 5)],
)
@pytest.mark.parametrize("tap", ["centre", "corner"])
def test_caffe_conv_pads_symmetrically(kernel, strides, pad, size, tap):
    """A one-tap kernel at offset (a, b) reads input[s*i - pad + a, s*j - pad + b] (0 outside).

    With TF's 'same' at stride 2 the input would be shifted by one pixel (padding
    put at the bottom/right only), so this catches asymmetric padding.
    """
    layer = CaffeConv2D(1, kernel, strides=strides, pad=pad, use_bias=False)
    x = np.random.rand(1, size, size, 1).astype("float32")
    layer.build(x.shape)
    a = kernel // 2 if tap == "centre" else 0
    w = np.zeros((kernel, kernel, 1, 1), "float32")
    w[a, a, 0, 0] = 1.0
    layer.kernel.assign(w)
    out = (size + 2 * pad - kernel) // strides + 1
    expected = np.zeros((1, out, out, 1), "float32")
    for i in range(out):
        for j in range(out):
            r, c = strides * i - pad + a, strides * j - pad + a
            if 0 <= r < size and 0 <= c < size:
                expected[0, i, j, 0] = x[0, r, c, 0]
    got = layer(x).numpy()
    np.testing.assert_array_equal(got, expected)
    assert layer.compute_output_shape(x.shape) == expected.shape


# ----------------------------------------------------------------------------------
# Names


def test_caffe_keras_name_mapping_is_one_to_one():
    assert len(CAFFE_LAYER_NAMES) == 3 + 9 * 6 + 1
    assert len(set(CAFFE_LAYER_NAMES)) == len(CAFFE_LAYER_NAMES)
    keras_names = [caffe_to_keras_name(n) for n in CAFFE_LAYER_NAMES]
    assert len(set(keras_names)) == len(keras_names)
    assert all("/" not in n for n in keras_names)
    assert [keras_to_caffe_name(n) for n in keras_names] == list(CAFFE_LAYER_NAMES)
    assert caffe_to_keras_name("conv1/7x7_s2") == "conv1_7x7_s2"
    assert caffe_to_keras_name("inception_3a/5x5_reduce") == "inception_3a_5x5_reduce"
    with pytest.raises(KeyError, match="conv9"):
        caffe_to_keras_name("conv9/1x1")
    with pytest.raises(KeyError, match="conv9"):
        keras_to_caffe_name("conv9_1x1")


def test_caffe_layers_cover_every_weight():
    m = InceptionV1(include_top=True)
    layers = m.caffe_layers()
    assert list(layers) == list(CAFFE_LAYER_NAMES)
    ids = set()
    for caffe_name, layer in layers.items():
        assert layer.name == caffe_to_keras_name(caffe_name)
        assert m.get_caffe_layer(caffe_name) is layer
        assert m.get_caffe_layer(layer.name) is layer
        assert [v.name for v in layer.weights] == ["kernel", "bias"]
        ids.update(id(v) for v in layer.weights)
    assert ids == {id(v) for v in m.weights}
    # Caffe kernels are OIHW with GoogLeNet's channel counts, e.g. inception_4d/5x5.
    assert tuple(layers["inception_4d/5x5"].kernel.shape) == (5, 5, 32, 64)
    assert tuple(layers["conv1/7x7_s2"].kernel.shape) == (7, 7, 3, 64)


def test_layer_names_are_keras_versions_of_caffe_names(model):
    top = [layer.name for layer in model.layers]
    for name in ["pool1/3x3_s2", "pool1/norm1", "conv2/norm2", "pool2/3x3_s2",
                 "pool3/3x3_s2", "pool4/3x3_s2", "pool5/7x7_s1"]:
        assert caffe_to_keras_name(name) in top
        assert keras_to_caffe_name(caffe_to_keras_name(name)) == name


# ----------------------------------------------------------------------------------
# Serialisation, tf.function, mixed precision, distribution


def test_get_config_round_trip():
    m = InceptionV1(include_top=True, num_classes=7, input_shape=(96, 96, 3),
                    classifier_activation=None, dropout_rate=0.25, name="g")
    config = m.get_config()
    clone = InceptionV1.from_config(config)
    assert clone.get_config() == config
    assert clone.count_params() == m.count_params()


def test_keras_save_load_round_trip(tmp_path, model):
    path = str(tmp_path / "inception_v1.keras")
    x = np.random.uniform(-100, 100, (2, 64, 64, 3)).astype("float32")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, InceptionV1)
    for a, b in zip(model.weights, restored.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(restored(x).numpy(), model(x).numpy())


def test_tf_function_with_unknown_spatial_size(model):
    forward = tf.function(
        lambda t: model(t, training=False),
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)],
        autograph=False,
    )
    for shape in [(2, 64, 64, 3), (1, 100, 131, 3)]:
        x = np.random.uniform(-100, 100, shape).astype("float32")
        np.testing.assert_allclose(forward(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)
    assert model(keras.Input((227, 227, 3))).shape == (None, 1024)


def test_mixed_precision_policy_is_respected(model):
    mixed = InceptionV1(dtype="mixed_float16")
    mixed.set_weights(model.get_weights())
    assert mixed.conv1.compute_dtype == "float16"
    assert mixed.inception_blocks[-1].conv_5x5.compute_dtype == "float16"
    assert mixed.norm1.compute_dtype == "float16"
    assert all(v.dtype == "float32" for v in mixed.weights)
    x = np.random.uniform(-120, 130, (2, 64, 64, 3)).astype("float32")
    y16, y32 = mixed(x).numpy(), model(x).numpy()
    assert y16.dtype == np.float32
    assert np.all(np.isfinite(y16))
    np.testing.assert_allclose(y16, y32, rtol=0.05, atol=0.05 * np.abs(y32).max())
    symbolic = mixed(keras.Input((64, 64, 3)))
    assert (symbolic.dtype, tuple(symbolic.shape)) == ("float32", (None, 1024))


@pytest.mark.two_devices
def test_mirrored_strategy_forward(model, two_replicas):
    strategy = two_replicas
    with strategy.scope():
        replicated = InceptionV1()
    replicated.set_weights(model.get_weights())
    x = np.random.uniform(-100, 100, (4, 64, 64, 3)).astype("float32")
    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices(x).batch(4)
    )

    @tf.function
    def step(batch):
        return strategy.run(lambda t: replicated(t, training=False), args=(batch,))

    outputs = [strategy.gather(step(batch), axis=0) for batch in dataset]
    np.testing.assert_allclose(outputs[0].numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)
