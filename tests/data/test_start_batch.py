"""Resuming the batch stream: start_batch=k equals the stream with k batches skipped."""

import numpy as np
import pytest

from hdml_tf import data


@pytest.mark.parametrize("make", [
    lambda d, **kw: data.npair_dataset(d, 4, **kw),
    lambda d, **kw: data.triplet_dataset(d, 3, **kw),
    lambda d, **kw: data.m_per_class_dataset(d, 2, 3, **kw),
])
def test_start_batch_continues_the_same_stream(make):
    train = data.load_dataset("digits", "train")
    kw = dict(seed=3, resize=12, crop=10, preprocessing="tf")
    full = list(make(train, **kw).take(5))
    resumed = list(make(train, start_batch=3, **kw).take(2))
    for a, b in zip(full[3:], resumed):
        flat_a, flat_b = _leaves(a), _leaves(b)
        assert len(flat_a) == len(flat_b)
        for u, v in zip(flat_a, flat_b):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    # ... and differs from the stream's start, so the test can fail.
    assert not np.array_equal(np.asarray(_leaves(full[0])[0]), np.asarray(_leaves(resumed[0])[0]))


def _leaves(structure):
    import tensorflow as tf

    return tf.nest.flatten(structure)
