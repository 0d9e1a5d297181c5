"""Image-folder datasets: layout, class splits, and bad files in the pipelines."""

import os

import numpy as np
import pytest

from hdml_tf import data
from tests.data.helpers_data import class_color, label_of_color, make_folder, write_image

# The fixture holds a notes.txt on purpose; the warning about it is tested once.
pytestmark = pytest.mark.filterwarnings("ignore:folder. skipped:hdml_tf.data.base.DataWarning")

CLASSES = {"apple": (1, 3), "banana": (2, 2), "cherry": (3, 4), "dates": (4, 2),
           "elder berry": (5, 3)}


@pytest.fixture
def folder_root(tmp_path):
    root = make_folder(str(tmp_path / "imgs"), CLASSES)
    # things that are not images of the dataset: ignored by extension / hidden
    open(os.path.join(root, "apple", "notes.txt"), "w").write("hello")
    write_image(os.path.join(root, "apple", ".hidden.jpg"))
    write_image(os.path.join(root, "banana", "x.PNG"), class_color(2))  # upper-case extension
    return root


def test_classes_are_sub_directories_and_split_in_halves(folder_root):
    with pytest.warns(data.DataWarning, match="notes.txt"):
        all_ = data.load_dataset("folder", "all", root=folder_root)
    assert list(all_.skipped) == [os.path.join(folder_root, "apple", "notes.txt")]
    assert all_.class_names == sorted(CLASSES)
    assert len(all_) == 3 + 3 + 4 + 2 + 3
    train = data.load_dataset("folder", "train", root=folder_root)
    test = data.load_dataset("folder", "test", root=folder_root)
    assert train.class_names == ["apple", "banana", "cherry"]
    assert test.class_names == ["dates", "elder berry"]
    assert test.labels.tolist() == [0, 0, 1, 1, 1]
    assert not any(p.endswith((".txt", ".hidden.jpg")) for p in all_.paths)


def test_split_file(folder_root, tmp_path):
    split_file = tmp_path / "split.txt"
    split_file.write_text("# comment\ntrain apple\ntest banana\ntrain cherry\nval dates\n"
                          "test elder berry\n")
    kw = dict(root=folder_root, split_file=str(split_file))
    assert data.load_dataset("folder", "train", **kw).class_names == ["apple", "cherry"]
    assert data.load_dataset("folder", "val", **kw).class_names == ["dates"]
    assert data.load_dataset("folder", "test", **kw).class_names == ["banana", "elder berry"]
    split_file.write_text("train apple\n")
    with pytest.raises(ValueError, match="not in the file"):
        data.load_dataset("folder", "train", **kw)


def test_missing_root(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match="nothere"):
        data.load_dataset("folder", "train", root=str(tmp_path / "nothere"))


def _corrupt(root):
    bad = os.path.join(root, "cherry", "broken.jpg")
    with open(bad, "wb") as f:
        f.write(b"this is not a jpeg")
    good = open(os.path.join(root, "apple", "0.jpg"), "rb").read()
    trunc = os.path.join(root, "apple", "truncated.jpg")
    with open(trunc, "wb") as f:
        f.write(good[: len(good) // 2])
    return bad, trunc


def test_corrupt_files_are_skipped_counted_and_named(folder_root):
    bad, trunc = _corrupt(folder_root)
    ds_data = data.load_dataset("folder", "all", root=folder_root)
    with pytest.warns(data.CorruptImageWarning) as record:  # found before the first batch
        pipeline = data.npair_dataset(ds_data, 4, seed=0, resize=12, crop=10,
                                      preprocessing="none")
    named = " ".join(str(w.message) for w in record)
    assert bad in named and trunc in named
    notes = os.path.join(folder_root, "apple", "notes.txt")  # skipped at load time
    assert set(ds_data.skipped) == {bad, trunc, notes}
    batches = list(pipeline.take(25))
    assert len(batches) == 25  # the epoch goes on
    for (a, p), (la, lp) in batches:  # every image next to its own label
        assert np.array_equal(la, lp)
        got = label_of_color(np.concatenate([a.numpy(), p.numpy()]), ds_data.class_ids + 1)
        assert np.array_equal(got, np.concatenate([la, lp]))


def test_strict_mode_raises_naming_the_file(folder_root):
    bad, _ = _corrupt(folder_root)
    os.remove(os.path.join(folder_root, "apple", "truncated.jpg"))
    ds_data = data.load_dataset("folder", "all", root=folder_root)
    # Before the first batch: one line naming the file and the reason.
    with pytest.raises(ValueError, match="broken.jpg") as error:
        data.npair_dataset(ds_data, 5, seed=0, resize=12, crop=10, strict=True)
    assert "\n" not in str(error.value)


def test_eval_skips_bad_files_even_the_last_one(folder_root):
    bad = os.path.join(folder_root, "elder berry", "9.jpg")  # sorts last
    open(bad, "wb").write(b"\x89PNG not really")
    ds_data = data.load_dataset("folder", "all", root=folder_root)
    assert ds_data.paths[-1] == bad
    with pytest.warns(data.CorruptImageWarning, match="9.jpg"):
        batches = list(data.eval_dataset(ds_data, 4, resize=12, crop=10, preprocessing="none"))
    labels = np.concatenate([y.numpy() for _, y in batches])
    assert np.array_equal(labels, ds_data.labels[:-1])
    images = np.concatenate([x.numpy() for x, _ in batches])
    assert np.array_equal(label_of_color(images, ds_data.class_ids + 1), labels)
    with pytest.raises(Exception, match="9.jpg"):
        list(data.eval_dataset(ds_data, 4, resize=12, crop=10, strict=True))


def test_cache_finds_bad_files_up_front(folder_root):
    bad, trunc = _corrupt(folder_root)
    ds_data = data.load_dataset("folder", "all", root=folder_root)
    with pytest.warns(data.CorruptImageWarning):
        pipeline = data.npair_dataset(ds_data, 4, seed=1, resize=12, crop=10, cache=True,
                                      preprocessing="none")
    notes = os.path.join(folder_root, "apple", "notes.txt")  # skipped at load time
    assert set(ds_data.skipped) == {bad, trunc, notes}
    first = [x[1][0].numpy() for x in pipeline.take(6)]
    again = [x[1][0].numpy() for x in pipeline.take(6)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
