"""Retrieval across groups: a query's gallery is everything outside its own group.

Leave-one-out retrieval lets a query find its nearest twin: on the glyph benchmark
(`hdml_tf.data.glyphs`), the same character drawn by another weight of the same
typeface family (Noto Sans CJK Regular beside Noto Sans CJK Medium) is an easy match
that says little about recognising a character across styles. Here every item carries
a group (its typeface family) and is searched only against the items of the other
groups, so a character must be recognised in a different family.

Computed with the one-call protocol of `hdml_tf.evaluation.protocol` once per group
(queries: the group; gallery: the rest), and averaged over all queries. Recall@K,
MAP@R and R-precision are means over queries, so the query-weighted average of the
per-group means is the mean over all queries exactly. R of a query is the number of
items of its class in the other groups. A query with none (its class only in its own
group) follows the singleton rule of `hdml_tf.evaluation.retrieval` (excluded by
default).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from hdml_tf.evaluation.protocol import KS_SMALL, evaluate_embeddings
from hdml_tf.evaluation.retrieval import METRICS as RETRIEVAL_METRICS
from hdml_tf.evaluation.retrieval import num_relevant


def evaluate_across_groups(
    embeddings: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    ks: Sequence[int] = KS_SMALL,
    metrics: Sequence[str] = RETRIEVAL_METRICS,
    singleton_queries: str = "exclude",
    **kwargs,
) -> dict:
    """Retrieval metrics with each query searched against the other groups only.

    Args:
        embeddings: float array (n, d).
        labels: int array (n,), class ids.
        groups: array (n,) of group names or ids (e.g. typeface families); at least two
            distinct values.
        ks, metrics: as in `evaluate_embeddings`; retrieval metrics only ("recall",
            "map@r", "r_precision").
        singleton_queries: "exclude" or "miss", for queries whose class has no item in
            the other groups.
        **kwargs: forwarded to `evaluate_embeddings` (backend, block_size, clip_k).

    Returns:
        {"recall@K": ..., "map@r": ..., "r_precision": ..., "queries": number of
        queries averaged over}, values in [0, 1].
    """
    embeddings = np.asarray(embeddings)
    labels, groups = np.asarray(labels).ravel(), np.asarray(groups).ravel()
    if not len(labels) == len(groups) == len(embeddings):
        raise ValueError("embeddings, labels and groups must have the same length")
    if bad := [m for m in metrics if m not in RETRIEVAL_METRICS]:
        raise ValueError(f"only retrieval metrics {RETRIEVAL_METRICS} apply, got {bad}")
    names = np.unique(groups)
    if len(names) < 2:
        raise ValueError("evaluate_across_groups needs at least two groups")
    weighted_sums, count = {}, 0
    for name in names:
        query = groups == name
        r = num_relevant(labels[query], labels[~query])
        weight = int(np.sum(r > 0)) if singleton_queries == "exclude" else int(query.sum())
        if weight == 0:
            continue
        result = evaluate_embeddings(
            embeddings[query], labels[query], ks, metrics,
            gallery_embeddings=embeddings[~query], gallery_labels=labels[~query],
            singleton_queries=singleton_queries, **kwargs)
        for key, value in result.items():
            weighted_sums[key] = weighted_sums.get(key, 0.0) + weight * value
        count += weight
    if not count:
        raise ValueError("no query has an item of its class in another group")
    out = {key: value / count for key, value in weighted_sums.items()}
    out["queries"] = count
    return out
