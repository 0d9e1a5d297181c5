"""Cars196 loader on a generated cars_annos.mat (scipy.io.savemat) + car_ims/."""

import os

import numpy as np
import pytest

from hdml_tf import data
from hdml_tf.data import cars196
from tests.data.helpers_data import make_cars

COUNTS = {1: 2, 7: 3, 98: 2, 99: 4, 150: 2, 196: 3}


@pytest.fixture
def cars_root(tmp_path):
    return make_cars(str(tmp_path / "cars"), COUNTS)


def test_annotations_are_parsed_with_the_real_fields(cars_root):
    rel, cls, boxes, names = cars196.read_annotations(os.path.join(cars_root, "cars_annos.mat"))
    assert rel[0] == "car_ims/000001.jpg" and len(rel) == sum(COUNTS.values())
    assert cls.tolist() == [c for c in sorted(COUNTS) for _ in range(COUNTS[c])]
    assert boxes[0].tolist() == [1, 2, 9, 7]
    assert len(names) == 196 and names[0] == "Make Model 1 2012"


def test_zero_shot_split(cars_root):
    with pytest.warns(data.DataWarning):  # 196 classes listed: the count check reports
        train = data.load_dataset("cars196", "train", root=cars_root)
        test = data.load_dataset("cars196", "test", root=cars_root)
    assert train.class_ids.tolist() == [1, 7, 98]
    assert test.class_ids.tolist() == [99, 150, 196]
    assert len(train) == 7 and len(test) == 9
    assert test.class_names[0] == "Make Model 99 2012"
    assert np.array_equal(np.bincount(test.labels), [4, 2, 3])
    assert all(p.startswith(os.path.join(cars_root, "car_ims")) for p in test.paths)


def test_count_check_raises_when_asked(cars_root):
    with pytest.raises(ValueError, match="8131"):
        data.load_dataset("cars196", "test", root=cars_root, check_counts=True)


def test_missing_mat_error_names_path_and_dead_tfds_url(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as err:
        cars196.load("train", root=str(tmp_path), use_tfds=False)
    msg = str(err.value)
    assert os.path.join(str(tmp_path), "cars_annos.mat") in msg and "dead" in msg


def test_missing_listed_image(cars_root):
    os.remove(os.path.join(cars_root, "car_ims", "000001.jpg"))
    with pytest.raises(data.DatasetNotFoundError, match="000001.jpg"):
        data.load_dataset("cars196", "train", root=cars_root, check_counts=False)


@pytest.mark.parametrize("layout", ["cell_of_structs", "struct_of_arrays"])
def test_other_struct_layouts_written_by_savemat(tmp_path, layout):
    """A list of dicts (cell array of structs) and one struct of N-vectors both parse."""
    import scipy.io

    rel = ["car_ims/000001.jpg", "car_ims/000002.jpg", "car_ims/000003.jpg"]
    classes = [3, 3, 120]
    if layout == "cell_of_structs":
        ann = [{"relative_im_path": r, "class": c, "test": 0} for r, c in zip(rel, classes)]
    else:
        ann = {"relative_im_path": np.array(rel, dtype=object), "class": np.array(classes)}
    path = str(tmp_path / "cars_annos.mat")
    scipy.io.savemat(path, {"annotations": ann, "class_names": ["Audi A4", "BMW M3"]})
    got_rel, got_cls, boxes, names = cars196.read_annotations(path)
    assert got_rel == rel and got_cls.tolist() == classes
    assert boxes.shape == (3, 4) and np.all(boxes == -1)
    assert names == ["Audi A4", "BMW M3"]
