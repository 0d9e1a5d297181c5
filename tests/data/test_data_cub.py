"""CUB-200-2011 loader on a generated copy of the official archive layout."""

import os

import numpy as np
import pytest

from hdml_tf import data
from hdml_tf.data import base, cub
from tests.data.helpers_data import make_cub

pytestmark = pytest.mark.filterwarnings("ignore::hdml_tf.data.base.DataWarning")

COUNTS = {1: 3, 2: 2, 50: 4, 100: 2, 101: 3, 150: 2, 200: 5}


@pytest.fixture
def cub_root(tmp_path):
    make_cub(str(tmp_path), COUNTS)
    return str(tmp_path)


def test_zero_shot_split_counts_and_labels(cub_root):
    train = data.load_dataset("cub200", "train", root=cub_root)
    test = data.load_dataset("cub200", "test", root=cub_root)
    assert len(train) == 3 + 2 + 4 + 2 and len(test) == 3 + 2 + 5
    assert train.class_ids.tolist() == [1, 2, 50, 100]
    assert test.class_ids.tolist() == [101, 150, 200]
    # labels are contiguous within the split and map back to the original ids
    assert sorted(set(train.labels.tolist())) == [0, 1, 2, 3]
    assert sorted(set(test.labels.tolist())) == [0, 1, 2]
    assert test.labels.dtype == np.int32
    assert test.class_names == ["101.Bird_101", "150.Bird_150", "200.Bird_200"]
    for path, orig in zip(test.paths, test.original_labels):
        assert f"/{orig:03d}.Bird_{orig}/" in path and os.path.isfile(path)
    assert train.name == "cub200" and train.split == "train"


def test_root_may_be_the_cub_directory_itself(cub_root):
    a = data.load_dataset("cub200", "test", root=cub_root)
    b = data.load_dataset("cub200", "test", root=os.path.join(cub_root, "CUB_200_2011"))
    assert list(a.paths) == list(b.paths)


def test_validation_split_is_held_out_from_training_classes(cub_root):
    tr = data.load_dataset("cub200", "train", root=cub_root, val_fraction=0.25, val_seed=3)
    va = data.load_dataset("cub200", "val", root=cub_root, val_fraction=0.25, val_seed=3)
    assert set(tr.class_ids) | set(va.class_ids) == {1, 2, 50, 100}
    assert not set(tr.class_ids) & set(va.class_ids)
    assert len(tr) + len(va) == 11
    with pytest.raises(ValueError, match="val_fraction"):
        data.load_dataset("cub200", "val", root=cub_root)


def test_wrong_root_names_the_expected_metadata_file(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as err:
        cub.load("train", root=str(tmp_path / "nowhere"), use_tfds=False)
    assert os.path.join("nowhere", "CUB_200_2011", "images.txt") in str(err.value)


def test_missing_metadata_file_is_named(cub_root):
    os.remove(os.path.join(cub_root, "CUB_200_2011", "classes.txt"))
    with pytest.raises(data.DatasetNotFoundError, match="classes.txt"):
        data.load_dataset("cub200", "train", root=cub_root)


def test_missing_listed_image_is_named(cub_root):
    victim = data.load_dataset("cub200", "test", root=cub_root).paths[0]
    os.remove(victim)
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load_dataset("cub200", "test", root=cub_root)
    assert victim in str(err.value) and "images.txt" in str(err.value)


def test_count_check_against_published_numbers(cub_root):
    # The fixture lists all 200 classes, like the real archive, so the default check
    # runs and reports the mismatch as a warning ...
    with pytest.warns(base.DataWarning, match="5924"):
        data.load_dataset("cub200", "test", root=cub_root)
    # ... strict checking turns it into an error, and it can be switched off.
    with pytest.raises(ValueError, match="5864"):
        data.load_dataset("cub200", "train", root=cub_root, check_counts=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.load_dataset("cub200", "train", root=cub_root, check_counts=False)


def test_no_count_warning_for_a_partial_class_list(tmp_path):
    make_cub(str(tmp_path), {1: 2, 101: 2}, num_classes=150)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(data.load_dataset("cub200", "test", root=str(tmp_path))) == 2
