"""Per-replica contents of the training batches under MirroredStrategy (2 CPU devices)."""

import numpy as np
import pytest
import tensorflow as tf

from hdml_tf import data

pytestmark = pytest.mark.two_devices


@pytest.fixture(scope="module")
def strategy():
    devices = tf.config.list_logical_devices("CPU")
    if len(devices) < 2:
        pytest.skip("needs 2 logical CPU devices (tests/conftest.py)")
    return tf.distribute.MirroredStrategy([d.name for d in devices[:2]])


def _replicas(strategy, value):
    return [t.numpy() for t in strategy.experimental_local_results(value)]


def test_npair_pairs_stay_together_per_replica(strategy):
    train = data.load_dataset("digits", "train")
    ds = data.npair_dataset(train, 4, seed=0, resize=None, crop=None, preprocessing="none").take(3)
    reference = list(ds)
    dist = strategy.experimental_distribute_dataset(ds)
    for (ref_x, ref_y), ((a, p), (la, lp)) in zip(reference, dist):
        a_r, p_r, la_r, lp_r = (_replicas(strategy, v) for v in (a, p, la, lp))
        assert [x.shape for x in la_r] == [(2,), (2,)]
        for r in range(2):
            assert np.array_equal(la_r[r], lp_r[r])  # each replica's positives match its anchors
            assert np.array_equal(a_r[r], ref_x[0].numpy()[2 * r:2 * r + 2])
            assert np.array_equal(p_r[r], ref_x[1].numpy()[2 * r:2 * r + 2])
        assert len(set(np.concatenate(la_r))) == 4


def test_triplets_stay_together_per_replica(strategy):
    train = data.load_dataset("digits", "train")
    ds = data.triplet_dataset(train, 4, seed=0, resize=None, crop=None, preprocessing="none")
    ds = ds.take(3)
    for (_, (la, lp, ln)) in strategy.experimental_distribute_dataset(ds):
        for a, p, n in zip(*(_replicas(strategy, v) for v in (la, lp, ln))):
            assert a.shape == (2,) and np.array_equal(a, p) and np.all(n != a)


def test_flat_layout_would_break_pairs(strategy):
    """Why the nested structure: a flat [anchors; positives] batch is split by
    replica, so replica 0 sees only anchors and replica 1 only positives."""
    labels = tf.data.Dataset.from_tensors(tf.constant([0, 1, 0, 1]))
    (r0, r1) = _replicas(strategy, next(iter(strategy.experimental_distribute_dataset(labels))))
    assert r0.tolist() == [0, 1] and r1.tolist() == [0, 1]  # anchors | positives, not pairs


def test_file_pipeline_with_a_bad_file_per_replica(strategy, tmp_path):
    from tests.data.helpers_data import label_of_color, make_folder

    root = make_folder(str(tmp_path), {f"c{i}": (i + 1, 3) for i in range(6)})
    (tmp_path / "c2" / "zz_bad.jpg").write_bytes(b"garbage")
    ds_data = data.load_dataset("folder", "all", root=root)
    ds = data.npair_dataset(ds_data, 4, seed=0, resize=12, crop=10, preprocessing="none").take(6)
    with pytest.warns(data.CorruptImageWarning, match="zz_bad.jpg"):
        batches = list(strategy.experimental_distribute_dataset(ds))
    assert len(batches) == 6
    for (a, p), (la, lp) in batches:
        for ai, pi, lai, lpi in zip(*(_replicas(strategy, v) for v in (a, p, la, lp))):
            assert ai.shape == (2, 10, 10, 3) and np.array_equal(lai, lpi)
            assert np.array_equal(label_of_color(ai, np.arange(6) + 1), lai)
            assert np.array_equal(label_of_color(pi, np.arange(6) + 1), lpi)
