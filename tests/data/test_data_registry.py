"""The registry, split helper and the bundled digits dataset."""

import numpy as np
import pytest

from hdml_tf import data


def test_registry_names():
    assert data.available_datasets() == sorted(
        ["cars196", "cub200", "digits", "fashion_mnist", "folder", "glyphs", "inshop",
         "sop"])
    with pytest.raises(ValueError, match="available"):
        data.load_dataset("imagenet", "train")


def test_register_dataset():
    data.register_dataset("tiny", lambda split, root, **kw: data.load_dataset("digits", split))
    try:
        assert data.load_dataset("tiny", "test").name == "digits"
    finally:
        del data._REGISTRY["tiny"]


def test_digits_zero_shot():
    train = data.load_dataset("digits", "train")
    test = data.load_dataset("digits", "test")
    assert len(train) + len(test) == 1797
    assert train.class_ids.tolist() == [0, 1, 2, 3, 4]
    assert test.class_ids.tolist() == [5, 6, 7, 8, 9]
    assert test.images.dtype == np.uint8 and test.images.max() == 255
    assert set(test.labels.tolist()) == {0, 1, 2, 3, 4}


def test_split_classes():
    tr = data.split_classes(range(10), range(10, 20), "train", val_fraction=0.3, val_seed=1)
    va = data.split_classes(range(10), range(10, 20), "val", val_fraction=0.3, val_seed=1)
    assert len(va) == 3 and len(tr) == 7 and not set(tr) & set(va)
    again = data.split_classes(range(10), range(10, 20), "val", val_fraction=0.3, val_seed=1)
    assert np.array_equal(va, again)
    others = [data.split_classes(range(10), range(10, 20), "val", val_fraction=0.3, val_seed=s)
              for s in range(2, 8)]
    assert any(not np.array_equal(va, o) for o in others)  # the seed matters
    assert data.split_classes(range(3), range(3, 5), "all").tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        data.split_classes(range(3), range(3, 5), "bogus")
