"""Decoded cache of a training split: every image decoded and resized once.

Decoding a ~500x400 JPEG costs far more than the rest of the training transform, and
the training split is read again every epoch. With the cache, each image is decoded
and resized once to the preset's ``resize`` x ``resize`` (uint8, e.g. 256x256x3 =
196,608 bytes per image), so an epoch runs only crop + flip + normalise.

Where the pixels live is chosen by size (``storage="auto"``):

* ``"memory"``: one uint8 tensor (N, h, w, 3) held by a CPU ``tf.Variable`` (a
  tensor captured by tf.data is copied once more when the iterator starts; a
  variable is not, so the cache costs its size once). Used when the estimate
  N x h x w x 3 bytes fits the memory budget.
* ``"disk"``: one raw uint8 file per image under ``cache_dir/<fingerprint>/``, read
  with ``tf.io.read_file`` + ``tf.io.decode_raw`` (graph ops: parallel, no GIL, and
  the page cache keeps hot files in memory). Kept for the next run: the fingerprint
  covers the resize size and every source file's path, size and modification time.
  (A ``tf.data`` snapshot would not do: the samplers read images in a random order.)

The memory budget is ``$HDML_TF_DECODED_CACHE_BUDGET`` (bytes, or e.g. ``"4G"``)
when set, else half of the memory available when the cache is built
(``MemAvailable`` on Linux). CUB's 5,864 training images at 256x256 take 1.15 GB,
Cars196's 8,054 take 1.58 GB, SOP's 59,551 take 11.7 GB (on disk on a 12 GB Colab).

Pixels are ``round(resize(decode(file)))`` as uint8: the uncached pipeline crops the
float resize result directly, so cached and uncached batches agree to within the
rounding (|difference| <= 0.5 on the 0-255 scale), with the same images in the same
order and the same crop and flip.

Bad images: building the cache is the pass that decodes every image before the first
batch, so it is where the undecodable ones are found (named in a
``CorruptImageWarning`` and in ``data.skipped``, or an error naming the file when
``strict``; ``hdml_tf.data.corrupt_images``). A disk cache remembers its bad images
and reports them again when it is reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import tensorflow as tf

from hdml_tf.data import corrupt_images, preprocess
from hdml_tf.data.base import ImageDataset

STORAGES = ("auto", "memory", "disk")
_FORMAT = 1  # bump when the on-disk layout changes


def _size(resize) -> tuple:
    if resize is None:
        raise ValueError("the decoded cache needs a fixed resize size (images differ in size)")
    if isinstance(resize, int):
        return (resize, resize)
    h, w = resize
    return (int(h), int(w))


def estimated_bytes(num_images: int, resize) -> int:
    """Bytes of the decoded cache: num_images x h x w x 3 (uint8)."""
    h, w = _size(resize)
    return int(num_images) * h * w * 3


def _parse_bytes(text: str) -> int:
    text = text.strip().upper().rstrip("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
    return int(float(text.rstrip("KMGT")) * scale)


def available_memory():
    """Bytes of memory available now (Linux ``MemAvailable``; else total), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def default_memory_budget() -> int:
    """``$HDML_TF_DECODED_CACHE_BUDGET`` if set, else half the available memory
    (4 GiB if that is unknown)."""
    env = os.environ.get("HDML_TF_DECODED_CACHE_BUDGET")
    if env:
        return _parse_bytes(env)
    available = available_memory()
    return available // 2 if available else 4 << 30


def default_cache_dir() -> str:
    """``$HDML_TF_CACHE/decoded`` if set, else ``~/.cache/hdml_tf/decoded``."""
    base = os.environ.get("HDML_TF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                           "hdml_tf")
    return os.path.join(base, "decoded")


def choose_storage(num_images: int, resize, memory_budget=None) -> str:
    """``"memory"`` if the estimated size fits ``memory_budget`` (bytes; None: the
    default budget), else ``"disk"``."""
    budget = default_memory_budget() if memory_budget is None else int(memory_budget)
    return "memory" if estimated_bytes(num_images, resize) <= budget else "disk"


def fingerprint(data: ImageDataset, resize) -> str:
    """A digest of the images' identity and the resize size: names a disk cache."""
    h = hashlib.sha256(json.dumps([_FORMAT, data.name, data.split, _size(resize),
                                   len(data)]).encode())
    if data.paths is not None:
        for p in data.paths:
            st = os.stat(p) if os.path.exists(p) else None
            h.update(f"{p}\0{st and st.st_size}\0{st and st.st_mtime_ns}\n".encode())
    elif data.encoded is not None:
        for e in data.encoded:
            h.update(hashlib.sha256(e).digest())
    else:
        h.update(np.ascontiguousarray(data.images).tobytes())
    return h.hexdigest()[:24]


class DecodedCache:
    """uint8 (h, w, 3) images of one dataset at one size; graph-side ``load``.

    Quacks like the pipeline's image source: ``data``, ``can_fail`` (False: every
    usable image is already decoded) and ``load(index)``. ``bad`` holds the indices
    of the images that could not be decoded (never to be drawn); ``storage`` is
    ``"memory"`` or ``"disk"``; ``path`` the disk folder (None in memory).
    """

    can_fail = False

    def __init__(self, data, size, storage, bad, pixels=None, path=None):
        self.data = data
        self.size = size
        self.storage = storage
        self.bad = set(bad)
        self.path = path
        self._pixels = pixels
        if storage == "disk":
            files = [os.path.join(path, f"{i:07d}.u8") for i in range(len(data))]
            self._files = tf.constant(files, tf.string)

    @property
    def nbytes(self) -> int:
        return estimated_bytes(len(self.data), self.size)

    def load(self, index) -> tf.Tensor:
        """index: int64 scalar tensor -> uint8 (h, w, 3) at the cached size."""
        h, w = self.size
        if self.storage == "memory":
            return tf.gather(self._pixels, index)
        raw = tf.io.decode_raw(tf.io.read_file(tf.gather(self._files, index)), tf.uint8)
        return tf.reshape(raw, [h, w, 3])

    def numpy(self, index: int) -> np.ndarray:
        """Image ``index`` as a numpy uint8 (h, w, 3) array (for tests and tools)."""
        return self.load(tf.constant(index, tf.int64)).numpy()


def _decoded(source, size, strict, bad, num_parallel_calls):
    """Yield (indices, uint8 images at ``size``) for every decodable image, in order,
    256 at a time; each undecodable one is reported (``corrupt_images.report``) into
    ``bad`` first."""
    def resized(image):
        return tf.cast(tf.round(preprocess.resize_image(image, size)), tf.uint8)

    return corrupt_images.decode_each(source, resized, strict=strict, bad=bad,
                                      num_parallel_calls=num_parallel_calls)


def _report_known_bad(data, bad: dict, strict: bool):
    """A reused disk cache's bad images, reported as the decoding pass reports them."""
    for i, reason in sorted(bad.items()):
        corrupt_images.report(data, i, reason, strict, set(),
                              note=" (known to the decoded cache)")


def build(source, resize, *, strict: bool = False, storage: str = "auto",
          memory_budget=None, cache_dir=None,
          num_parallel_calls=tf.data.AUTOTUNE) -> DecodedCache:
    """Decode and resize every image of ``source.data`` once.

    Args:
        source: the images (``corrupt_images.ImageSource``); its ``data`` is the split
            to cache, whose ``skipped`` dict receives the bad images.
        resize: int or (h, w), the size the training transform resizes to.
        strict: raise, naming the file, on an undecodable image (also one known from
            a reused disk cache) instead of reporting and leaving it out.
        storage: "auto" (by ``memory_budget``), "memory" or "disk".
        memory_budget: bytes for ``storage="auto"``; None: ``default_memory_budget()``.
        cache_dir: folder for disk caches; None: ``default_cache_dir()``.
        num_parallel_calls: decoding parallelism.

    Returns:
        a ``DecodedCache``; its ``bad`` is the set of undecodable indices.
    """
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    data = source.data
    size = _size(resize)
    if storage == "auto":
        storage = choose_storage(len(data), size, memory_budget)
    bad: set = set()
    decoded = _decoded(source, size, strict, bad, num_parallel_calls)
    if storage == "memory":
        with tf.device("/CPU:0"):
            # Not under a distribution strategy's scope: one copy, on the host.
            pixels = tf.Variable(tf.zeros([len(data), *size, 3], tf.uint8), trainable=False,
                                 name="decoded_cache")
            for idx, images in decoded:
                pixels.scatter_nd_update(idx[:, None], images)
        return DecodedCache(data, size, "memory", bad, pixels=pixels)
    folder = os.path.join(cache_dir or default_cache_dir(), fingerprint(data, size))
    manifest = os.path.join(folder, "manifest.json")
    if os.path.exists(manifest):
        with open(manifest) as f:
            known = {int(i): r for i, r in json.load(f)["bad"].items()}
        _report_known_bad(data, known, strict)
        return DecodedCache(data, size, "disk", known, path=folder)
    _write_disk_cache(data, folder, size, decoded, bad)
    return DecodedCache(data, size, "disk", bad, path=folder)


def _write_disk_cache(data, folder, size, decoded, bad):
    """One raw file per image and a manifest naming the bad ones, written under a
    temporary name and renamed into place when complete."""
    partial = f"{folder}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    try:
        for idx, images in decoded:
            for i, image in zip(idx, images):
                image.tofile(os.path.join(partial, f"{int(i):07d}.u8"))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    known = {str(i): data.skipped.get(data.describe(i), "undecodable") for i in sorted(bad)}
    with open(os.path.join(partial, "manifest.json"), "w") as f:
        json.dump({"format": _FORMAT, "size": size, "count": len(data), "bad": known}, f)
    try:
        os.replace(partial, folder)
    except OSError:  # another process finished the same cache first: use theirs
        shutil.rmtree(partial, ignore_errors=True)
