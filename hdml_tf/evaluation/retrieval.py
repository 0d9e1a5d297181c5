"""Retrieval metrics on L2-normalised embeddings: Recall@K, MAP@R, R-precision.

Everything here is computed from one *neighbour table*: for every query, the indices of
its `k` most similar gallery items under cosine similarity, found blockwise so that the
full N x N similarity matrix is never materialised.

Conventions shared by every function of this module:

* Similarity is the inner product of L2-normalised embeddings (cosine similarity);
  inputs are normalised here, so callers may pass raw embeddings.
* Leave-one-out (the protocol for CUB, Cars196 and Stanford Online Products): when no
  gallery is given, every embedding is a query and the gallery is the same set with the
  query itself removed from its own neighbours. It is removed *by index*, so an exact
  duplicate of the query (another image with the same embedding) is still a neighbour.
* Query/gallery (the In-Shop protocol): when a gallery is given, queries are searched
  against it and nothing is excluded.
* Tie rule: neighbours are ranked by decreasing similarity and, among exactly equal
  similarities, by increasing gallery index. This decides both the order of the table
  and which items make the cut at the K-th position. "Equal" means equal as computed
  (float32 scores for the faiss backend, the input dtype for numpy); exact duplicates of
  an embedding always tie.
* Singleton rule: a query with no same-class item in the gallery (a class with one image
  in leave-one-out, or a query class absent from the gallery) has no correct answer.
  With ``singleton_queries="exclude"`` (default) such queries are left out of the
  average of Recall@K, MAP@R and R-precision; with ``"miss"`` they count as 0.
* K rule: K larger than what a query can retrieve (N - 1 in leave-one-out, the gallery
  size otherwise) raises ValueError unless ``clip_k=True``, in which case K is clipped
  to that number (so Recall@K is then 1 for every non-singleton query) and the result
  is still reported under the requested K. `max_retrievable` and `k_within_reach` are
  that rule; every function here uses them.

References:
    Recall@K as used in deep metric learning: Song et al., "Deep Metric Learning via
    Lifted Structured Feature Embedding", CVPR 2016.
    MAP@R and R-precision: Musgrave, Belongie and Lim, "A Metric Learning Reality
    Check", ECCV 2020, section 3.2.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Iterable, Sequence

import numpy as np


try:  # faiss is a hard requirement of the package, but keep the numpy path importable.
    import faiss
except ImportError:  # pragma: no cover - exercised only on installs without faiss
    faiss = None

#: Bytes a block of query-by-gallery similarities may take in the numpy backend (the
#: block plus argpartition's int64 index array of the same shape is 3x this for float32).
DEFAULT_BLOCK_BYTES = 128 * 2**20

BACKENDS = ("auto", "faiss", "numpy")
#: The metrics computed here, from a neighbour table.
METRICS = ("recall", "map@r", "r_precision")
SINGLETON_RULES = ("exclude", "miss")


@dataclasses.dataclass
class Neighbours:
    """A neighbour table.

    Attributes:
        indices: int32 array (num_queries, k), gallery indices of each query's k nearest
            neighbours, ranked by the module's tie rule.
        similarities: float32 array (num_queries, k), the matching cosine similarities.
        exclude_self: True when the table was built leave-one-out (query i is gallery
            item i and was removed from its own neighbours).
        num_gallery: number of gallery items searched.
    """

    indices: np.ndarray
    similarities: np.ndarray
    exclude_self: bool
    num_gallery: int

    @property
    def k(self) -> int:
        return self.indices.shape[1]


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation; all-zero rows stay zero (similarity 0 to everything).

    Args:
        x: float array (n, d). float32 and float64 keep their dtype, other dtypes become
            float32.
        eps: floor on the norm.
    """
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (n, d), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("embeddings contain NaN or Inf")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, eps).astype(x.dtype)


def max_retrievable(num_gallery: int, exclude_self: bool) -> int:
    """How many neighbours a query can have (the K rule's bound).

    Args:
        num_gallery: items searched (N, the queries themselves, in leave-one-out).
        exclude_self: leave-one-out: each query is a gallery item but never its own
            neighbour, so N - 1; otherwise the whole gallery.
    """
    return num_gallery - 1 if exclude_self else num_gallery


def k_within_reach(k: int, limit: int, clip_k: bool, asked: str) -> int:
    """The K rule: `k` when a query can retrieve that many (`limit`, see
    `max_retrievable`), else `limit` with ``clip_k``, else ValueError naming `asked`
    (e.g. "Recall@8")."""
    if k <= limit:
        return k
    if not clip_k:
        raise ValueError(f"{asked} asked but a query can retrieve at most {limit} items; "
                         "pass clip_k=True to clip K to that number")
    return limit


# ----------------------------------------------------------------------------------------
# Neighbour search
# ----------------------------------------------------------------------------------------


def _rank(indices: np.ndarray, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by decreasing similarity, then increasing index (the tie rule)."""
    order = np.lexsort((indices, -sims), axis=-1)
    return (np.take_along_axis(indices, order, axis=1),
            np.take_along_axis(sims, order, axis=1))


def _topk_rows_exact(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of each row of `sims` under the tie rule.

    `sims` (b, n) may hold -inf for excluded columns; k <= number of finite columns.
    """
    b, n = sims.shape
    if k < n:
        # argpartition puts the k largest at positions n-k..n-1, in no particular order
        # and with an arbitrary choice among ties at the boundary; fixed below.
        cols = np.argpartition(sims, n - k, axis=1)[:, n - k:]
    else:
        cols = np.broadcast_to(np.arange(n), (b, n)).copy()
    vals = np.take_along_axis(sims, cols, axis=1)
    kth = vals.min(axis=1)
    # A row has a tie straddling the cut when more than k items reach the k-th value;
    # then take every item above it and the lowest-indexed items equal to it.
    n_at_least = np.count_nonzero(sims >= kth[:, None], axis=1)
    for r in np.flatnonzero(n_at_least > k):
        above = np.flatnonzero(sims[r] > kth[r])
        equal = np.flatnonzero(sims[r] == kth[r])[: k - above.size]
        cols[r] = np.concatenate([above, equal])
        vals[r] = sims[r, cols[r]]
    return _rank(cols, vals)


def _knn_numpy(q, g, k, exclude_self, block_size):
    n_q, n_g = q.shape[0], g.shape[0]
    indices = np.empty((n_q, k), np.int32)
    sims_out = np.empty((n_q, k), np.float32)
    for start in range(0, n_q, block_size):
        stop = min(start + block_size, n_q)
        sims = q[start:stop] @ g.T  # (b, n_g), in the input dtype
        if exclude_self:
            rows = np.arange(stop - start)
            sims[rows, start + rows] = -np.inf
        idx, val = _topk_rows_exact(sims, k)
        indices[start:stop] = idx
        sims_out[start:stop] = val
    return indices, sims_out


def _knn_faiss(q, g, k, exclude_self, block_size):
    """faiss flat inner-product search, post-processed to follow the tie rule exactly.

    faiss returns the k best per query but its handling of exactly equal scores is an
    implementation detail, so one extra neighbour is requested: whenever the K-th and
    (K+1)-th scores are equal the row is recomputed with the exact numpy routine.
    """
    q32 = np.ascontiguousarray(q, dtype=np.float32)
    g32 = np.ascontiguousarray(g, dtype=np.float32)
    n_q, n_g = q32.shape[0], g32.shape[0]
    index = faiss.IndexFlatIP(g32.shape[1])
    index.add(g32)
    extra = 1 if k < max_retrievable(n_g, exclude_self) else 0  # the tie probe
    kk = k + extra + (1 if exclude_self else 0)
    indices = np.empty((n_q, k), np.int32)
    sims_out = np.empty((n_q, k), np.float32)
    for start in range(0, n_q, block_size):
        stop = min(start + block_size, n_q)
        d, i = index.search(q32[start:stop], kk)
        b = stop - start
        if exclude_self:
            is_self = i == np.arange(start, stop)[:, None]
            keep = ~is_self
            # Rows whose own index was not returned (it lost a tie to duplicates) drop
            # their last column instead, so every row keeps kk - 1 columns.
            keep[~is_self.any(axis=1), -1] = False
            d = d[keep].reshape(b, kk - 1)
            i = i[keep].reshape(b, kk - 1)
        if extra:
            tied = np.flatnonzero(d[:, k - 1] == d[:, k])
        else:
            tied = np.empty(0, np.int64)
        i, d = i[:, :k], d[:, :k]
        # faiss returns rows sorted by decreasing score; only runs of equal scores may
        # need reordering by index, so sort just the rows that contain one.
        has_tie = np.flatnonzero((d[:, 1:] == d[:, :-1]).any(axis=1))
        if has_tie.size:
            i[has_tie], d[has_tie] = _rank(i[has_tie], d[has_tie])
        for r in tied:
            row = (g32 @ q32[start + r])[None, :]
            if exclude_self:
                row[0, start + r] = -np.inf
            i[r], d[r] = (a[0] for a in _topk_rows_exact(row, k))
        indices[start:stop] = i
        sims_out[start:stop] = d
    return indices, sims_out


def knn(
    queries: np.ndarray,
    gallery: np.ndarray | None = None,
    k: int = 10,
    *,
    backend: str = "auto",
    block_size: int | None = None,
) -> Neighbours:
    """Blockwise top-k cosine neighbours; never builds the full similarity matrix.

    Args:
        queries: float array (n_q, d). Normalised here.
        gallery: float array (n_g, d), or None for leave-one-out search of `queries`
            against themselves with each query excluded from its own neighbours.
        k: neighbours per query; 1 <= k <= n_q - 1 (leave-one-out) or n_g.
        backend: "faiss" (flat inner-product index, float32 arithmetic, the fastest on
            CPU), "numpy" (reference; arithmetic in the input dtype, so float64 inputs
            give float64 similarities before they are stored as float32), or "auto"
            (faiss when installed).
        block_size: queries per block. Default: faiss 4096; numpy sized so one block of
            similarities takes about DEFAULT_BLOCK_BYTES.

    Returns:
        A `Neighbours` table ranked by the module's tie rule.

    Raises:
        ValueError: on a k outside the range above, or mismatched dimensions.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "faiss" if faiss is not None else "numpy"
    if backend == "faiss" and faiss is None:
        raise ImportError("backend='faiss' needs faiss-cpu")
    q = l2_normalize(queries)
    exclude_self = gallery is None
    g = q if exclude_self else l2_normalize(gallery)
    if g.shape[1] != q.shape[1]:
        raise ValueError(f"query dim {q.shape[1]} != gallery dim {g.shape[1]}")
    limit = max_retrievable(g.shape[0], exclude_self)
    k = int(k)
    if not 1 <= k <= limit:
        raise ValueError(
            f"k={k} but a query can retrieve at most {limit} items "
            f"({'N - 1, leave-one-out' if exclude_self else 'the gallery size'})")
    if backend == "faiss":
        block = block_size or 4096
        indices, sims = _knn_faiss(q, g, k, exclude_self, block)
    else:
        if block_size is None:
            block_size = max(1, DEFAULT_BLOCK_BYTES // (g.shape[0] * g.itemsize))
        indices, sims = _knn_numpy(q, g, k, exclude_self, block_size)
    return Neighbours(indices, sims, exclude_self, g.shape[0])


# ----------------------------------------------------------------------------------------
# Metrics from a neighbour table
# ----------------------------------------------------------------------------------------


def num_relevant(query_labels: np.ndarray, gallery_labels: np.ndarray | None) -> np.ndarray:
    """R of every query: how many gallery items share its label (itself excluded).

    Args:
        query_labels: int array (n_q,).
        gallery_labels: int array (n_g,), or None for leave-one-out (gallery = queries).
    """
    query_labels = np.asarray(query_labels).ravel()
    ref = query_labels if gallery_labels is None else np.asarray(gallery_labels).ravel()
    classes, counts = np.unique(ref, return_counts=True)
    pos = np.searchsorted(classes, query_labels)
    pos_clipped = np.minimum(pos, classes.size - 1)
    found = classes[pos_clipped] == query_labels
    r = np.where(found, counts[pos_clipped], 0)
    if gallery_labels is None:
        r = r - 1  # the query itself is in the gallery but never its own neighbour
    return r.astype(np.int64)


def required_k(ks: Iterable[int], query_labels, gallery_labels=None,
               metrics: Iterable[str] = METRICS) -> int:
    """Width of the neighbour table the requested metrics need (before clipping).

    Recall@K needs max(ks); MAP@R and R-precision need the largest R.
    """
    metrics = set(metrics)
    need = max(ks) if ("recall" in metrics and ks) else 1
    if metrics & {"map@r", "r_precision"}:
        need = max(need, int(num_relevant(query_labels, gallery_labels).max(initial=1)))
    return need


def _check_labels(labels, n, what):
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"{what} must be 1-D of length {n}, got shape {labels.shape}")
    return labels


def _query_mask(r: np.ndarray, singleton_queries: str) -> np.ndarray:
    if singleton_queries not in SINGLETON_RULES:
        raise ValueError(f"singleton_queries must be one of {SINGLETON_RULES}")
    if singleton_queries == "exclude":
        return r > 0
    return np.ones_like(r, dtype=bool)


def _mean(values: np.ndarray, mask: np.ndarray, name: str) -> float:
    if not mask.any():
        warnings.warn(f"{name}: no query has a same-class item in the gallery; NaN")
        return float("nan")
    return float(values[mask].mean())


def _recall(rel, ks, limit, clip_k, mask):
    """Recall@K for each K from the relevance table ``rel`` (queries, table width)."""
    table_k = rel.shape[1]
    # Position of the first correct neighbour (table_k when none in the table).
    first = np.where(rel.any(axis=1), rel.argmax(axis=1), table_k)
    out = {}
    for kk in ks:
        kk = int(kk)
        if kk < 1:
            raise ValueError(f"K must be >= 1, got {kk}")
        eff = k_within_reach(kk, limit, clip_k, f"Recall@{kk}")
        if eff > table_k:
            raise ValueError(f"neighbour table has k={table_k} < K={eff}")
        out[f"recall@{kk}"] = _mean((first < eff).astype(np.float64), mask, f"recall@{kk}")
    return out


def _r_metrics(rel, r, metrics, mask):
    """MAP@R and R-precision from the relevance table and each query's R."""
    table_k = rel.shape[1]
    r_max = int(r.max(initial=0))
    if r_max > table_k:
        raise ValueError(f"MAP@R needs a table of width max R = {r_max} > {table_k}")
    width = max(r_max, 1)
    ranks = np.arange(1, width + 1)
    within_r = ranks[None, :] <= r[:, None]  # only the first R neighbours count
    hits = rel[:, :width] & within_r
    safe_r = np.maximum(r, 1).astype(np.float64)
    out = {}
    if "map@r" in metrics:
        # MAP@R = (1/R) sum_{i<=R} P(i) rel(i), P(i) = precision at rank i.
        precision_at_i = np.cumsum(hits, axis=1) / ranks[None, :]
        ap = (precision_at_i * hits).sum(axis=1) / safe_r
        out["map@r"] = _mean(np.where(r > 0, ap, 0.0), mask, "map@r")
    if "r_precision" in metrics:
        rp = hits.sum(axis=1) / safe_r
        out["r_precision"] = _mean(np.where(r > 0, rp, 0.0), mask, "r_precision")
    return out


def retrieval_metrics(
    neighbours: Neighbours,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray | None = None,
    ks: Sequence[int] = (1, 2, 4, 8),
    metrics: Iterable[str] = METRICS,
    *,
    clip_k: bool = False,
    singleton_queries: str = "exclude",
) -> dict[str, float]:
    """Recall@K, MAP@R and R-precision from one neighbour table.

    Args:
        neighbours: table from `knn`, at least `required_k(...)` wide (or the most a
            query can retrieve, when that is smaller and `clip_k` is True).
        query_labels: int array (n_q,).
        gallery_labels: int array (n_g,), or None when the table is leave-one-out.
        ks: the K of Recall@K.
        metrics: any of "recall", "map@r", "r_precision".
        clip_k: see the module docstring.
        singleton_queries: "exclude" or "miss", see the module docstring.

    Returns:
        {"recall@K": ..., "map@r": ..., "r_precision": ...} for the requested metrics.
    """
    metrics = set(metrics)
    unknown = metrics - set(METRICS)
    if unknown:
        raise ValueError(f"unknown retrieval metrics {sorted(unknown)}")
    query_labels = _check_labels(query_labels, neighbours.indices.shape[0], "query_labels")
    if neighbours.exclude_self:
        gallery_labels = None
        ref = query_labels
    else:
        if gallery_labels is None:
            raise ValueError("the table has a separate gallery: pass gallery_labels")
        ref = _check_labels(gallery_labels, neighbours.num_gallery, "gallery_labels")
    r = num_relevant(query_labels, gallery_labels)
    mask = _query_mask(r, singleton_queries)
    # rel[q, j]: is the j-th neighbour of q of q's class.
    rel = ref[neighbours.indices] == query_labels[:, None]
    out: dict[str, float] = {}
    if "recall" in metrics:
        limit = max_retrievable(neighbours.num_gallery, neighbours.exclude_self)
        out.update(_recall(rel, ks, limit, clip_k, mask))
    if metrics & {"map@r", "r_precision"}:
        out.update(_r_metrics(rel, r, metrics, mask))
    return out


# ----------------------------------------------------------------------------------------
# The neighbour table the requested metrics need
# ----------------------------------------------------------------------------------------


def neighbour_table(
    embeddings: np.ndarray,
    labels: np.ndarray,
    gallery_embeddings: np.ndarray | None,
    gallery_labels: np.ndarray | None,
    need: int,
    clip_k: bool = False,
    backend: str = "auto",
    block_size: int | None = None,
) -> Neighbours:
    """The neighbour table `need` wide, checking inputs and applying the K rule.

    Args:
        embeddings, labels: the queries, (n, d) and (n,).
        gallery_embeddings, gallery_labels: a separate gallery, or both None for
            leave-one-out.
        need: table width wanted (see `required_k`).
        clip_k: clip `need` to what a query can retrieve instead of raising.
        backend, block_size: see `knn`.
    """
    embeddings = np.asarray(embeddings)
    _check_labels(labels, embeddings.shape[0], "labels")
    if (gallery_embeddings is None) != (gallery_labels is None):
        raise ValueError("pass both gallery_embeddings and gallery_labels, or neither")
    exclude_self = gallery_embeddings is None
    n_g = embeddings.shape[0] if exclude_self else np.asarray(gallery_embeddings).shape[0]
    limit = max_retrievable(n_g, exclude_self)
    need = k_within_reach(need, limit, clip_k, f"K={need}")
    if limit < 1:
        raise ValueError("nothing to retrieve: the gallery is empty")
    return knn(embeddings, gallery_embeddings, need, backend=backend,
               block_size=block_size)
