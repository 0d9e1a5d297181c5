"""The pipelines' image sizes follow the model and the data; a large upsampling warns."""

import warnings

import numpy as np
import pytest

from hdml_tf.data import pipeline
from hdml_tf.data.base import DataWarning, ImageDataset
from tests.data.helpers_data import write_image


def _pixels(n, size, classes=5):
    rng = np.random.default_rng(0)
    return ImageDataset(name="tiny", split="train", labels=np.arange(n) % classes,
                        class_ids=np.arange(classes), class_names=[str(c) for c in range(classes)],
                        images=rng.integers(0, 255, (n, size, size), dtype=np.uint8))


def _files(tmp_path, size, n=6):
    paths = [write_image(str(tmp_path / f"{i}.jpg"), size=size) for i in range(n)]
    return ImageDataset(name="files", split="train", labels=np.arange(n) % 3,
                        class_ids=np.arange(3), class_names=["a", "b", "c"],
                        paths=np.array(paths))


def _quiet(call):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        return call()


def test_auto_follows_the_images_in_memory():
    """28 x 28 pixels: crop 28 and resize 28 * 256 / 227 = 31.6 -> 32 (the preset's)."""
    assert _quiet(lambda: pipeline.image_sizes(_pixels(10, 28), "tf")) == (32, 28)


def test_auto_follows_a_backbone_built_for_a_fixed_size():
    """A backbone built at 64 px: crop 64, resize 64 * 256 / 227 = 72.2 -> 72, whatever
    the data's size."""
    from hdml_tf.backbones import build_backbone

    backbone = build_backbone("small_cnn", input_shape=(64, 64, 3))
    assert pipeline.image_sizes(_pixels(4, 64), backbone) == (72, 64)


def test_auto_for_files_is_the_spec_and_explicit_sizes_are_kept(tmp_path):
    photos = _files(tmp_path, (500, 375))
    assert _quiet(lambda: pipeline.image_sizes(photos, "caffe")) == (256, 227)
    assert pipeline.image_sizes(photos, "caffe", resize=None, crop=None) == (None, None)
    assert pipeline.image_sizes(photos, "caffe", resize=(300, 200), crop=(280, 180)) == (
        (300, 200), (280, 180))


def test_upsampling_warns_once_naming_the_factor(tmp_path):
    """28 px pixels at the authors' 256: 256 / 28 = 9.1x per side, 84x the pixels; 40 px
    files (their headers read) at 256: 6.4x."""
    with pytest.warns(DataWarning, match=r"28x28 images .* 256x256 \(9\.1x per side, 84x "
                                         r"the pixels.*resize=32, crop=28"):
        pipeline.image_sizes(_pixels(10, 28), "tf", resize=256, crop=227)
    with pytest.warns(DataWarning, match=r"40x40 images .*6\.4x per side"):
        pipeline.image_sizes(_files(tmp_path, (40, 40)), "caffe")
    # Up to 2x is not worth a warning (the authors' own resize enlarges 500 x 375 photos).
    _quiet(lambda: pipeline.image_sizes(_pixels(10, 28), "tf", resize=56, crop=50))


def test_the_minimal_example_adapted_to_fashion_mnist_trains_at_its_own_size():
    """data.npair_dataset(train, num_pairs=5, preprocessing=backbone) on 28 x 28 images
    gives 28 x 28 batches (it gave 227 x 227: 66x the pixels of the images)."""
    from hdml_tf import data
    from hdml_tf.backbones import build_backbone

    backbone = build_backbone("small_cnn", input_shape=(28, 28, 3))
    batches = _quiet(lambda: data.npair_dataset(_pixels(20, 28), num_pairs=5,
                                                preprocessing=backbone))
    (anchors, positives), _ = next(iter(batches))
    assert anchors.shape == (5, 28, 28, 3) and positives.shape == (5, 28, 28, 3)
    images, _ = next(iter(_quiet(lambda: data.eval_dataset(_pixels(20, 28), 8,
                                                           preprocessing=backbone))))
    assert images.shape == (8, 28, 28, 3)
