"""Per-replica contents of the training batches under MirroredStrategy (2 CPU devices)."""

import numpy as np
import pytest

from hdml_tf import data

pytestmark = pytest.mark.two_devices


@pytest.fixture(scope="module")
def strategy(two_replicas):
    """conftest's session-wide strategy (it asserts the 2 logical CPUs exist)."""
    return two_replicas


def _replicas(strategy, value):
    return [t.numpy() for t in strategy.experimental_local_results(value)]


def test_npair_pairs_stay_together_per_replica(strategy):
    train = data.load_dataset("digits", "train")
    ds = data.npair_dataset(train, 4, seed=0, resize=None, crop=None, preprocessing="none").take(3)
    reference = list(ds)
    dist = strategy.experimental_distribute_dataset(ds)
    # Nested ((anchors, positives), (labels, labels)), not a flat [anchors; positives]
    # batch: MirroredStrategy splits each leaf, so a flat batch would hand replica 0
    # only anchors and replica 1 only positives.
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


def test_file_pipeline_with_a_bad_file_per_replica(strategy, tmp_path):
    from tests.data.helpers_data import label_of_color, make_folder

    root = make_folder(str(tmp_path), {f"c{i}": (i + 1, 3) for i in range(6)})
    (tmp_path / "c2" / "zz_bad.jpg").write_bytes(b"garbage")
    ds_data = data.load_dataset("folder", "all", root=root)
    with pytest.warns(data.CorruptImageWarning, match="zz_bad.jpg"):  # before the first batch
        ds = data.npair_dataset(ds_data, 4, seed=0, resize=12, crop=10,
                                preprocessing="none").take(6)
    batches = list(strategy.experimental_distribute_dataset(ds))
    assert len(batches) == 6
    for (a, p), (la, lp) in batches:
        for ai, pi, lai, lpi in zip(*(_replicas(strategy, v) for v in (a, p, la, lp))):
            assert ai.shape == (2, 10, 10, 3) and np.array_equal(lai, lpi)
            assert np.array_equal(label_of_color(ai, np.arange(6) + 1), lai)
            assert np.array_equal(label_of_color(pi, np.arange(6) + 1), lpi)
