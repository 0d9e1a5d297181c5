"""Fashion-MNIST from IDX .gz files (generated here; the real files are optional)."""

import os

import numpy as np
import pytest

from hdml_tf import data
from hdml_tf.data import fashion_mnist
from tests.data.helpers_data import make_fashion_idx, write_idx_gz

# The fixture has all 10 classes, so the published-count check reports its small size.
pytestmark = pytest.mark.filterwarnings("ignore::hdml_tf.data.base.DataWarning")


def test_idx_round_trip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx_gz(str(tmp_path / "x.gz"), arr)
    assert np.array_equal(fashion_mnist.read_idx(str(tmp_path / "x.gz")), arr)
    (tmp_path / "bad.gz").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="IDX"):
        fashion_mnist.read_idx(str(tmp_path / "bad.gz"))


def test_zero_shot_split_from_idx_files(tmp_path):
    root = make_fashion_idx(str(tmp_path), per_class_train=3, per_class_test=2)
    train = data.load_dataset("fashion_mnist", "train", root=root)
    test = data.load_dataset("fashion_mnist", "test", root=root)
    assert len(train) == len(test) == 25  # both files pooled, split by class
    assert train.class_ids.tolist() == [0, 1, 2, 3, 4]
    assert test.class_ids.tolist() == [5, 6, 7, 8, 9]
    assert test.class_names[0] == "Sandal" and train.class_names[0] == "T-shirt/top"
    assert train.images.shape == (25, 28, 28) and train.images.dtype == np.uint8
    # pixel value 10 * original label survives the relabelling
    assert np.array_equal(test.images[:, 0, 0], test.original_labels * 10)
    with pytest.raises(ValueError, match="35000"):
        data.load_dataset("fashion_mnist", "test", root=root, check_counts=True)


def test_uncompressed_idx_files(tmp_path):
    import gzip

    root = make_fashion_idx(str(tmp_path))
    for name in os.listdir(root):
        with gzip.open(os.path.join(root, name)) as src:
            raw = src.read()
        with open(os.path.join(root, name[:-3]), "wb") as dst:
            dst.write(raw)
        os.remove(os.path.join(root, name))
    assert len(data.load_dataset("fashion_mnist", "test", root=root)) == 25


def test_env_var(tmp_path, monkeypatch):
    root = make_fashion_idx(str(tmp_path / "fm"))
    monkeypatch.setenv("HDML_FASHION_MNIST_DIR", root)
    assert data.load_dataset("fashion_mnist", "test").root == root


def test_error_lists_all_three_ways(tmp_path, monkeypatch):
    monkeypatch.delenv("HDML_FASHION_MNIST_DIR", raising=False)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(tmp_path / "no_debian"))
    with pytest.raises(data.DatasetNotFoundError) as err:
        fashion_mnist.load("train", root=str(tmp_path / "none"), use_tfds=False, download=False)
    msg = str(err.value)
    assert "HDML_FASHION_MNIST_DIR" in msg and "dataset-fashion-mnist" in msg
    assert "tfds" in msg and "keras" in msg


def test_small_pipeline_on_28x28_grayscale(tmp_path):
    root = make_fashion_idx(str(tmp_path))
    train = data.load_dataset("fashion_mnist", "train", root=root)
    ds = data.npair_dataset(train, 4, resize=32, crop=28, preprocessing="none")
    (a, p), (la, lp) = next(iter(ds))
    assert a.shape == (4, 28, 28, 3) and a.dtype.name == "float32"
    an = a.numpy()
    assert np.allclose(an[..., 0], an[..., 1])  # grayscale became RGB
    assert np.allclose(an.mean(axis=(1, 2, 3)), train.class_ids[la.numpy()] * 10, atol=0.5)


def test_real_debian_files():
    """The real files of Debian's dataset-fashion-mnist, which the README's test
    command installs (as root, as CI runs): missing, this fails rather than skips."""
    assert os.path.isfile(os.path.join(fashion_mnist.DEBIAN_DIR, "t10k-labels-idx1-ubyte.gz")), (
        "install dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
    kw = dict(root=fashion_mnist.DEBIAN_DIR, use_tfds=False, download=False)
    train = fashion_mnist.load("train", **kw)
    test = fashion_mnist.load("test", **kw)
    assert len(train) == len(test) == 35000
    assert np.array_equal(np.bincount(test.labels), [7000] * 5)
