"""Decoding, transforms and normalisation (hdml_tf.data.preprocess)."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from hdml_tf.data import preprocess
from tests.data.helpers_data import encode

RGB = (np.random.RandomState(0).rand(12, 16, 3) * 255).astype(np.uint8)


def _decode(b):
    return preprocess.decode_image(tf.constant(b)).numpy()


def test_jpeg_rgb_and_grayscale():
    import io

    jpeg = encode(Image.fromarray(RGB), "JPEG", quality=95)
    out = _decode(jpeg)
    assert out.shape == (12, 16, 3) and out.dtype == np.uint8
    # the same pixels as PIL's decoder
    ref = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(int)
    diff = np.abs(out.astype(int) - ref)  # chroma upsampling differs slightly
    assert diff.mean() < 2 and diff.max() <= 10
    gray = _decode(encode(Image.fromarray(RGB).convert("L"), "JPEG"))
    assert gray.shape == (12, 16, 3)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])


def test_cmyk_jpeg_becomes_rgb():
    # CMYK (0, 255, 255, 0) is pure red.
    out = _decode(encode(Image.new("CMYK", (8, 6), (0, 255, 255, 0)), "JPEG", quality=100))
    assert out.shape == (6, 8, 3)
    assert np.allclose(out.reshape(-1, 3).mean(0), [255, 0, 0], atol=6)


def test_png_alpha_dropped_and_palette():
    rgba = np.concatenate([RGB, np.full((12, 16, 1), 7, np.uint8)], axis=-1)
    assert np.array_equal(_decode(encode(Image.fromarray(rgba, "RGBA"), "PNG")), RGB)
    pal = Image.fromarray(RGB).convert("P")
    assert np.array_equal(_decode(encode(pal, "PNG")), np.asarray(pal.convert("RGB")))


def test_gif_first_frame_and_bmp():
    frames = [Image.new("RGB", (5, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    out = _decode(encode(frames[0], "GIF", save_all=True, append_images=frames[1:]))
    assert out.shape == (4, 5, 3) and np.array_equal(out[0, 0], [255, 0, 0])
    assert np.array_equal(_decode(encode(Image.fromarray(RGB), "BMP")), RGB)


def test_non_image_bytes_raise_a_named_tf_error():
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
        _decode(b"definitely not an image")
    jpeg = encode(Image.fromarray(RGB), "JPEG")
    with pytest.raises(tf.errors.InvalidArgumentError, match="JPEG"):
        _decode(jpeg[: len(jpeg) // 2])


def test_graph_safe_in_a_serving_signature(tmp_path):
    class Serve(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def __call__(self, blobs):
            def one(b):
                image = preprocess.eval_transform(preprocess.decode_image(b), resize=10, crop=8)
                return preprocess.normalize(image, "caffe")

            return tf.map_fn(one, blobs, fn_output_signature=tf.TensorSpec([8, 8, 3], tf.float32))

    blobs = tf.constant([encode(Image.fromarray(RGB), "PNG"),
                         encode(Image.new("RGB", (20, 30), (10, 20, 30)), "JPEG", quality=100)])
    tf.saved_model.save(Serve(), str(tmp_path / "m"))
    out = tf.saved_model.load(str(tmp_path / "m"))(blobs).numpy()
    assert out.shape == (2, 8, 8, 3)
    # caffe: BGR order minus (104, 117, 123): pixel (R, G, B) = (10, 20, 30)
    assert np.allclose(out[1].reshape(-1, 3).mean(0), [30 - 104, 20 - 117, 10 - 123], atol=3)


def test_normalize_golden_values():
    px = tf.constant([[[10.0, 20.0, 30.0]]])
    assert np.allclose(preprocess.normalize(px, "caffe"), [[[30 - 104, 20 - 117, 10 - 123]]])
    keras_caffe = preprocess.normalize(px, "caffe_keras")
    assert np.allclose(keras_caffe, [[[30 - 103.939, 20 - 116.779, 10 - 123.68]]])
    assert np.allclose(preprocess.normalize(tf.constant([0.0, 127.5, 255.0]), "tf"), [-1, 0, 1])
    torch = preprocess.normalize(tf.constant([[255.0, 0.0, 127.5]]), "torch").numpy()
    expect = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0.5 - 0.406) / 0.225]
    assert np.allclose(torch, [expect], atol=1e-5)
    assert np.array_equal(preprocess.normalize(px, "none"), px)
    assert np.array_equal(preprocess.normalize(px, "raw"), px)
    with pytest.raises(ValueError, match="caffe"):
        preprocess.normalize(px, "imagenet")


def test_preprocessing_mode_lookup():
    class Backbone:
        preprocessing = "caffe"

    assert preprocess.preprocessing_mode(Backbone()) == "caffe"
    assert preprocess.preprocessing_mode("inception_v1") == "caffe"
    assert preprocess.preprocessing_mode("resnet50") == "caffe"
    assert preprocess.preprocessing_mode("efficientnet_b0") == "none"
    assert preprocess.preprocessing_mode("efficientnet_v2_s") == "none"
    assert preprocess.preprocessing_mode("convnext_tiny") == "none"
    assert preprocess.preprocessing_mode("tf") == "tf"
    with pytest.raises(ValueError, match="no preprocessing"):
        preprocess.preprocessing_mode("lenet")


def test_eval_transform_is_a_centre_crop():
    image = tf.reshape(tf.range(6 * 6 * 3, dtype=tf.float32), (6, 6, 3))
    out = preprocess.eval_transform(image, resize=None, crop=4)
    assert np.array_equal(out, image[1:5, 1:5])
    out = preprocess.eval_transform(tf.zeros((30, 40, 3), tf.uint8), resize=256, crop=227)
    assert out.shape == (227, 227, 3) and out.dtype == tf.float32


def test_train_transform_crop_flip_and_seed():
    image = tf.reshape(tf.range(8 * 8, dtype=tf.float32), (8, 8, 1))
    seen_flip, seen_plain, offsets = False, False, set()
    for i in range(30):
        seed = tf.constant([7, i])
        out = preprocess.train_transform(image, resize=None, crop=5, seed=seed).numpy()
        assert out.shape == (5, 5, 3)
        again = preprocess.train_transform(image, resize=None, crop=5, seed=tf.constant([7, i]))
        assert np.array_equal(out, again)  # stateless: same seed, same crop and flip
        row = out[0, :, 0]
        if row[0] < row[-1]:
            seen_plain = True
        else:
            seen_flip = True
        offsets.add(int(out[..., 0].min()))
    assert seen_flip and seen_plain and len(offsets) > 3
    flat = preprocess.train_transform(image, resize=None, crop=None, flip=False)
    assert np.array_equal(flat[..., 0], image[..., 0])
    gray2d = preprocess.train_transform(tf.zeros((28, 28), tf.uint8), resize=32, crop=28)
    assert gray2d.shape == (28, 28, 3)
