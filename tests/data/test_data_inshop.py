"""In-Shop Clothes Retrieval loader on a generated list_eval_partition.txt."""

import os

import pytest

from hdml_tf import data
from hdml_tf.data import inshop
from tests.data.helpers_data import make_inshop

ITEMS = {
    2: ["train", "train", "train"],
    5: ["train", "train"],
    9: ["query", "gallery", "gallery"],
    12: ["query", "query", "gallery"],
    40: ["gallery", "gallery"],  # a test item with gallery images only
}


@pytest.fixture
def inshop_root(tmp_path):
    return make_inshop(str(tmp_path), ITEMS)


def test_partition_file_format(inshop_root):
    path = os.path.join(inshop_root, "Eval", "list_eval_partition.txt")
    first, header = open(path).read().splitlines()[:2]
    assert first == "13" and header == "image_name item_id evaluation_status"
    names, items, status = inshop.read_partition(path)
    assert names[0] == "img/WOMEN/Dresses/id_00000002/01_1_front.jpg" and items[0] == 2
    assert list(status).count("query") == 3


def test_query_and_gallery_share_one_labelling(inshop_root):
    q = data.load_dataset("inshop", "query", root=inshop_root)
    g = data.load_dataset("inshop", "gallery", root=inshop_root)
    assert len(q) == 3 and len(g) == 5
    assert q.class_ids.tolist() == g.class_ids.tolist() == [9, 12, 40]
    assert q.labels.tolist() == [0, 1, 1]
    assert g.labels.tolist() == [0, 0, 1, 2, 2]
    assert g.class_names[2] == "id_00000040"
    train = data.load_dataset("inshop", "train", root=inshop_root)
    assert len(train) == 5 and train.class_ids.tolist() == [2, 5]
    assert all(os.path.isfile(p) for p in train.paths)


def test_bad_count_line_and_missing_file(inshop_root, tmp_path):
    path = os.path.join(inshop_root, "Eval", "list_eval_partition.txt")
    text = open(path).read().splitlines()
    with open(path, "w") as f:
        f.write("\n".join(["99"] + text[1:]) + "\n")
    with pytest.raises(ValueError, match="declares 99"):
        data.load_dataset("inshop", "train", root=inshop_root)
    with pytest.raises(data.DatasetNotFoundError, match="list_eval_partition.txt"):
        data.load_dataset("inshop", "train", root=str(tmp_path / "empty"))


def test_flat_copy_and_benchmark_directory_layouts(tmp_path):
    import shutil

    bench = tmp_path / "In-shop Clothes Retrieval Benchmark"
    make_inshop(str(bench), ITEMS)
    nested = data.load_dataset("inshop", "gallery", root=str(tmp_path))
    assert len(nested) == 5 and os.path.isfile(nested.paths[0])
    flat = tmp_path / "flat"
    shutil.copytree(bench / "Img" / "img", flat / "img")
    shutil.copy(bench / "Eval" / "list_eval_partition.txt", flat)
    got = data.load_dataset("inshop", "gallery", root=str(flat))
    assert [os.path.relpath(p, flat) for p in got.paths] == \
        [os.path.relpath(p, bench / "Img") for p in nested.paths]


def test_count_check(inshop_root):
    with pytest.raises(ValueError, match="14218"):
        data.load_dataset("inshop", "query", root=inshop_root, check_counts=True)
