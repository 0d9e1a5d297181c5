"""Samplers and training/evaluation pipelines: structure, coverage, determinism."""

import itertools
import warnings

import numpy as np
import pytest
import tensorflow as tf

from hdml_tf import data
from tests.data.helpers_data import label_of_color, make_folder

# The fixture folder has a one-image class on purpose; its warning is tested once.
pytestmark = pytest.mark.filterwarnings("ignore::hdml_tf.data.base.DataWarning")

# 6 classes; "f" has a single image and must be left out of training batches.
LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 4, 4, 4, 5])


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_npair_sampler_structure_and_coverage():
    with pytest.warns(data.DataWarning, match=r"1 class\(es\).*\['5'\]") as rec:
        sampler = data.NPairSampler(LABELS, num_pairs=3, seed=0)
    assert len(rec) == 1  # one warning listing the left-out classes
    seen_classes, seen_images = set(), set()
    for a, p in _take(sampler, 40):
        assert a.shape == p.shape == (3,)
        assert len(set(LABELS[a])) == 3  # distinct anchor classes
        assert np.array_equal(LABELS[a], LABELS[p]) and not np.any(a == p)
        seen_classes.update(LABELS[a].tolist())
        seen_images.update(a.tolist() + p.tolist())
    assert seen_classes == {0, 1, 2, 3, 4}
    assert seen_images == set(range(14))  # every image of an eligible class gets used


def test_npair_sampler_is_seeded():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s0, s0b, s1 = (data.NPairSampler(LABELS, 3, seed=s) for s in (0, 0, 1))
    a = np.concatenate([np.concatenate(x) for x in _take(s0, 10)])
    assert np.array_equal(a, np.concatenate([np.concatenate(x) for x in _take(s0b, 10)]))
    # re-iterable: a second pass over the same sampler restarts the same stream
    assert np.array_equal(a, np.concatenate([np.concatenate(x) for x in _take(s0, 10)]))
    assert not np.array_equal(a, np.concatenate([np.concatenate(x) for x in _take(s1, 10)]))


def test_npair_needs_enough_classes():
    with pytest.raises(ValueError, match="num_pairs"):
        data.NPairSampler(np.array([0, 0, 1, 1]), num_pairs=3)


def test_triplet_sampler():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sampler = data.TripletSampler(LABELS, num_triplets=4, seed=3)
    for a, p, n in _take(sampler, 30):
        assert len(set(LABELS[a])) == 4
        assert np.array_equal(LABELS[a], LABELS[p]) and not np.any(a == p)
        assert np.all(LABELS[n] != LABELS[a]) and 5 not in LABELS[n]


def test_batch_index_and_excluded_images():
    """``batch(i)`` is the stream's batch i; excluded images are never drawn, and a
    class left with one drawable image is left out, by name."""
    sampler = data.NPairSampler(LABELS, 3, seed=0)
    stream = _take(sampler, 6)
    for i in (0, 5):
        assert np.array_equal(np.concatenate(sampler.batch(i)), np.concatenate(stream[i]))
    with pytest.warns(data.DataWarning, match=r"3 class\(es\) with fewer than 2 decodable.*"
                                              r"\['1', '3', '5'\]"):
        without = data.NPairSampler(LABELS, 3, seed=0, exclude={3, 9})
    assert without.classes.tolist() == [0, 2, 4]
    for a, p in _take(without, 20):
        assert not {3, 9} & set(a.tolist() + p.tolist())
    with pytest.raises(ValueError, match="num_pairs=4"):
        data.NPairSampler(LABELS, 4, seed=0, exclude={3, 9})


def test_m_per_class_sampler():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sampler = data.MPerClassSampler(LABELS, classes_per_batch=2, images_per_class=3, seed=0)
    for idx in _take(sampler, 20):
        groups = LABELS[idx].reshape(2, 3)
        assert np.all(groups == groups[:, :1]) and groups[0, 0] != groups[1, 0]


@pytest.fixture(scope="module")
def color_folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("colors"))
    make_folder(root, {f"c{i}": (i + 1, 2 + i % 3) for i in range(8)})
    make_folder(root, {"lonely": (9, 1)})  # sorts last: colour id = position + 1
    with pytest.warns(data.DataWarning):  # 'lonely' is left out, once, by name
        data.npair_dataset(data.load_dataset("folder", "all", root=root), 2)
    return data.load_dataset("folder", "all", root=root)


def _labels_from_pixels(images, ds_data):
    # the fixture's colour ids are the class position + 1
    return label_of_color(images, np.arange(ds_data.num_classes) + 1)


def test_npair_pipeline_structure(color_folder):
    ds = data.npair_dataset(color_folder, 4, seed=0, resize=12, crop=10, preprocessing="none")
    spec = ds.element_spec
    assert spec[0][0].shape == (4, 10, 10, 3) and spec[0][0].dtype == tf.float32
    assert spec[1][0].shape == (4,) and spec[1][0].dtype == tf.int32
    lonely = color_folder.class_names.index("lonely")
    for (a, p), (la, lp) in ds.take(8):
        la, lp = la.numpy(), lp.numpy()
        assert len(set(la)) == 4 and np.array_equal(la, lp) and lonely not in la
        assert np.array_equal(_labels_from_pixels(a.numpy(), color_folder), la)
        assert np.array_equal(_labels_from_pixels(p.numpy(), color_folder), lp)


def test_triplet_and_m_per_class_pipelines(color_folder):
    ds = data.triplet_dataset(color_folder, 3, seed=0, resize=12, crop=10, preprocessing="none")
    for (a, p, n), (la, lp, ln) in ds.take(5):
        assert a.shape == p.shape == n.shape == (3, 10, 10, 3)
        assert np.array_equal(la, lp) and np.all(ln.numpy() != la.numpy())
        assert np.array_equal(_labels_from_pixels(n.numpy(), color_folder), ln)
    ds = data.m_per_class_dataset(color_folder, 2, 3, seed=0, resize=12, crop=10,
                                  preprocessing="none")
    images, labels = next(iter(ds))
    assert images.shape == (6, 10, 10, 3)
    assert np.array_equal(_labels_from_pixels(images.numpy(), color_folder), labels)
    assert np.all(labels.numpy().reshape(2, 3) == labels.numpy().reshape(2, 3)[:, :1])


def test_pipeline_is_reproducible_pixel_for_pixel(color_folder):
    def run(seed):
        ds = data.npair_dataset(color_folder, 3, seed=seed, resize=14, crop=9)
        return [(a.numpy(), p.numpy(), la.numpy()) for (a, p), (la, _) in ds.take(4)]

    first, second, other = run(5), run(5), run(6)
    for x, y in zip(first, second):
        for u, v in zip(x, y):
            assert np.array_equal(u, v)
    assert any(not np.array_equal(x[2], y[2]) for x, y in zip(first, other))


def test_caffe_preprocessing_applied(color_folder):
    raw = data.npair_dataset(color_folder, 2, seed=0, resize=12, crop=10, preprocessing="none")
    caffe = data.npair_dataset(color_folder, 2, seed=0, resize=12, crop=10, preprocessing="caffe")
    (r, _), _ = next(iter(raw))
    (c, _), _ = next(iter(caffe))
    assert np.allclose(c.numpy(), r.numpy()[..., ::-1] - np.array([104, 117, 123], np.float32))

    class Backbone:
        preprocessing = "tf"

    (t, _), _ = next(iter(data.npair_dataset(color_folder, 2, seed=0, resize=12, crop=10,
                                             preprocessing=Backbone())))
    assert np.allclose(t.numpy(), r.numpy() / 127.5 - 1, atol=1e-5)


def test_eval_dataset_order_and_labels(color_folder):
    batches = list(data.eval_dataset(color_folder, 5, resize=12, crop=10, preprocessing="none"))
    labels = np.concatenate([y.numpy() for _, y in batches])
    assert np.array_equal(labels, color_folder.labels)
    images = np.concatenate([x.numpy() for x, _ in batches])
    assert images.shape == (len(color_folder), 10, 10, 3)
    assert np.array_equal(_labels_from_pixels(images, color_folder), labels)


def test_in_memory_digits_pipeline():
    train = data.load_dataset("digits", "train")
    ds = data.npair_dataset(train, 5, seed=0, resize=None, crop=None, preprocessing="none")
    (a, p), (la, lp) = next(iter(ds))
    assert a.shape == (5, 8, 8, 3) and sorted(la.numpy().tolist()) == [0, 1, 2, 3, 4]
    # the first anchor's pixels are one of the training images of its class
    cls = train.images[train.labels == la.numpy()[0]].astype(np.float32)
    assert np.any(np.all(cls == a.numpy()[0, ..., 0], axis=(1, 2)))


def test_image_over_the_pixel_limit_is_skipped_without_decoding():
    """A 20,000 x 20,000 PNG (400 MP > TRAIN_MAX_PIXELS) takes the corrupt-image path:
    named in a CorruptImageWarning and data.skipped with its declared size, and never
    decoded (decoding it would need 1.2 GB)."""
    from tests.data.helpers_data import class_color, encode
    from tests.test_serving_limits import zero_png
    from PIL import Image

    labels = np.array([0, 0, 0, 1, 1, 1])
    encoded = [encode(Image.new("RGB", (10, 8), class_color(c)), "PNG") for c in labels]
    encoded[4] = zero_png(20_000, 20_000)
    assert 20_000 * 20_000 > data.preprocess.TRAIN_MAX_PIXELS

    def dataset():
        return data.ImageDataset(name="huge", split="train", labels=labels,
                                 class_ids=np.array([0, 1]), class_names=["a", "b"],
                                 encoded=np.array(encoded, dtype=object))

    evaluation = dataset()
    with pytest.warns(data.CorruptImageWarning, match=r"huge:train\[4\].*20000x20000"):
        batches = list(data.eval_dataset(evaluation, 4, resize=12, crop=10,
                                         preprocessing="none"))
    assert np.concatenate([y.numpy() for _, y in batches]).tolist() == [0, 0, 0, 1, 1]
    assert list(evaluation.skipped) == ["huge:train[4]"]
    assert "over the limit" in evaluation.skipped["huge:train[4]"]

    training = dataset()
    with pytest.warns(data.CorruptImageWarning, match=r"huge:train\[4\]"):
        for (a, p), (la, lp) in data.npair_dataset(training, 2, seed=0, resize=12, crop=10,
                                                   preprocessing="none").take(6):
            assert a.shape == (2, 10, 10, 3)
    assert list(training.skipped) == ["huge:train[4]"]
    with pytest.raises(Exception, match=r"huge:train\[4\].*20000x20000"):
        for _ in data.eval_dataset(dataset(), 4, resize=12, crop=10, strict=True):
            pass
