"""Kill-and-resume with a corrupt image in the data and no decoded cache.

The training batches are promised to be a pure function of (seed, batch number, the
files): a run interrupted after batch k and resumed with ``start_batch=k`` must draw
exactly the images (the same indices, in the same order) an uninterrupted run draws,
and neither may depend on how fast tf.data happened to decode (parallelism, prefetch
depth). With a corrupt file that only holds if the file is known before the first
batch is drawn.

Every image of the generated tree is a solid colour of its own, so the index of each
image a batch holds is read back from its pixels (crop and flip keep a solid colour).
"""

import re
import warnings

import numpy as np
import pytest
from PIL import Image

from hdml_tf import data
from hdml_tf.data.samplers import AuthorsSampler, MPerClassSampler, NPairSampler, TripletSampler
from tests.data.helpers_data import write_image

CLASSES, PER_CLASS = 6, 4
STEPS, KILLED_AT = 12, 5
SEED = 3


def _color(i):
    # 70 apart on at least one channel: far more than JPEG and resizing move a solid colour
    return (40 + 70 * (i % 4), 40 + 70 * (i // 4 % 4), 40 + 70 * (i // 16))


@pytest.fixture
def tree(tmp_path):
    """6 classes x 4 images, one of them a truncated JPEG; (dataset, bad index, palette)."""
    root = tmp_path / "images"
    n = 0
    for c in range(CLASSES):
        for k in range(PER_CLASS):
            write_image(str(root / f"class{c}" / f"{k}.jpg"), _color(n), size=(16, 12))
            n += 1
    bad = str(root / "class2" / "1.jpg")
    good = open(bad, "rb").read()
    with open(bad, "wb") as f:
        f.write(good[: len(good) // 2])  # truncated: the header reads, the scan data does not
    train = data.load_dataset("folder", "all", root=str(root))
    bad_index = list(train.paths).index(bad)
    palette = np.array([np.asarray(Image.open(p).convert("RGB"), np.float32).mean((0, 1))
                        if i != bad_index else (-1000.0,) * 3
                        for i, p in enumerate(train.paths)])
    return train, bad_index, palette


LAYOUTS = {
    "npair": (lambda d, **kw: data.npair_dataset(d, 3, **kw),
              lambda labels, bad: NPairSampler(labels, 3, seed=SEED, exclude=bad)),
    "triplet": (lambda d, **kw: data.triplet_dataset(d, 2, **kw),
                lambda labels, bad: TripletSampler(labels, 2, seed=SEED, exclude=bad)),
    "npair_authors": (lambda d, **kw: data.npair_dataset(d, 3, sampler="authors", **kw),
                      lambda labels, bad: AuthorsSampler(labels, 3, 2, seed=SEED, exclude=bad)),
    "m_per_class": (lambda d, **kw: data.m_per_class_dataset(d, 2, 3, **kw),
                    lambda labels, bad: MPerClassSampler(labels, 2, 3, seed=SEED, exclude=bad)),
}


def _drawn(make, train, palette, steps, **kw):
    """The image indices of the first ``steps`` batches, one int array per batch, read
    back from the pixels; and the warnings the run gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = make(train, seed=SEED, resize=12, crop=10, preprocessing="none", cache=False,
                  **kw)
        batches = []
        for images, labels in ds.take(steps):
            images = np.concatenate(images) if isinstance(images, tuple) else images.numpy()
            labels = np.concatenate(labels) if isinstance(labels, tuple) else labels.numpy()
            means = images.reshape(len(images), -1, 3).mean(1)
            index = ((means[:, None] - palette[None]) ** 2).sum(-1).argmin(1)
            assert np.array_equal(train.labels[index], labels)  # each image by its label
            batches.append(index)
    return batches, [str(w.message) for w in caught]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_resumed_run_draws_the_batches_of_an_uninterrupted_run(tree, layout):
    train, bad, palette = tree
    make, sampler = LAYOUTS[layout]
    full, said = _drawn(make, train, palette, STEPS)
    assert len(full) == STEPS  # a corrupt file costs no batch
    assert any(train.paths[bad] in s for s in said)  # ... and is named
    assert train.paths[bad] in train.skipped
    # Killed after KILLED_AT batches, resumed: the same images, in the same order.
    resumed, _ = _drawn(make, train, palette, STEPS - KILLED_AT, start_batch=KILLED_AT)
    assert [b.tolist() for b in resumed] == [b.tolist() for b in full[KILLED_AT:]]
    # Decoding one image at a time with no read-ahead draws the same batches.
    serial, _ = _drawn(make, train, palette, STEPS, num_parallel_calls=1, prefetch=1)
    assert [b.tolist() for b in serial] == [b.tolist() for b in full]
    # A pure function of (seed, batch number, the files): the sampler's own stream with
    # the corrupt file left out from the first batch on, which it never draws.
    stream = iter(sampler(train.labels, {bad}))
    want = [np.concatenate(next(stream)) if layout != "m_per_class" else next(stream)
            for _ in range(STEPS)]
    assert [b.tolist() for b in full] == [b.tolist() for b in want]
    assert not any(bad in b for b in full)


def test_a_file_that_breaks_after_the_scan_is_an_error_naming_it(tree):
    """Skipping it then would change every batch after it: an error, strict or not."""
    train, bad, _ = tree
    with pytest.warns(data.CorruptImageWarning):
        ds = data.npair_dataset(train, 3, seed=SEED, resize=12, crop=10, preprocessing="none")
    victim = train.paths[0]
    with open(victim, "wb") as f:
        f.write(b"changed on disk")
    with pytest.raises(Exception, match=re.escape(repr(victim)) + ".*changed on disk since"):
        for _ in ds.take(STEPS):
            pass
