"""Stanford Online Products loader on generated Ebay_train.txt / Ebay_test.txt."""

import os

import pytest

from hdml_tf import data
from hdml_tf.data import sop
from tests.data.helpers_data import make_sop

TRAIN = {1: ("bicycle_final", 2), 2: ("bicycle_final", 3), 3: ("chair_final", 1)}
TEST = {4: ("chair_final", 2), 5: ("mug_final", 4)}


@pytest.fixture
def sop_root(tmp_path):
    make_sop(str(tmp_path), TRAIN, TEST)
    return str(tmp_path)


def test_split_follows_the_list_files(sop_root):
    train = data.load_dataset("sop", "train", root=sop_root)
    test = data.load_dataset("sop", "test", root=sop_root)
    assert len(train) == 6 and len(test) == 6
    assert train.class_ids.tolist() == [1, 2, 3] and test.class_ids.tolist() == [4, 5]
    assert test.labels.tolist() == [0, 0, 1, 1, 1, 1]
    assert test.class_names == ["chair_final/4", "mug_final/5"]
    expected = os.path.join("Stanford_Online_Products", "chair_final", "100004_0.JPG")
    assert test.paths[0].endswith(expected)
    assert len(data.load_dataset("sop", "all", root=sop_root)) == 12


def test_list_format_is_checked(sop_root):
    path = os.path.join(sop_root, "Stanford_Online_Products", "Ebay_test.txt")
    lines = open(path).read().splitlines()
    assert lines[0] == "image_id class_id super_class_id path"
    with open(path, "w") as f:
        f.write("\n".join(lines[1:]) + "\n")  # header removed
    with pytest.raises(ValueError, match="header"):
        data.load_dataset("sop", "test", root=sop_root)


def test_class_overlap_between_lists_is_an_error(tmp_path):
    make_sop(str(tmp_path), TRAIN, {2: ("bicycle_final", 2)})
    with pytest.raises(ValueError, match="both"):
        data.load_dataset("sop", "test", root=str(tmp_path))


def test_missing_lists_name_the_expected_file(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match="Ebay_train.txt"):
        sop.load("train", root=str(tmp_path))


def test_count_check(sop_root):
    with pytest.raises(ValueError, match="60502"):
        data.load_dataset("sop", "test", root=sop_root, check_counts=True)
