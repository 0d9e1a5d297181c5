"""Tests for hdml_tf.backbones.weights: converted-Caffe GoogLeNet files <-> InceptionV1.

Files are synthetic but have the real names and shapes (the layout of the HDML authors'
tf_ckpt_from_caffe.mat: OIHW kernels under Caffe layer names, biases under
'<name>_bias'), plus the auxiliary-head keys that real converted files contain.
"""

import numpy as np
import pytest
import scipy.io
import tensorflow as tf

from hdml_tf import cli
from hdml_tf.backbones import (
    CAFFE_LAYER_NAMES,
    CaffeWeightsError,
    InceptionV1,
    build_backbone,
    convert_caffe_weights,
    load_caffe_weights,
    save_caffe_weights,
)
from hdml_tf.backbones.weights import read_caffe_weights_file


def snapshot(model):
    return [v.numpy().copy() for v in model.weights]


def assert_weights_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def assert_untouched(model, before):
    assert_weights_equal(snapshot(model), before)


def caffe_arrays(model, rng):
    """Random weights in the Caffe layout for every Caffe layer of `model`."""
    arrays = {}
    for name, layer in model.caffe_layers().items():
        shape = tuple(layer.kernel.shape)  # Keras HWIO, or (in, out) for the classifier
        if len(shape) == 4:
            caffe_shape = (shape[3], shape[2], shape[0], shape[1])
        else:
            caffe_shape = shape[::-1]
        arrays[name] = rng.standard_normal(caffe_shape).astype("float32")
        arrays[name + "_bias"] = rng.standard_normal(shape[-1]).astype("float32")
    return arrays


AUX_KEYS = {
    # Shapes of the BVLC auxiliary heads (loss1 on inception_4a, loss2 on 4d).
    "loss1/conv": (128, 512, 1, 1), "loss1/conv_bias": (128,),
    "loss1/fc": (1024, 2048), "loss1/fc_bias": (1024,),
    "loss1/classifier": (1000, 1024), "loss1/classifier_bias": (1000,),
    "loss2/conv": (128, 528, 1, 1), "loss2/conv_bias": (128,),
    "loss2/fc": (1024, 2048), "loss2/fc_bias": (1024,),
    "loss2/classifier": (1000, 1024), "loss2/classifier_bias": (1000,),
}


@pytest.fixture(scope="module")
def model():
    return InceptionV1(input_shape=(64, 64, 3))


@pytest.fixture(scope="module")
def source():
    """A model with known weights, different from the `model` fixture's."""
    rng = np.random.default_rng(7)
    m = InceptionV1(input_shape=(64, 64, 3))
    m.set_weights([rng.standard_normal(v.shape).astype("float32") * 0.05 for v in m.weights])
    return m


@pytest.mark.parametrize("ext", [".mat", ".npz", ".npy"])
def test_round_trip(tmp_path, source, ext):
    path = tmp_path / f"googlenet{ext}"
    save_caffe_weights(source, path)
    target = InceptionV1(input_shape=(64, 64, 3))
    report = load_caffe_weights(target, path)
    assert report["loaded"] == sorted(CAFFE_LAYER_NAMES[:-1])
    assert report["ignored"] == []
    assert_weights_equal(snapshot(target), snapshot(source))
    x = np.random.uniform(-100, 100, (2, 64, 64, 3)).astype("float32")
    np.testing.assert_array_equal(target(x).numpy(), source(x).numpy())


def test_file_layout_is_caffe_oihw(tmp_path, source):
    """Kernel element [o, i, h, w] in the file is Keras kernel [h, w, i, o]."""
    path = tmp_path / "w.mat"
    save_caffe_weights(source, path)
    raw = scipy.io.loadmat(str(path))
    kernel = source.get_caffe_layer("inception_4d/5x5").kernel.numpy()
    stored = raw["inception_4d/5x5"]
    assert stored.shape == (64, 32, 5, 5)
    rng = np.random.default_rng(0)
    for _ in range(20):
        o, i, h, w = (rng.integers(n) for n in stored.shape)
        assert stored[o, i, h, w] == kernel[h, w, i, o]
    # loadmat hands biases back 2-D; the loader must accept that.
    assert raw["conv1/7x7_s2_bias"].shape == (1, 64)


def test_load_known_caffe_arrays_and_bias_layouts(tmp_path, model):
    rng = np.random.default_rng(3)
    m = InceptionV1(input_shape=(64, 64, 3))
    arrays = caffe_arrays(m, rng)
    # Mix the three bias layouts loadmat and converters produce.
    for j, key in enumerate(k for k in arrays if k.endswith("_bias")):
        arrays[key] = [arrays[key], arrays[key][None, :], arrays[key][:, None]][j % 3]
    path = tmp_path / "w.npz"
    np.savez(path, **arrays)
    load_caffe_weights(m, path)
    conv = m.get_caffe_layer("conv2/3x3")
    np.testing.assert_array_equal(conv.kernel.numpy(), arrays["conv2/3x3"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(conv.bias.numpy(), arrays["conv2/3x3_bias"].reshape(-1))


def test_real_file_with_aux_heads_and_classifier_loads(tmp_path):
    rng = np.random.default_rng(4)
    with_top = InceptionV1(include_top=True, input_shape=(64, 64, 3))
    arrays = caffe_arrays(with_top, rng)  # includes loss3/classifier (1000, 1024)
    arrays.update({k: rng.standard_normal(s).astype("float32") for k, s in AUX_KEYS.items()})
    path = tmp_path / "tf_ckpt_from_caffe.mat"
    scipy.io.savemat(str(path), arrays)
    assert "__header__" in scipy.io.loadmat(str(path))  # ignored by the loader

    no_top = InceptionV1(input_shape=(64, 64, 3))
    report = load_caffe_weights(no_top, path)
    classifier_keys = ["loss3/classifier", "loss3/classifier_bias"]
    assert report["ignored"] == sorted(list(AUX_KEYS) + classifier_keys)
    np.testing.assert_array_equal(
        no_top.get_caffe_layer("inception_5b/pool_proj").kernel.numpy(),
        arrays["inception_5b/pool_proj"].transpose(2, 3, 1, 0),
    )

    report = load_caffe_weights(with_top, path)  # include_top: classifier loaded
    assert "loss3/classifier" in report["loaded"]
    np.testing.assert_array_equal(
        with_top.get_caffe_layer("loss3/classifier").kernel.numpy(), arrays["loss3/classifier"].T
    )

    fresh = InceptionV1(include_top=True, input_shape=(64, 64, 3))
    classifier_before = fresh.get_caffe_layer("loss3/classifier").kernel.numpy()
    load_caffe_weights(fresh, path, skip_classifier=True)
    np.testing.assert_array_equal(
        fresh.get_caffe_layer("loss3/classifier").kernel.numpy(), classifier_before
    )


def test_one_error_lists_missing_unexpected_and_misshaped_keys(tmp_path, model, source):
    arrays = read_caffe_weights_file(save_caffe_weights(source, tmp_path / "ok.npz"))
    del arrays["inception_4c/3x3_bias"]
    arrays["inception_9z/1x1"] = np.zeros((3, 3), "float32")
    arrays["conv2/3x3"] = arrays["conv2/3x3"].transpose(2, 3, 1, 0)  # HWIO by mistake
    path = tmp_path / "broken.npz"
    np.savez(path, **arrays)
    before = snapshot(model)
    with pytest.raises(CaffeWeightsError) as info:
        load_caffe_weights(model, path)
    message = str(info.value)
    assert str(path) in message
    assert "missing keys (1): inception_4c/3x3_bias" in message
    assert "unexpected keys (1): inception_9z/1x1" in message
    assert "conv2/3x3: shape (3, 3, 64, 192), expected (192, 64, 3, 3)" in message
    assert_untouched(model, before)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda a: a.pop("conv1/7x7_s2"),
         "missing keys (1): conv1/7x7_s2"),
        (lambda a: a.update({"extra/thing_bias": np.ones(3)}),
         "unexpected keys (1): extra/thing_bias"),
        (lambda a: a.update({"inception_3a/1x1_bias": np.ones(65)}),
         "inception_3a/1x1_bias: shape (65,), expected (64,)"),
        (lambda a: a.update({"inception_3a/1x1_bias": np.ones((2, 64))}),
         "inception_3a/1x1_bias: shape (2, 64)"),
        (lambda a: a.update({"inception_5b/5x5": np.ones((128, 48, 3, 3))}),
         "inception_5b/5x5: shape (128, 48, 3, 3), expected (128, 48, 5, 5)"),
        (lambda a: a.update({"conv2/3x3_bias": np.array(["x"] * 192)}),
         "conv2/3x3_bias: dtype <U1 is not numeric"),
    ],
)
def test_each_error_names_the_key_and_leaves_weights(tmp_path, model, source, mutate, expected):
    arrays = read_caffe_weights_file(save_caffe_weights(source, tmp_path / "ok.npz"))
    mutate(arrays)
    path = tmp_path / "bad.npy"
    np.save(path, arrays, allow_pickle=True)
    before = snapshot(model)
    with pytest.raises(CaffeWeightsError, match="bad.npy") as info:
        load_caffe_weights(model, path)
    assert expected in str(info.value)
    assert_untouched(model, before)


def test_classifier_keys_strictness(tmp_path, source):
    path = str(tmp_path / "no_top.npz")
    save_caffe_weights(source, path)
    with_top = InceptionV1(include_top=True, input_shape=(64, 64, 3))
    before = snapshot(with_top)
    with pytest.raises(CaffeWeightsError, match="loss3/classifier, loss3/classifier_bias"):
        load_caffe_weights(with_top, path)  # has a top: the file must provide it
    assert_untouched(with_top, before)

    top_path = str(tmp_path / "top.npz")
    save_caffe_weights(with_top, top_path)
    no_top = InceptionV1(input_shape=(64, 64, 3))
    before = snapshot(no_top)
    with pytest.raises(CaffeWeightsError, match="unexpected keys.*loss3/classifier"):
        load_caffe_weights(no_top, top_path, skip_classifier=False)
    assert_untouched(no_top, before)


@pytest.mark.parametrize("name", ["weights.pkl", "weights.h5", "weights"])
def test_wrong_extension(tmp_path, model, name):
    path = tmp_path / name
    path.write_bytes(b"not weights")
    before = snapshot(model)
    with pytest.raises(ValueError, match=name):
        load_caffe_weights(model, path)
    assert_untouched(model, before)


def test_nonexistent_file(tmp_path, model):
    path = tmp_path / "missing.mat"
    before = snapshot(model)
    with pytest.raises(FileNotFoundError, match="missing.mat"):
        load_caffe_weights(model, path)
    assert_untouched(model, before)


def test_npy_must_hold_a_dict(tmp_path, model):
    path = tmp_path / "array.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(ValueError, match="dict"):
        load_caffe_weights(model, path)


class _WritesAFile:
    """Unpickling this calls open(target, "w"): code run by merely loading the file."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_npy_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, model, capsys):
    import pickle

    from hdml_tf.backbones import UnsafePickleError

    # The payload is real: a plain unpickler runs it and creates the file.
    proof = tmp_path / "proof.txt"
    pickle.loads(pickle.dumps({"conv1/7x7_s2": _WritesAFile(proof)}))
    assert proof.exists()

    target = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.npy"
    arrays = {"conv1/7x7_s2_bias": np.zeros(64, np.float32), "x": _WritesAFile(target)}
    np.save(evil, arrays, allow_pickle=True)
    before = snapshot(model)
    with pytest.raises(UnsafePickleError, match=r"evil\.npy.*refused to unpickle (io|builtins)\.open"):
        load_caffe_weights(model, evil)
    assert not target.exists()
    assert_untouched(model, before)
    # The same from the command line: one line naming the file and the refused name.
    out = tmp_path / "x.weights.h5"
    assert cli.main(["weights", "import", str(evil), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "evil.npy" in err and ".open" in err
    assert not target.exists() and not out.exists()


def test_npy_dict_of_arrays_still_loads_through_the_restricted_unpickler(tmp_path, source):
    """np.save of a dict (numpy's _reconstruct, ndarray, dtype) and numpy scalars pass."""
    path = tmp_path / "googlenet.npy"
    save_caffe_weights(source, path)
    arrays = read_caffe_weights_file(path)
    assert arrays["conv1/7x7_s2"].shape == (64, 3, 7, 7)
    extra = tmp_path / "extra.npy"
    np.save(extra, {"a": np.float32(2.5), "b": [1.0, 2.0], "t": ("x", "y"), "c": np.arange(3)},
            allow_pickle=True)
    got = read_caffe_weights_file(extra)
    assert float(got["a"]) == 2.5 and got["c"].tolist() == [0, 1, 2]
    assert got["b"].tolist() == [1.0, 2.0] and got["t"].tolist() == ["x", "y"]


def test_rejects_models_without_caffe_layers(tmp_path, source):
    import keras

    path = tmp_path / "w.npz"
    save_caffe_weights(source, path)
    with pytest.raises(TypeError, match="InceptionV1"):
        load_caffe_weights(keras.Sequential([keras.layers.Dense(2)]), path)


def test_convert_and_cli(tmp_path, source, capsys):
    src = tmp_path / "googlenet.npz"
    save_caffe_weights(source, src)
    out = tmp_path / "out" / "googlenet.weights.h5"
    assert cli.main(["weights", "import", str(src), "-o", str(out), "--input-size", "64"]) == 0
    assert str(out) in capsys.readouterr().out
    restored = build_backbone("inception_v1", weights=str(out))
    assert_weights_equal(snapshot(restored), snapshot(source))

    assert cli.main(["weights", "import", str(tmp_path / "nope.mat"), "-o", str(out)]) == 1
    assert "nope.mat" in capsys.readouterr().err
    with pytest.raises(ValueError, match="weights.h5"):
        convert_caffe_weights(src, tmp_path / "x.h5")


@pytest.mark.two_devices
def test_load_under_mirrored_strategy(tmp_path, source, two_replicas):
    path = tmp_path / "w.mat"
    save_caffe_weights(source, path)
    strategy = two_replicas
    with strategy.scope():
        replicated = InceptionV1(input_shape=(64, 64, 3))
    load_caffe_weights(replicated, path)
    kernel = replicated.get_caffe_layer("inception_4a/3x3").kernel
    expected = source.get_caffe_layer("inception_4a/3x3").kernel.numpy()
    for value in strategy.experimental_local_results(kernel):
        np.testing.assert_array_equal(value.numpy(), expected)
