"""``hdml-tf embed`` and ``hdml-tf search``: tools that need only an exported SavedModel.

They call the ``serve_bytes`` signature written by ``hdml-tf export`` (see
``hdml_tf.export``), so images are decoded, resized, cropped and normalised inside the
model exactly as in evaluation; they need nothing of the training side (the training
loop, the configs), and `search` ranks with the evaluation's neighbour search
(``hdml_tf.evaluation.retrieval.knn``), imported when it runs. An image's declared size
is read with the op the exported model runs
(``hdml_tf.data.preprocess.encoded_image_size``, called eagerly).

  hdml-tf embed  --model saved_models/cub --images gallery/ --out gallery.npz
  hdml-tf search --model saved_models/cub --gallery gallery.npz --query q.jpg -k 10

The ``.npz`` written by ``embed`` holds ``embeddings`` (float32, (N, d),
L2-normalised), ``paths`` (N file names, in the order of the rows), ``skipped`` (files
that could not be decoded or were over the pixel limit), ``model`` and ``signature``;
it loads with ``numpy.load(path)`` (no pickle).

Both tools apply the export's limits (``limits`` in its metadata) themselves: a file
whose header declares more than ``max_pixels`` is skipped (or, with ``--strict``,
refused) with one line naming it before anything decodes it, and batches hold at most
``max_batch`` images.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import tensorflow as tf

from hdml_tf.data import preprocess
from hdml_tf.serving_contract import (DEFAULT_MAX_BATCH, DEFAULT_MAX_PIXELS, INPUT_BYTES,
                                      INPUT_IMAGES, METADATA_FILENAME, OUTPUT_EMBEDDING,
                                      SIGNATURE_BYTES, SIGNATURE_IMAGES)
from hdml_tf.workdir import atomic_write

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
_LIST_EXTENSIONS = (".txt", ".lst", ".list")


# ------------------------------------------------------------------------- inputs


def resolve_model_dir(path):
    """The SavedModel directory for ``path``.

    Args:
      path: a SavedModel directory (holding ``saved_model.pb``) or a TF Serving model
        base directory (integer version sub-directories; the highest is used).

    Raises:
      FileNotFoundError: neither kind of directory.
    """
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    if os.path.isdir(path):
        versions = sorted((int(n) for n in os.listdir(path) if n.isdigit()
                           and os.path.isfile(os.path.join(path, n, "saved_model.pb"))),
                          reverse=True)
        if versions:
            return os.path.join(path, str(versions[0]))
    raise FileNotFoundError(f"{path!r} is not a SavedModel directory (no saved_model.pb) "
                            "nor a model directory with numbered versions")


def list_images(paths):
    """Expand image files, folders (recursively, sorted) and list files to file paths.

    Args:
      paths: iterable of paths. A folder contributes every file below it whose
        extension is one of ``IMAGE_EXTENSIONS``; a ``.txt``/``.lst``/``.list`` file
        holds one image path per line (relative paths are relative to the list file's
        folder; blank lines and lines starting with ``#`` are ignored); any other file
        is taken as an image.

    Returns:
      list of str, in the order given (folders sorted).

    Raises:
      FileNotFoundError: a path does not exist.
    """
    found = []
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                found += [os.path.join(root, f) for f in sorted(files)
                          if f.lower().endswith(IMAGE_EXTENSIONS)]
        elif os.path.isfile(path) and path.lower().endswith(_LIST_EXTENSIONS):
            base = os.path.dirname(path)
            with open(path, encoding="utf-8") as f:
                for line in f:
                    line = line.strip()
                    if line and not line.startswith("#"):
                        found.append(line if os.path.isabs(line) else os.path.join(base, line))
        elif os.path.isfile(path):
            found.append(path)
        else:
            raise FileNotFoundError(f"no such image, folder or list file: {path!r}")
    return found


def model_limits(model_path):
    """``{"max_pixels", "max_batch"}`` from an export's metadata (this package's
    defaults for an export that predates the limits or has no metadata)."""
    limits = {"max_pixels": DEFAULT_MAX_PIXELS, "max_batch": DEFAULT_MAX_BATCH}
    path = os.path.join(model_path, "assets.extra", METADATA_FILENAME)
    try:
        with open(path, encoding="utf-8") as f:
            recorded = json.load(f).get("limits") or {}
    except (OSError, ValueError):
        recorded = {}
    limits.update({k: int(v) for k, v in recorded.items() if k in limits})
    return limits


class _Progress:
    """A one-line progress bar on stderr (no dependency beyond the standard library)."""

    def __init__(self, total, label, enabled=True, width=30):
        self.total, self.label, self.enabled, self.width = total, label, enabled, width
        self.start = time.perf_counter()

    def update(self, done):
        if not self.enabled:
            return
        fraction = done / self.total if self.total else 1.0
        filled = int(round(self.width * fraction))
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
                         f"{done}/{self.total} ({rate:.1f} images/s)")
        sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


# ------------------------------------------------------------------------ embedding


class ExportedModel:
    """A SavedModel written by ``hdml-tf export``, with the limits it was exported with.

    Attributes:
      path: the SavedModel directory (a model base directory resolves to its highest
        version, see :func:`resolve_model_dir`).
      limits: ``{"max_pixels", "max_batch"}`` from its metadata (:func:`model_limits`).
      signatures: the loaded signature functions by name (``serving_default``,
        ``serve_bytes``).
    """

    def __init__(self, model_dir):
        self.path = resolve_model_dir(model_dir)
        self._saved_model = tf.saved_model.load(self.path)  # keeps the variables alive
        self.signatures = self._saved_model.signatures
        self.limits = model_limits(self.path)

    def signature(self, name):
        """The signature function ``name``; KeyError naming the ones there are."""
        if name not in self.signatures:
            raise KeyError(f"{self.path!r} has no signature {name!r} (it has "
                           f"{sorted(self.signatures)}); export it with hdml-tf export")
        return self.signatures[name]


def load_model(model_dir):
    """The `ExportedModel` at ``model_dir`` (a SavedModel or a model base directory)."""
    return ExportedModel(model_dir)


def embed(model, images, batch_size=None):
    """Embeddings of any number of images, sent in requests the model accepts.

    The exported signatures refuse a request of more than ``max_batch`` images (the
    export's limit, recorded in its metadata); this splits ``images`` into requests of
    at most that many, so callers need not know the limit. A TF Serving client does
    the same (docs/serving.md).

    Args:
      model: an `ExportedModel` or a path to one.
      images: a sequence of encoded image files (``bytes``: JPEG, PNG, GIF, BMP, WebP),
        sent to ``serve_bytes``; or a float array ``(N, crop, crop, 3)`` of RGB 0-255
        pixels already resized and centre-cropped, sent to ``serving_default``.
      batch_size: images per request (default and upper bound: the export's
        ``max_batch``).

    Returns:
      float32 ``(N, embedding_dim)``, L2-normalised, in the order of ``images``.

    Raises:
      tensorflow.errors.InvalidArgumentError: the model refused an image (undecodable,
        over ``max_pixels``); see :func:`embed_files` to skip such files instead.
    """

    model = model if isinstance(model, ExportedModel) else load_model(model)
    size = _request_size(model, batch_size)
    if isinstance(images, np.ndarray) and images.dtype != object:
        function, name = model.signature(SIGNATURE_IMAGES), INPUT_IMAGES
        to_tensor = lambda part: tf.constant(part, tf.float32)  # noqa: E731
    else:
        function, name = model.signature(SIGNATURE_BYTES), INPUT_BYTES
        to_tensor = lambda part: tf.constant(list(part), tf.string)  # noqa: E731
    chunks = [function(**{name: to_tensor(images[start:start + size])})[OUTPUT_EMBEDDING]
              .numpy() for start in range(0, len(images), size)]
    if not chunks:
        dim = function.structured_outputs[OUTPUT_EMBEDDING].shape[-1]
        return np.zeros((0, dim), np.float32)
    return np.concatenate(chunks, axis=0).astype(np.float32)


def _request_size(model, batch_size):
    """Images per request: ``batch_size`` capped at the model's ``max_batch``."""
    max_batch = model.limits["max_batch"]
    if batch_size is None:
        return max_batch
    if int(batch_size) < 1:
        raise ValueError(f"batch_size={batch_size!r}: must be at least 1")
    return min(int(batch_size), max_batch)


def embed_files(model, files, batch_size=None, strict=False, progress=False,
                max_pixels=None):
    """Embed image files with an exported model's ``serve_bytes`` signature.

    Args:
      model: an `ExportedModel` or a path to one.
      files: list of image paths.
      batch_size: images per request (default and upper bound: the export's
        ``max_batch``).
      strict: raise on the first undecodable or oversized file instead of skipping it.
      progress: draw a progress bar on stderr.
      max_pixels: skip (with ``strict``, refuse) a file whose header declares more
        pixels (height x width) than this, before it is decoded (default: the
        export's ``max_pixels``).

    Returns:
      ``(embeddings, kept, skipped)``: float32 (len(kept), d), the files embedded (in
      order), and ``(file, reason)`` pairs for files that could not be read or decoded
      or were over ``max_pixels``.

    Raises:
      tensorflow.errors.InvalidArgumentError or OSError: with ``strict``, naming the
        file and the reason in one line.
    """
    model = model if isinstance(model, ExportedModel) else load_model(model)
    size = _request_size(model, batch_size)
    max_pixels = max_pixels or model.limits["max_pixels"]
    chunks, kept, skipped = [], [], []
    bar = _Progress(len(files), "embed", enabled=progress)
    for start in range(0, len(files), size):
        names, contents = [], []
        for name in files[start:start + size]:
            data, reason = _read_image(name, strict, max_pixels)
            if data is None:
                skipped.append((name, reason))
            else:
                names.append(name)
                contents.append(data)
        if names:
            batch_chunks, batch_kept, batch_skipped = _embed_batch(model, names, contents,
                                                                   strict)
            chunks += batch_chunks
            kept += batch_kept
            skipped += batch_skipped
        bar.update(min(start + size, len(files)))
    bar.close()
    if chunks:
        embeddings = np.concatenate(chunks, axis=0).astype(np.float32)
    else:
        embeddings = np.zeros((0, 0), np.float32)
    return embeddings, kept, skipped


def _read_image(name, strict, max_pixels):
    """``(bytes, None)`` for a file to embed, ``(None, reason)`` for one to skip.

    Raises:
      OSError or tensorflow.errors.InvalidArgumentError: with ``strict``, for an
        unreadable file or a header over ``max_pixels``.
    """

    try:
        with open(name, "rb") as f:
            data = f.read()
    except OSError as err:
        if strict:
            raise
        return None, str(err)
    # Unknown formats and unreadable headers (-1) are left to the model, whose
    # message says which it is; only a readable, oversized header stops here. The
    # header is read by the same op the exported serve_bytes runs in its graph.
    size = preprocess.encoded_image_size(data).numpy().tolist() if max_pixels else [-1, -1]
    if min(size) > 0 and size[0] * size[1] > max_pixels:
        reason = (f"declares {size[0]}x{size[1]} pixels (height x width), over the "
                  f"limit of {max_pixels}; not decoded")
        if strict:
            raise tf.errors.InvalidArgumentError(None, None, f"{name}: {reason}")
        return None, reason
    return data, None


def _embed_batch(model, names, contents, strict):
    """``(chunks, kept, skipped)`` of one batch.

    One bad file fails its whole batch: then the batch is redone one file at a time
    so that only the bad files are dropped, and the reason says which they are.
    """

    try:
        return [embed(model, contents)], list(names), []
    except tf.errors.InvalidArgumentError:
        pass
    chunks, kept, skipped = [], [], []
    for name, data in zip(names, contents):
        try:
            chunks.append(embed(model, [data]))
            kept.append(name)
        except tf.errors.InvalidArgumentError as err:
            reason = _reason(err.message)
            if strict:  # one line, not the graph's op trace
                raise tf.errors.InvalidArgumentError(None, None,
                                                     f"{name}: {reason}") from None
            skipped.append((name, reason))
    return chunks, kept, skipped


def _reason(message):
    """The informative line of a TF error message (drop graph-location boilerplate)."""
    lines = [line.strip() for line in message.splitlines()]
    useful = [line for line in lines if line and not line.startswith(("[[", "Detected at"))
              and "stack traces unavailable" not in line
              and "Graph execution error" not in line]
    return (useful[-1] if useful else message.strip())[:300]


def save_embeddings(path, embeddings, paths, skipped=(), model="", signature=SIGNATURE_BYTES):
    """Write the ``.npz`` that ``hdml-tf search --gallery`` reads (no pickled objects),
    atomically: a failed write (a full disk) leaves an earlier file at ``path`` as it
    was and raises `hdml_tf.workdir.WriteError` naming it."""
    arrays = dict(embeddings=np.asarray(embeddings, np.float32),
                  paths=np.asarray(list(paths), dtype=str),
                  skipped=np.asarray([s for s, _ in skipped], dtype=str),
                  model=np.asarray(str(model)), signature=np.asarray(str(signature)))
    atomic_write(path, lambda f: np.savez(f, **arrays), mode="wb")


def load_embeddings(path):
    """``(embeddings, paths)`` from an ``hdml-tf embed`` file.

    Raises:
      ValueError: the file lacks ``embeddings``/``paths`` or their lengths differ.
    """
    with np.load(path, allow_pickle=False) as data:
        if "embeddings" not in data or "paths" not in data:
            raise ValueError(f"{path!r} has no 'embeddings'/'paths' arrays; make it with "
                             "hdml-tf embed")
        embeddings, paths = data["embeddings"].astype(np.float32), data["paths"].tolist()
    if len(embeddings) != len(paths):
        raise ValueError(f"{path!r}: {len(embeddings)} embeddings but {len(paths)} paths")
    return embeddings, paths


def search(queries, gallery, k=10):
    """Exact cosine nearest neighbours, by `hdml_tf.evaluation.retrieval.knn`.

    Args:
      queries: float (q, d); gallery: float (n, d). Rows are L2-normalised by ``knn``
        (the exported embeddings already are; this guards against other inputs).
      k: neighbours per query (capped at n; 0 neighbours when k < 1 or the gallery is
        empty).

    Returns:
      ``(scores, indices)``: (q, min(k, n)) float32 cosine similarities, best first, and
      the int32 gallery rows they belong to (ties broken by the lower index).

    Raises:
      ValueError: the embeddings are not 2-D, their dimensions differ, or they hold NaN
        or Inf.
    """
    # Imported here: a process that only embeds imports none of the evaluation package.
    from hdml_tf.evaluation.retrieval import knn

    k = min(int(k), len(gallery))
    if k < 1:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int32)
    # The numpy backend: the scores of one float32 matrix product, in which equal gallery
    # rows score the same (faiss's may differ in the last bit and reorder such ties).
    table = knn(np.asarray(queries, np.float32), np.asarray(gallery, np.float32), k,
                backend="numpy")
    return table.similarities, table.indices


def save_grid(path, queries, results, gallery_paths, thumb=128):
    """Picture grid: one row per query (query, then its neighbours with scores).

    Args:
      path: output image file (PNG, JPEG, PDF... as matplotlib infers).
      queries: list of query file names.
      results: per query, ``(scores, indices)`` rows from :func:`search`.
      gallery_paths: the gallery file names the indices refer to.
    """
    # Figure API: files only, without switching a notebook's matplotlib backend.
    from matplotlib.figure import Figure
    from PIL import Image

    def load(name):
        try:
            with Image.open(name) as image:
                image = image.convert("RGB")
                image.thumbnail((thumb, thumb))
                return np.asarray(image)
        except OSError:
            return np.zeros((thumb, thumb, 3), np.uint8)

    columns = 1 + max((len(s) for s, _ in results), default=0)
    fig = Figure(figsize=(1.6 * columns, 1.8 * len(queries)))
    axes = fig.subplots(len(queries), columns, squeeze=False)
    for row, (query, (scores, indices)) in enumerate(zip(queries, results)):
        cells = [(query, "query")] + [(gallery_paths[i], f"{s:.3f}")
                                      for s, i in zip(scores, indices)]
        for col, ax in enumerate(axes[row]):
            ax.axis("off")
            if col < len(cells):
                name, title = cells[col]
                ax.imshow(load(name))
                ax.set_title(title if col else f"query: {os.path.basename(name)}"[:24],
                             fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
