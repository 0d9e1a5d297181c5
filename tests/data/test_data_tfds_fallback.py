"""The tfds fallback (prepared caltech_birds2011 / cars196) and encoded-bytes images.

No tfds data is prepared on test machines, so a stand-in builder with the same
surface (``as_dataset``, ``info.features['label'].names``, ``data_dir``) is used.
"""

import types

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from hdml_tf import data
from hdml_tf.data import _tfds, cars196, cub
from tests.data.helpers_data import class_color, encode, label_of_color


class FakeBuilder:
    def __init__(self, num_classes, labels_by_split):
        self.data_dir = "/fake/tfds"
        names = [f"name_{i}" for i in range(num_classes)]
        label = types.SimpleNamespace(names=names)
        self.info = types.SimpleNamespace(features={"label": label})
        self._splits = labels_by_split

    def as_dataset(self, split, decoders=None):
        labels = self._splits[split]
        images = [encode(Image.new("RGB", (9, 7), class_color(int(c) + 1)), "JPEG", quality=95)
                  for c in labels]
        return tf.data.Dataset.from_tensor_slices(
            {"image": tf.constant(images), "label": tf.constant(labels, tf.int64)})


@pytest.fixture
def fake_cub(monkeypatch):
    # tfds labels are 0-based: 0..99 are CUB classes 1..100
    builder = FakeBuilder(200, {"train": [0, 0, 5, 5, 150], "test": [5, 120, 120, 199]})
    monkeypatch.setattr(_tfds, "prepared_builder", lambda name, data_dir=None: builder)
    return builder


def test_cub_falls_back_to_prepared_tfds(fake_cub, tmp_path):
    train = cub.load("train", root=str(tmp_path), check_counts=False)
    test = cub.load("test", root=str(tmp_path), check_counts=False)
    assert train.encoded is not None and train.paths is None
    assert train.class_ids.tolist() == [1, 6] and len(train) == 5
    assert test.class_ids.tolist() == [121, 151, 200] and test.class_names[0] == "name_120"


def test_encoded_images_through_the_pipelines(fake_cub, tmp_path):
    train = cub.load("train", root=str(tmp_path), check_counts=False)
    ds = data.npair_dataset(train, 2, seed=0, resize=10, crop=8, preprocessing="none")
    (a, p), (la, lp) = next(iter(ds))
    assert a.shape == (2, 8, 8, 3) and np.array_equal(la, lp)
    assert np.array_equal(label_of_color(a.numpy(), train.class_ids), la)
    ev = list(data.eval_dataset(train, 3, resize=10, crop=8, preprocessing="none"))
    assert np.array_equal(np.concatenate([y for _, y in ev]), train.labels)


def test_cars_error_when_tfds_not_prepared(monkeypatch, tmp_path):
    monkeypatch.setattr(_tfds, "prepared_builder", lambda name, data_dir=None: None)
    with pytest.raises(data.DatasetNotFoundError, match="tfds 'cars196'"):
        cars196.load("test", root=str(tmp_path))
