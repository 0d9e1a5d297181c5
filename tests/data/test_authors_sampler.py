"""The authors' batch samplers (datasets/data_provider.py of their code)."""

import itertools

import numpy as np
import pytest

from hdml_tf.data.samplers import AuthorsSampler, NPairSampler

LABELS = np.repeat(np.arange(12), 5)  # 12 classes x 5 images


def test_npair_batches_draw_distinct_classes_and_two_distinct_images():
    sampler = AuthorsSampler(LABELS, 6, groups=2, seed=3)
    for anchors, positives in itertools.islice(iter(sampler), 50):
        assert len(set(LABELS[anchors])) == 6
        np.testing.assert_array_equal(LABELS[anchors], LABELS[positives])
        assert np.all(anchors != positives)


def test_triplet_negatives_share_no_class_with_any_anchor():
    """2T distinct classes: the queue sampler only avoids the anchor's own class."""
    sampler = AuthorsSampler(LABELS, 4, groups=3, seed=0)
    for a, p, n in itertools.islice(iter(sampler), 50):
        np.testing.assert_array_equal(LABELS[a], LABELS[p])
        assert len(set(LABELS[a]) | set(LABELS[n])) == 8
        assert not set(LABELS[n]) & set(LABELS[a])


def test_batches_are_independent_and_a_pure_function_of_seed_and_index():
    sampler = AuthorsSampler(LABELS, 6, groups=2, seed=3)
    stream = list(itertools.islice(iter(sampler), 20))
    for index in (0, 7, 19):
        for got, want in zip(sampler.batch(index), stream[index]):
            np.testing.assert_array_equal(got, want)
    other = AuthorsSampler(LABELS, 6, groups=2, seed=4)
    assert not np.array_equal(other.batch(0)[0], stream[0][0])
    # Classes are drawn per batch: over many batches every class recurs at random
    # offsets, unlike a queue that visits every class before repeating one.
    queue = list(itertools.islice(iter(NPairSampler(LABELS, 6, seed=3)), 2))
    assert set(LABELS[queue[0][0]]).isdisjoint(LABELS[queue[1][0]])
    assert any(not a.isdisjoint(b) for a, b in zip(
        [set(LABELS[b[0]]) for b in stream[0::2]], [set(LABELS[b[0]]) for b in stream[1::2]]))


def test_too_few_classes_is_an_error():
    with pytest.raises(ValueError, match="need 8 classes"):
        AuthorsSampler(np.repeat(np.arange(5), 3), 4, groups=3)
