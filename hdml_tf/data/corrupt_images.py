"""Corrupt-image handling: which images cannot be decoded, naming them, and the rules.

The rules:

* Training: every image is decoded once before the sampler is built (``scan``; with
  the decoded cache, building the cache is that pass). Each undecodable image is
  named in a ``CorruptImageWarning`` and in ``data.skipped`` (name -> reason), and the
  sampler is built without them, so the batches are a pure function of (seed, batch
  number, the files): the same in a resumed run as in an uninterrupted one, whatever
  the decode timing. With ``strict`` the first one is an error naming the file. An
  image that passed the scan and fails later (changed on disk during training) is an
  error naming it, strict or not: skipping it then would change the batches.
* Evaluation: every image once, in order; an undecodable one is skipped and named
  the same way (an error when ``strict``), the others keep their order.

How a bad image is found: decoding runs in graph ops (parallel, no GIL), and TF cannot
catch an error inside a graph, so a failed decode fails the tf.data element that
holds the image. The elements are numbered and ``ignore_errors`` drops the failed
ones; a gap in the numbers (seen in Python by ``decode_each``, or by a ``Tracker``
hook inside a pipeline) says which element failed, and its images are decoded again
in Python (``ImageSource.diagnose``) to name the file and the reason.
"""

from __future__ import annotations

import re
import threading
import warnings

import numpy as np
import tensorflow as tf

from hdml_tf.data import preprocess
from hdml_tf.data.base import CorruptImageWarning, DataWarning, ImageDataset


class ImageSource:
    """Graph-side access to the pixels of an ImageDataset, plus Python-side diagnosis."""

    def __init__(self, data: ImageDataset):
        self.data = data
        if data.images is not None:
            self.pixels = tf.constant(data.images)
        elif data.paths is not None:
            self.paths = tf.constant([str(p) for p in data.paths], tf.string)
        else:
            self.encoded = tf.constant(list(data.encoded), tf.string)

    @property
    def can_fail(self) -> bool:
        """False for pixels in memory: nothing to decode."""
        return self.data.images is None

    def load(self, index) -> tf.Tensor:
        """index: int64 scalar tensor -> uint8 (H, W, 3). Fails in-graph if undecodable."""
        if self.data.images is not None:
            return preprocess.to_rgb(tf.gather(self.pixels, index))
        if self.data.paths is not None:
            contents = tf.io.read_file(tf.gather(self.paths, index))
        else:
            contents = tf.gather(self.encoded, index)
        # Over the limit fails the element before decoding, like an undecodable file.
        return preprocess.decode_image(contents, max_pixels=preprocess.TRAIN_MAX_PIXELS)

    def diagnose(self, i: int):
        """None if image i reads and decodes (and is within TRAIN_MAX_PIXELS), else the
        reason (for messages)."""
        try:
            if self.data.paths is not None:
                with open(self.data.paths[i], "rb") as f:
                    contents = f.read()
            else:
                contents = self.data.encoded[i]
            height, width = preprocess.encoded_image_size(contents).numpy().tolist()
            if height * width > preprocess.TRAIN_MAX_PIXELS and height > 0:
                return (f"declares {height}x{width} pixels (height x width), over the "
                        f"limit of {preprocess.TRAIN_MAX_PIXELS}; not decoded")
            preprocess.decode_image(tf.constant(contents))
            return None
        except Exception as e:  # noqa: BLE001 - any failure to read or decode
            return clean_reason(e)


def clean_reason(error) -> str:
    """The useful part of a TF op error ("Unknown image file format. ..."), or str(error)."""
    text = (getattr(error, "message", None) or str(error) or type(error).__name__).strip()
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text.splitlines()[-1])
    return re.sub(r"\s*\[Op:\w+\].*$", "", text).strip() or type(error).__name__


def report(data: ImageDataset, i: int, reason: str, strict: bool, bad: set,
           note: str = "") -> None:
    """Image ``i`` is undecodable: raise naming it (strict), else add it to ``bad`` and
    ``data.skipped`` and warn naming it."""
    name = data.describe(i)
    if strict:
        raise ValueError(f"cannot decode image {name!r}: {reason}")
    bad.add(int(i))
    data.skipped[name] = reason
    warnings.warn(f"skipped undecodable image {name!r} ({reason}); {len(data.skipped)} "
                  f"image(s) skipped so far{note}", CorruptImageWarning, stacklevel=3)


def decode_each(source: ImageSource, fn, *, strict: bool, bad: set, num_parallel_calls,
                chunk: int = 256):
    """``fn(image)`` of every decodable image, in order, ``chunk`` images at a time.

    Args:
        source: the images.
        fn: graph function of a uint8 (H, W, 3) image, run after decoding.
        strict, bad: as ``report``, told about every undecodable image before the
            chunks after it are yielded.
        num_parallel_calls: decoding parallelism.

    Yields:
        (indices, outputs): int64 (k,) and fn's outputs stacked, for the k images of
        the chunk that decoded.
    """
    n = len(source.data)

    @tf.autograph.experimental.do_not_convert
    def load(i):
        return i, fn(source.load(i))

    ds = tf.data.Dataset.range(n).map(load, num_parallel_calls=num_parallel_calls,
                                      deterministic=True)
    expected = 0
    for idx, out in ds.ignore_errors().batch(chunk).as_numpy_iterator():
        _report_missing(source, np.setdiff1d(np.arange(expected, idx[-1]), idx), strict, bad)
        expected = int(idx[-1]) + 1
        yield idx, out
    _report_missing(source, range(expected, n), strict, bad)


def _report_missing(source, missing, strict, bad):
    for j in missing:
        reason = source.diagnose(int(j)) or ("failed in the input pipeline (the failure did "
                                             "not reproduce when decoded again)")
        report(source.data, int(j), reason, strict, bad)


def scan(source: ImageSource, *, strict: bool = False,
         num_parallel_calls=tf.data.AUTOTUNE) -> frozenset:
    """Decode every image once; the indices of the undecodable ones, each reported
    (``report``). Empty, without decoding, for pixels in memory."""
    bad: set = set()
    if source.can_fail:
        for _ in decode_each(source, tf.shape, strict=strict, bad=bad,
                             num_parallel_calls=num_parallel_calls):
            pass
    return frozenset(bad)


class Tracker:
    """Names the elements ``ignore_errors`` dropped from a stream, from gaps in a
    running element number.

    ``members(k)`` gives the image indices of element k (one image for evaluation, a
    whole batch for training). ``scanned``: the images were scanned before the stream
    started (training), so a failure now is an error (the file changed on disk), not
    a skip; otherwise bad images are reported (``report``). ``first``: the number of
    the stream's first element (a resumed training stream starts at its start batch).
    """

    def __init__(self, source: ImageSource, strict: bool, members, *, scanned: bool = False,
                 first: int = 0):
        self.source = source
        self.strict = strict
        self.members = members
        self.scanned = scanned
        self.bad: set = set()
        self.expected = int(first)
        self._lock = threading.Lock()

    def _check(self, k):
        k = int(k.numpy()) if hasattr(k, "numpy") else int(k)
        with self._lock:
            dropped = range(self.expected, k)
            self.expected = k + 1
        for j in dropped:
            self._report(j)
        return np.int64(k)

    def _report(self, j):
        data = self.source.data
        named = []
        for i in self.members(j):
            reason = self.source.diagnose(int(i))
            if reason is None:
                continue
            if self.scanned:
                raise ValueError(f"cannot decode image {data.describe(int(i))!r}: {reason} (it "
                                 f"decoded when the images were scanned before training; "
                                 f"changed on disk since?)")
            report(data, int(i), reason, self.strict, self.bad)
            named.append(i)
        if named:
            return
        message = (f"{data.name}: input element {j} failed for a reason that did not "
                   f"reproduce when its images were decoded again")
        if self.scanned:  # skipping it would shift every later batch
            raise ValueError(message)
        warnings.warn(f"{message}; skipped", DataWarning)

    def check(self, k):
        """Graph hook: k (int64 scalar) -> k, after reporting elements dropped before it."""
        out = tf.py_function(self._check, [k], tf.int64)
        out.set_shape([])
        return out
