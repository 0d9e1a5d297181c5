"""Tests for hdml_tf.backbones.registry: build by name, weights=None | 'imagenet' | path.

keras.applications networks are built at 64x64 with random weights to stay cheap
(no network access: 'imagenet' downloads are not exercised).
"""

import keras
import numpy as np
import pytest

from hdml_tf.backbones import (
    InceptionV1,
    available_backbones,
    build_backbone,
    get_backbone_spec,
    register_backbone,
    save_caffe_weights,
)
from hdml_tf.backbones import registry

KERAS_APPS = {
    # name: (keras.applications module, pooled width from the architecture papers)
    "resnet50": ("resnet50", 2048),
    "efficientnet_b0": ("efficientnet", 1280),
    "efficientnet_v2_b0": ("efficientnet_v2", 1280),
    "convnext_tiny": ("convnext", 768),
}


def images(n=2, size=64):
    return np.random.uniform(0, 255, (n, size, size, 3)).astype("float32")


def test_available_backbones():
    names = available_backbones()
    assert names == sorted(names)
    assert {"inception_v1", *KERAS_APPS} <= set(names)


def test_built_in_backbones_are_registered_once_by_the_registry():
    """Every built-in name is registered in registry.py itself, so no caller has to import
    a network's module to make its name known; the builder imports
    the network when it is called."""
    import inspect

    from hdml_tf.backbones import small_cnn

    built_in = ["inception_v1", "small_cnn", *KERAS_APPS]
    assert {get_backbone_spec(n).builder.__module__ for n in built_in} == {registry.__name__}
    assert "register_backbone" not in inspect.getsource(small_cnn)
    model = build_backbone("small_cnn", input_shape=(32, 32, 3))
    assert tuple(model(images(1, 32)).shape) == (1, 256) and model.preprocessing == "tf"


def test_unknown_name_lists_available():
    with pytest.raises(ValueError) as info:
        build_backbone("vgg_nineteen")
    message = str(info.value)
    assert "vgg_nineteen" in message
    for name in available_backbones():
        assert name in message


def test_inception_v1_by_name():
    model = build_backbone("INCEPTION_V1", input_shape=(64, 64, 3))
    assert isinstance(model, InceptionV1)
    assert (model.feature_dim, model.preprocessing) == (1024, "caffe")
    assert model(images()).shape == (2, 1024)


@pytest.mark.parametrize("name", sorted(KERAS_APPS))
def test_keras_application_builds_pooled_features(name):
    module, width = KERAS_APPS[name]
    model = build_backbone(name, input_shape=(64, 64, 3))
    spec = get_backbone_spec(name)
    assert model.feature_dim == spec.feature_dim == width
    y = model(images())
    assert tuple(y.shape) == (2, width)
    assert y.dtype == "float32"
    assert np.all(np.isfinite(y.numpy()))
    # The declared input mode is what the network's own preprocess_input does.
    x = images(1)
    preprocessed = getattr(keras.applications, module).preprocess_input(x.copy())
    if model.preprocessing == "none":
        np.testing.assert_array_equal(preprocessed, x)
    else:
        assert model.preprocessing == "caffe"
        caffe = x[..., ::-1] - np.array([103.939, 116.779, 123.68], "float32")
        np.testing.assert_allclose(preprocessed, caffe, rtol=1e-6, atol=1e-4)


def test_inception_v1_has_no_hosted_imagenet_weights():
    with pytest.raises(ValueError, match="hdml-tf weights import"):
        build_backbone("inception_v1", weights="imagenet")


def test_inception_v1_weights_paths(tmp_path):
    source = build_backbone("inception_v1", input_shape=(64, 64, 3))
    x = images(size=64) - 120.0
    expected = source(x).numpy()
    keras_path = str(tmp_path / "iv1.weights.h5")
    source.save_weights(keras_path)
    caffe_path = str(tmp_path / "iv1.npz")
    save_caffe_weights(source, caffe_path)
    archive_path = str(tmp_path / "iv1.keras")
    source.save(archive_path)
    for path in (keras_path, caffe_path, archive_path):
        restored = build_backbone("inception_v1", weights=path, input_shape=(64, 64, 3))
        np.testing.assert_array_equal(restored(x).numpy(), expected)
    # Any input size works with the same weights (they do not depend on H, W).
    assert build_backbone("inception_v1", weights=keras_path)(images(1, 100)).shape == (1, 1024)


def test_keras_application_weights_path(tmp_path):
    source = build_backbone("efficientnet_b0", input_shape=(64, 64, 3))
    x = images()
    expected = source(x).numpy()
    path = str(tmp_path / "effnet.weights.h5")
    source.save_weights(path)
    restored = build_backbone("efficientnet_b0", weights=path, input_shape=(64, 64, 3))
    np.testing.assert_allclose(restored(x).numpy(), expected, rtol=1e-6, atol=1e-6)
    assert not np.allclose(
        build_backbone("efficientnet_b0", input_shape=(64, 64, 3))(x).numpy(), expected
    )


def test_bad_weights_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.weights.h5"):
        build_backbone("inception_v1", weights=str(tmp_path / "nowhere.weights.h5"))
    with pytest.raises(ValueError, match="weights.pkl"):
        build_backbone("inception_v1", weights="weights.pkl")
    caffe_file = tmp_path / "r.mat"
    caffe_file.write_bytes(b"")
    with pytest.raises(ValueError, match="r.mat"):
        build_backbone("resnet50", weights=str(caffe_file))  # Caffe files: inception_v1 only
    with pytest.raises(ValueError, match="weights must be"):
        build_backbone("inception_v1", weights=123)


def test_register_backbone(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_backbone("tiny", feature_dim=4, preprocessing="none", has_imagenet=False)
    def build_tiny(weights, input_shape, **kwargs):
        inputs = keras.Input(input_shape or (None, None, 3))
        x = keras.layers.Conv2D(4, 3)(inputs)
        return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), **kwargs)

    assert "tiny" in available_backbones()
    model = build_backbone("tiny", model_name="t")
    assert (model.name, model.feature_dim, model.preprocessing) == ("t", 4, "none")
    assert model(images(3, 8)).shape == (3, 4)
    with pytest.raises(ValueError, match="No hosted ImageNet") as info:
        build_backbone("tiny", weights="imagenet")
    assert "Caffe" not in str(info.value)  # the GoogLeNet advice is for inception_v1 only
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("tiny", build_tiny, feature_dim=4, preprocessing="none")
    register_backbone("tiny", build_tiny, feature_dim=5, preprocessing="none", overwrite=True)
    assert get_backbone_spec("tiny").feature_dim == 5
