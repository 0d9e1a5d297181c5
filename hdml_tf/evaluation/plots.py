"""The pictures people look at: an embedding map, a retrieval grid, training curves.

All functions draw with matplotlib's Agg backend (no display needed), write one PNG and
return its path. ``hdml-tf demo`` (hdml_tf/demo.py) draws all three from real HDML runs.
"""

from __future__ import annotations

import csv
import math
import os
import re
from typing import Callable, Mapping, Sequence

import matplotlib
import numpy as np
# The object-oriented Figure API draws straight to files: no pyplot state and no global
# backend switch, so a notebook importing this module keeps its inline figures.
from matplotlib.figure import Figure

from hdml_tf.evaluation.retrieval import knn  # noqa: E402

#: Marker cycle combined with a 20-colour cycle: 20 x 7 = 140 distinguishable
#: (colour, marker) pairs, enough for the 100 classes of a CUB test split.
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
_METRIC_RE = re.compile(r"(^|_)(recall@\d+|map@r|r_precision|nmi|f1)$")


def _class_styles(n: int):
    """(colour, marker) per class: one marker and tab10/tab20 colours while they suffice,
    then colour x marker combinations so neighbouring classes differ in both."""
    if n <= 10:
        colours = matplotlib.colormaps["tab10"].colors
        return [(colours[i], "o") for i in range(n)]
    colours = matplotlib.colormaps["tab20"].colors
    # Step through tab20 with a stride coprime to 20: it pairs a dark and a light shade
    # of each hue, which consecutive class ids would otherwise get.
    if n <= 20:
        return [(colours[(7 * i) % 20], "o") for i in range(n)]
    return [(colours[(7 * i) % 20], _MARKERS[(i // 20) % len(_MARKERS)]) for i in range(n)]


def embedding_2d(embeddings: np.ndarray, method: str = "tsne", seed: int = 0,
                 perplexity: float = 30.0) -> np.ndarray:
    """Project embeddings (n, d) to 2-D with t-SNE (cosine metric), UMAP or PCA."""
    x = np.asarray(embeddings, np.float32)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perp = min(perplexity, max(2.0, (x.shape[0] - 1) / 3))
        return TSNE(2, perplexity=perp, init="pca", metric="cosine", random_state=seed
                    ).fit_transform(x)
    if method == "umap":
        try:
            import umap  # optional, not a dependency
        except ImportError as e:
            raise ImportError("method='umap' needs the umap-learn package") from e
        return umap.UMAP(metric="cosine", random_state=seed).fit_transform(x)
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(2, random_state=seed).fit_transform(x)
    raise ValueError(f"method must be 'tsne', 'umap' or 'pca', got {method!r}")


def plot_embedding_2d(
    embeddings: np.ndarray,
    labels: np.ndarray,
    path: str,
    *,
    method: str = "tsne",
    max_points: int = 5000,
    class_names: Mapping[int, str] | Sequence[str] | None = None,
    title: str | None = None,
    seed: int = 0,
) -> str:
    """2-D map of embeddings coloured by class.

    Legible for 10 to 100 classes: up to 20 classes get distinct colours and a legend;
    beyond that classes get (colour, marker) pairs and their id (or name) is written at
    the median of their points instead of a legend.

    Args:
        embeddings: float array (n, d).
        labels: int array (n,).
        path: PNG path to write.
        method: "tsne" (scikit-learn, cosine metric), "umap" (if umap-learn is
            installed) or "pca".
        max_points: random subsample (seeded) above this many points, for t-SNE time.
        class_names: optional names indexed by label.
        title: figure title; default names the method and counts.
        seed: seed of the subsample and of the projection.

    Returns:
        `path`.
    """
    x, y = _subsample(embeddings, labels, max_points, seed)
    xy = embedding_2d(x, method, seed)
    classes = np.unique(y)
    styles = _class_styles(classes.size)
    name = _namer(class_names)
    fig = Figure(figsize=(9, 8), dpi=110)
    ax = fig.subplots()
    size = 28 if x.shape[0] <= 2000 else 12
    for (colour, marker), c in zip(styles, classes):
        m = y == c
        ax.scatter(xy[m, 0], xy[m, 1], s=size, color=colour, marker=marker, alpha=0.8,
                   linewidths=0.3, edgecolors="white", label=name(c))
    if classes.size <= 20:
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9,
                  markerscale=1.5, frameon=False, title="class")
    else:
        _name_clusters(ax, xy, y, classes, styles, name)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"{method.upper()} of {x.shape[0]} embeddings, "
                 f"{classes.size} classes")
    fig.tight_layout()
    fig.savefig(path)
    return path


def _namer(class_names):
    """Label -> text: the class name when names are given, else the label itself."""
    return (lambda c: str(class_names[c])) if class_names is not None else str


def _subsample(embeddings, labels, max_points, seed):
    """Checked (embeddings, labels), a seeded random subset in order above max_points."""
    x = np.asarray(embeddings)
    y = np.asarray(labels).ravel()
    if x.shape[0] != y.shape[0]:
        raise ValueError("embeddings and labels have different lengths")
    if x.shape[0] > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(x.shape[0], max_points, False))
        x, y = x[keep], y[keep]
    return x, y


def _name_clusters(ax, xy, y, classes, styles, name):
    """Each class's name written at the median of its points (instead of a legend)."""
    import matplotlib.patheffects as pe

    # No legend can hold 100 entries: write each class id just above the median of
    # its points, in a darker shade of the class colour with a white halo, so it
    # names the cluster without hiding it.
    for (colour, _), c in zip(styles, classes):
        med = np.median(xy[y == c], axis=0)
        ax.annotate(name(c), med, xytext=(0, 5), textcoords="offset points",
                    fontsize=7, ha="center", va="bottom",
                    color=tuple(0.6 * np.asarray(colour[:3])),  # darker: legible
                    fontweight="bold",
                    path_effects=[pe.withStroke(linewidth=2.5, foreground="white")])


def _to_display(img: np.ndarray) -> tuple[np.ndarray, str | None]:
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    cmap = "gray" if img.ndim == 2 else None
    if img.dtype == np.uint8:
        return img, cmap
    img = img.astype(np.float32)
    lo, hi = float(img.min()), float(img.max())
    if not (lo >= 0.0 and hi <= 1.0):  # arbitrary range: stretch to [0, 1] per image
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return img, cmap


def plot_retrieval_grid(
    images: np.ndarray,
    labels: np.ndarray,
    embeddings: np.ndarray,
    path: str,
    *,
    k: int = 5,
    num_queries: int = 8,
    query_indices: Sequence[int] | None = None,
    gallery: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    image_transform: Callable[[np.ndarray], np.ndarray] | None = None,
    class_names: Mapping[int, str] | Sequence[str] | None = None,
    seed: int = 0,
) -> str:
    """Query images (first column) and their top-k neighbours, correct ones framed green
    and wrong ones red, each captioned with its class and cosine similarity.

    Args:
        images: (n, H, W), (n, H, W, 1) or (n, H, W, 3) array; uint8, floats in [0, 1],
            or any float range (stretched per image). Use `image_transform` for e.g.
            Caffe-preprocessed (BGR, mean-subtracted) images.
        labels: int array (n,).
        embeddings: float array (n, d) of the same images.
        path: PNG path.
        k: neighbours shown per query.
        num_queries: rows, picked at random (seeded) unless `query_indices` is given.
        query_indices: explicit query rows.
        gallery: optional (images, labels, embeddings) of a separate gallery; otherwise
            leave-one-out within `images` (the query is never its own neighbour).
        image_transform: maps one image to something `imshow` displays.
        class_names: optional names indexed by label.
        seed: seed of the query pick.

    Returns:
        `path`.
    """
    labels = np.asarray(labels).ravel()
    query_indices, nbrs, sims, g_images, g_labels = _grid_neighbours(
        images, labels, embeddings, k, num_queries, query_indices, gallery, seed)
    name = _namer(class_names)
    show = image_transform or (lambda im: im)
    rows, cols = len(query_indices), k + 1
    fig = Figure(figsize=(1.7 * cols, 1.95 * rows + 0.4), dpi=110)
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, q in enumerate(query_indices):
        _draw_image_cell(axes[r, 0], show(images[q]), f"query\nclass {name(labels[q])}",
                         "black", 2)
        for c in range(1, cols):
            j = nbrs[r, c - 1]
            lab = g_labels[j]
            ok = lab == labels[q]
            text = neighbour_caption(c, sims[r, c - 1], ok, name(lab))
            _draw_image_cell(axes[r, c], show(g_images[j]), text,
                             "#1a9e1a" if ok else "#d62728", 4)
    fig.suptitle(f"Top-{k} neighbours (green: same class, red: different class; "
                 "#rank, d: distance between the unit embeddings)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path


def neighbour_caption(rank: int, similarity: float, same_class: bool, class_name) -> str:
    """A neighbour's caption: its rank and its distance to the query, with 3 decimals.

    Good embeddings put many neighbours at cosine 0.99x, which two decimals of cosine
    all show as 1.00; the Euclidean distance between unit vectors,
    ``d = sqrt(2 - 2 cos)``, spreads that range out (cos 0.999 -> d 0.045, cos 0.990
    -> d 0.141), so neighbours read apart.
    """
    distance = float(np.sqrt(max(2.0 - 2.0 * float(similarity), 0.0)))
    return f"{'✓' if same_class else '✗'} class {class_name}\n#{rank}  d {distance:.3f}"


def _grid_neighbours(images, labels, embeddings, k, num_queries, query_indices, gallery,
                     seed):
    """The grid's query rows and, per query, its k neighbours, their similarities, and
    the gallery (images, labels) they index."""
    n = labels.shape[0]
    if query_indices is None:
        rng = np.random.default_rng(seed)
        query_indices = np.sort(rng.choice(n, min(num_queries, n), replace=False))
    query_indices = np.asarray(query_indices, int)
    emb = np.asarray(embeddings)
    if gallery is None:
        g_images, g_labels = images, labels
        table = knn(emb, None, k)
        nbrs, sims = table.indices[query_indices], table.similarities[query_indices]
    else:
        g_images, g_labels, g_emb = gallery
        g_labels = np.asarray(g_labels).ravel()
        table = knn(emb[query_indices], g_emb, k)
        nbrs, sims = table.indices, table.similarities
    return query_indices, nbrs, sims, g_images, g_labels


def _draw_image_cell(ax, img, text, colour, frame_width):
    """One image of the grid, framed and captioned in ``colour``."""
    disp, cmap = _to_display(img)
    ax.imshow(disp, cmap=cmap, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(frame_width)
    ax.set_title(text, fontsize=8, color=colour, pad=3)


def read_history(source) -> dict[str, list[float]]:
    """A History, a History.history dict, or a CSV log (keras CSVLogger or
    EvaluationCallback's csv_path) as {column: values}."""
    if hasattr(source, "history") and isinstance(source.history, dict):
        source = source.history
    if isinstance(source, Mapping):
        return {k: [float(v) for v in vals] for k, vals in source.items()}
    if isinstance(source, (str, os.PathLike)):
        with open(source, newline="") as f:
            rows = list(csv.DictReader(f))
        out: dict[str, list[float]] = {}
        for row in rows:
            for k, v in row.items():
                try:
                    out.setdefault(k, []).append(float(v) if v not in ("", None) else math.nan)
                except ValueError:
                    out.setdefault(k, []).append(math.nan)
        return out
    raise TypeError(f"cannot read a history from {type(source).__name__}")


#: The hardness schedule (HDML, Zheng et al., CVPR 2019, eq. (4) and Fig. 2): lambda and
#: w, both in [0, 1], and the fraction of candidate negatives actually hardened
#: (d- > d+) share a panel; the running losses J_avg and J_gen_avg that drive them share
#: another (two y axes: their scales differ by orders of magnitude).
SCHEDULE_KEYS = ("lambda", "w", "hardened_fraction")
SCHEDULE_STAT_KEYS = ("j_avg", "j_gen_avg")


def _has_data(values) -> bool:
    return bool(np.any(~np.isnan(np.asarray(values, float))))


def plot_training_curves(
    history,
    path: str,
    *,
    eval_log=None,
    schedule_log=None,
    title: str | None = None,
) -> str:
    """Training curves: one panel per loss term (train and `val_` of the same term
    together), the hardness schedule when logged, then one panel of Recall@K and one of
    MAP@R / R-precision / NMI / F1. Columns without any value (e.g. the all-"NA" `val_*`
    columns of a CSV log) draw no curve and no legend entry; panels left empty are
    dropped.

    Args:
        history: `fit`'s History, its .history dict or a CSV log path. Columns whose name
            contains "loss" are loss terms (e.g. "loss", "j_metric", "j_gen_loss" ...);
            also any column ending in "_loss" or starting with "j_" (except the schedule
            statistics "j_avg", "j_gen_avg"). The x axis is its "step" column if it has
            one, else "epoch", else the row number.
        path: PNG path.
        eval_log: optional second source (EvaluationCallback's CSV), whose "epoch" column
            is the x axis for its metrics.
        schedule_log: optional source of the schedule columns ("lambda", "w",
            "hardened_fraction", "j_avg", "j_gen_avg"), e.g. a per-step log; by default
            the `schedule_log.csv` beside a CSV `history` (a training workdir's), else
            `history` itself. Without them there is no schedule panel.
        title: figure title.

    Returns:
        `path`.
    """
    sources = _CurveSources(history, eval_log, schedule_log)
    panels, metric_src = _curve_panels(sources)
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.6 * ncols, 3.4 * nrows), dpi=110)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    colours = matplotlib.colormaps["tab10"].colors
    for ax, (kind, what) in zip(axes.flat, panels):
        if kind == "loss":
            x_src = _draw_loss_term(ax, sources, what)
        elif kind == "schedule":
            x_src = _draw_schedule(ax, sources, what, colours)
        elif kind == "stats":
            x_src = _draw_schedule_stats(ax, sources, what, colours)
        else:
            x_src = _draw_metrics(ax, sources, kind, what, metric_src, colours)
        ax.set_xlabel(sources.xlabel(x_src))
        ax.grid(alpha=0.3)
        if kind != "stats":
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    return path


class _CurveSources:
    """The logs a training-curves figure reads (`h` the history, `e` the evaluation log,
    `s` the schedule log, which is `h` itself when there is none) and each column's x."""

    def __init__(self, history, eval_log, schedule_log):
        self.h = read_history(history)
        self.e = read_history(eval_log) if eval_log is not None else {}
        if schedule_log is None and isinstance(history, (str, os.PathLike)):
            # A training workdir keeps the per-step schedule beside the per-epoch log.
            beside = os.path.join(os.path.dirname(os.fspath(history)), "schedule_log.csv")
            schedule_log = beside if os.path.exists(beside) else None
        self.s = read_history(schedule_log) if schedule_log is not None else self.h

    @staticmethod
    def x_key(src):
        """The x column of a source: its steps when logged, else its epochs, else None."""
        n = max((len(v) for v in src.values()), default=0)
        for key in ("step", "epoch"):
            if key in src and len(src[key]) == n and _has_data(src[key]):
                return key
        return None

    def xs(self, src, key):
        """The x values of column `key` of `src`."""
        x_key = self.x_key(src)
        n = len(src[key])
        if x_key is not None:
            vals = np.asarray(src[x_key], float)
            # Keras CSVLogger counts epochs from 0, EvaluationCallback from 1.
            if x_key == "epoch" and src is self.h and vals.size and vals[0] == 0:
                return vals + 1
            return vals
        return np.arange(1, n + 1)

    def xlabel(self, src):
        return "step" if self.x_key(src) == "step" else "epoch"


def _curve_panels(sources):
    """The panels of `plot_training_curves`, in order, as (kind, what) pairs, and
    {metric column: (source, column)}."""
    h, e, s = sources.h, sources.e, sources.s
    skip = {"epoch", "step", "lr", "learning_rate", *SCHEDULE_KEYS, *SCHEDULE_STAT_KEYS}
    loss_keys = [k for k in h if k not in skip and not _METRIC_RE.search(k)
                 and ("loss" in k or k.startswith(("j_", "val_j_")))
                 and k.removeprefix("val_") not in skip and _has_data(h[k])]
    terms = []
    for k in loss_keys:
        base = k[4:] if k.startswith("val_") else k
        if base not in terms:
            terms.append(base)
    metric_src = {**{k: (h, k) for k in h if _METRIC_RE.search(k) and _has_data(h[k])},
                  **{k: (e, k) for k in e if _METRIC_RE.search(k) and _has_data(e[k])}}
    recall_keys = sorted((k for k in metric_src if "recall@" in k),
                         key=lambda k: (k.startswith("val_"), int(k.split("@")[1])))
    other_keys = [k for k in metric_src if "recall@" not in k]
    terms.sort(key=lambda t: t != "loss")  # the total first, then terms in log order
    panels = [("loss", t) for t in terms]
    schedule = [k for k in SCHEDULE_KEYS if k in s and _has_data(s[k])]
    stats = [k for k in SCHEDULE_STAT_KEYS if k in s and _has_data(s[k])]
    if schedule:
        panels.append(("schedule", schedule))
    if stats:
        panels.append(("stats", stats))
    if recall_keys:
        panels.append(("recall", recall_keys))
    if other_keys:
        panels.append(("other", other_keys))
    if not panels:
        raise ValueError("no loss or metric columns found in the history")
    return panels, metric_src


def _draw_loss_term(ax, sources, term):
    """One loss term, train and `val_` together; returns the source of its x axis."""
    h = sources.h
    for key, style in ((term, "-"), (f"val_{term}", "--")):
        if key in h and _has_data(h[key]):
            ax.plot(sources.xs(h, key), h[key], style, marker=".", label=key)
    ax.set_title(term)
    return h


def _draw_schedule(ax, sources, keys, colours):
    """λ, w and the hardened fraction, all in [0, 1]."""
    s = sources.s
    names = {"lambda": "λ (synthesis)", "w": "w (J_m weight)",
             "hardened_fraction": "hardened fraction (d- > d+)"}
    for i, key in enumerate(keys):
        vals = np.asarray(s[key], float)
        ok = ~np.isnan(vals)
        ax.plot(sources.xs(s, key)[ok], vals[ok], marker=".", ms=3, color=colours[i],
                label=names[key])
    ax.set_ylim(-0.03, 1.03)
    ax.set_title("hardness schedule")
    return s


def _draw_schedule_stats(ax, sources, keys, colours):
    """J_avg and J_gen_avg, each on its own y axis, with one legend for both."""
    s = sources.s
    twin = None
    for i, key in enumerate(keys):
        # J_avg and J_gen_avg differ by orders of magnitude: own axes.
        target = ax if i == 0 else (twin := ax.twinx())
        vals = np.asarray(s[key], float)
        ok = ~np.isnan(vals)
        target.plot(sources.xs(s, key)[ok], vals[ok], marker=".", ms=3,
                    color=colours[3 + i], label=key)
        target.set_ylabel(key, color=colours[3 + i])
        # The running means start at their (large) initial value before the
        # window fills, then fall by orders of magnitude: log scale.
        if np.all(vals[ok] > 0):
            target.set_yscale("log")
    lines = ax.get_lines() + (twin.get_lines() if twin is not None else [])
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7)
    ax.set_title("J_avg, J_gen_avg (drive λ and w)")
    return s


def _draw_metrics(ax, sources, kind, keys, metric_src, colours):
    """Recall@K (``kind`` "recall") or the other metrics, zoomed on their values."""
    seen = []
    for i, key in enumerate(keys):
        msrc, col = metric_src[key]
        vals = np.asarray(msrc[col], float)
        ok = ~np.isnan(vals)
        seen.append(vals[ok])
        ax.plot(sources.xs(msrc, col)[ok], vals[ok], marker="o", ms=3,
                color=colours[i % 10], label=key)
    ax.set_title("Recall@K" if kind == "recall" else "MAP@R, R-precision, NMI, F1")
    # Zoom on the data (metrics of a trained model often sit within a few points
    # of each other near 1) but never beyond the metric's [0, 1] range.
    allv = np.concatenate(seen) if seen else np.array([0.0, 1.0])
    if allv.size:
        lo, hi = float(allv.min()), float(allv.max())
        pad = max(0.02, 0.1 * (hi - lo))
        ax.set_ylim(max(0.0, lo - pad) - 0.005, min(1.0, hi + pad) + 0.005)
    return metric_src[keys[0]][0]
