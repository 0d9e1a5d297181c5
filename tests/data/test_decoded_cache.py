"""The decoded cache (hdml_tf/data/decoded_cache.py) behind ``cache=True``.

Batches must be a function of the seed and the batch number alone: with and without
the cache the same images come in the same order, with the same crop and flip. The
cache stores ``round(resize(image))`` as uint8 while the uncached pipeline crops the
float resize result, so the two agree to within 0.5 on the 0-255 scale (textured
images below make that rounding visible; exact equality is not expected).
"""

import json
import os

import numpy as np
import pytest
from PIL import Image

from hdml_tf import data
from hdml_tf.data import decoded_cache
from tests.data.helpers_data import class_color, make_cub

pytestmark = pytest.mark.filterwarnings("ignore:folder. skipped:hdml_tf.data.base.DataWarning")


def make_textured_folder(root, num_classes=6, per_class=3, seed=0):
    """root/class_k/i.jpg: noisy images of varying size around a class colour."""
    rng = np.random.default_rng(seed)
    for c in range(num_classes):
        os.makedirs(os.path.join(root, f"class_{c}"), exist_ok=True)
        for i in range(per_class):
            w, h = rng.integers(20, 40, size=2)
            pixels = np.clip(np.array(class_color(c + 1)) + rng.normal(0, 25, (h, w, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(
                os.path.join(root, f"class_{c}", f"{i}.jpg"), quality=90)
    return root


@pytest.fixture
def textured(tmp_path, monkeypatch):
    monkeypatch.setenv("HDML_TF_CACHE", str(tmp_path / "cache"))
    root = make_textured_folder(str(tmp_path / "imgs"))
    return data.load_dataset("folder", "all", root=root)


def take(pipeline, n):
    out = []
    for (a, p), (la, lp) in pipeline.take(n):
        out.append((np.concatenate([a.numpy(), p.numpy()]), np.concatenate([la, lp])))
    return out


def pipeline(ds, cache, **kw):
    return data.npair_dataset(ds, 3, seed=7, resize=(24, 20), crop=16, preprocessing="none",
                              cache=cache, **kw)


def test_cached_batches_equal_uncached_up_to_the_rounding(textured):
    uncached = take(pipeline(textured, False), 4)
    for storage in ("memory", "disk"):
        cached = take(pipeline(textured, storage), 4)
        for (x0, y0), (x1, y1) in zip(uncached, cached):
            assert np.array_equal(y0, y1)  # same images, same order
            assert np.abs(x0 - x1).max() <= 0.5 + 1e-4  # same crop and flip
        assert any(np.abs(x0 - x1).max() > 0.1 for (x0, _), (x1, _) in zip(uncached, cached))
    memory, disk = take(pipeline(textured, "memory"), 4), take(pipeline(textured, "disk"), 4)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(memory, disk))


def test_cached_start_batch_skips_the_same_batches(textured):
    full = take(pipeline(textured, "memory"), 5)
    resumed = take(pipeline(textured, "memory", start_batch=3), 2)
    for (x0, y0), (x1, y1) in zip(full[3:], resumed):
        assert np.array_equal(x0, x1) and np.array_equal(y0, y1)


def test_storage_is_chosen_by_estimated_size(monkeypatch):
    # CUB's 5,864 training images at 256x256x3 uint8.
    assert decoded_cache.estimated_bytes(5864, 256) == 5864 * 196608
    assert decoded_cache.estimated_bytes(2, (3, 4)) == 72
    assert decoded_cache.choose_storage(100, 8, memory_budget=100 * 192) == "memory"
    assert decoded_cache.choose_storage(100, 8, memory_budget=100 * 192 - 1) == "disk"
    monkeypatch.setenv("HDML_TF_DECODED_CACHE_BUDGET", "1.5G")
    assert decoded_cache.default_memory_budget() == int(1.5 * (1 << 30))
    assert decoded_cache.choose_storage(5864, 256) == "memory"
    monkeypatch.setenv("HDML_TF_DECODED_CACHE_BUDGET", "1G")
    assert decoded_cache.choose_storage(5864, 256) == "disk"


def test_auto_storage_goes_to_disk_over_the_budget(textured, monkeypatch):
    monkeypatch.setenv("HDML_TF_DECODED_CACHE_BUDGET", "1000")  # bytes
    cached = take(pipeline(textured, True), 2)
    folders = os.listdir(decoded_cache.default_cache_dir())
    assert len(folders) == 1
    files = os.listdir(os.path.join(decoded_cache.default_cache_dir(), folders[0]))
    assert len(files) == len(textured) + 1  # one raw file per image + manifest.json
    memory = take(pipeline(textured, "memory"), 2)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(memory, cached))


def test_disk_cache_is_reused_and_keyed_by_size(textured):
    take(pipeline(textured, "disk"), 1)
    root = decoded_cache.default_cache_dir()
    (folder,) = os.listdir(root)
    one = os.path.join(root, folder, "0000000.u8")
    mtime = os.stat(one).st_mtime_ns
    take(pipeline(textured, "disk"), 1)
    assert os.listdir(root) == [folder] and os.stat(one).st_mtime_ns == mtime
    data.npair_dataset(textured, 3, seed=7, resize=26, crop=16, cache="disk")
    assert len(os.listdir(root)) == 2  # another size, another cache


@pytest.mark.parametrize("storage", ["memory", "disk"])
def test_bad_images_are_reported_and_never_drawn(tmp_path, monkeypatch, storage):
    """As without the cache: warned about by name, in data.skipped, strict raises."""
    monkeypatch.setenv("HDML_TF_CACHE", str(tmp_path / "cache"))
    base = make_cub(str(tmp_path), {c: 4 for c in range(1, 7)}, num_classes=6)
    train = data.load_dataset("cub200", "all", root=str(tmp_path))
    bad = os.path.join(base, "images", "003.Bird_3", "Bird_3_0002_11.jpg")
    assert bad in list(train.paths)
    open(bad, "wb").write(b"\xff\xd8 not a jpeg")
    bad_index = list(train.paths).index(bad)
    for attempt in range(2 if storage == "disk" else 1):  # the disk cache remembers
        train.skipped.clear()
        with pytest.warns(data.CorruptImageWarning, match="Bird_3_0002_11.jpg"):
            ds = data.npair_dataset(train, 5, seed=1, resize=12, crop=10, cache=storage,
                                    preprocessing="none")
        assert list(train.skipped) == [bad], attempt
        for (a, p), (la, lp) in ds.take(8):
            images = np.concatenate([a.numpy(), p.numpy()])
            labels = np.concatenate([la, lp])
            means = images.reshape(len(images), -1, 3).mean(1)
            expected = np.array([class_color(int(train.class_ids[y])) for y in labels])
            assert np.abs(means - expected).max() < 8  # every image next to its label
            assert not np.all(images == 0, axis=(1, 2, 3)).any()  # no black placeholder
    if storage == "disk":
        (folder,) = os.listdir(decoded_cache.default_cache_dir())
        with open(os.path.join(decoded_cache.default_cache_dir(), folder,
                               "manifest.json")) as f:
            assert list(json.load(f)["bad"]) == [str(bad_index)]
    with pytest.raises(Exception, match="Bird_3_0002_11.jpg"):
        data.npair_dataset(train, 5, seed=1, resize=12, crop=10, cache=storage, strict=True)


def test_unknown_storage_and_no_resize_are_errors(textured):
    with pytest.raises(ValueError, match="storage"):
        pipeline(textured, "ram")
    with pytest.raises(ValueError, match="resize"):
        data.npair_dataset(textured, 3, resize=None, crop=None, cache=True)
