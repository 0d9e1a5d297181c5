"""Tests of hdml_tf.evaluation.plots on scikit-learn's bundled digits (8x8, 10 classes).

These check that valid PNGs of a sensible size are written and that inputs are
validated; whether the pictures are legible was checked by eye (see the commit log).
"""

import csv
import math

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from hdml_tf.evaluation import plots


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    keep = np.arange(0, len(d.target), 5)  # 360 images: enough, and t-SNE stays fast
    return d.images[keep].astype(np.float32) / 16.0, d.data[keep].astype(np.float32), d.target[keep]


def _png_size(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_embedding_map(tmp_path, digits):
    _, x, y = digits
    path = plots.plot_embedding_2d(x, y, str(tmp_path / "map.png"), max_points=300)
    w, h = _png_size(path)
    assert w > 500 and h > 500


def test_embedding_map_many_classes_pca(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(60), 4)
    x = rng.standard_normal((60, 16))[y] + 0.3 * rng.standard_normal((240, 16))
    path = plots.plot_embedding_2d(x, y, str(tmp_path / "map60.png"), method="pca")
    _png_size(path)
    with pytest.raises(ValueError):
        plots.plot_embedding_2d(x, y, str(tmp_path / "bad.png"), method="mds")
    with pytest.raises(ValueError):
        plots.plot_embedding_2d(x, y[:-1], str(tmp_path / "bad.png"), method="pca")


def test_class_styles_distinct():
    for n in (10, 20, 100):
        styles = plots._class_styles(n)
        assert len(set(styles)) == n


def test_retrieval_grid(tmp_path, digits):
    images, x, y = digits
    path = plots.plot_retrieval_grid(images, y, x, str(tmp_path / "grid.png"), k=4,
                                     num_queries=3)
    w, h = _png_size(path)
    assert w > h  # 5 columns, 3 rows
    # Separate gallery, explicit queries, colour images in an arbitrary float range.
    rgb = np.repeat(images[..., None], 3, axis=-1) * 255 - 100
    path = plots.plot_retrieval_grid(rgb[:20], y[:20], x[:20], str(tmp_path / "grid2.png"),
                                     k=3, query_indices=[0, 1],
                                     gallery=(rgb[20:], y[20:], x[20:]))
    _png_size(path)


def test_training_curves_from_dict_and_csv(tmp_path):
    hist = {"loss": [3.0, 2.0, 1.5], "val_loss": [3.1, 2.2, 1.9], "j_metric": [1.0, 0.7, 0.5],
            "j_gen": [2.0, 1.0, 0.8], "val_recall@1": [0.2, 0.3, 0.35],
            "val_recall@2": [0.3, 0.4, 0.45], "val_nmi": [0.4, 0.5, 0.55]}
    _png_size(plots.plot_training_curves(hist, str(tmp_path / "curves.png")))
    log = tmp_path / "eval.csv"
    with open(log, "w", newline="") as f:
        w = csv.DictWriter(f, ["epoch", "step", "val_recall@1", "val_map@r"])
        w.writeheader()
        w.writerow({"epoch": 2, "step": 20, "val_recall@1": 0.3, "val_map@r": 0.1})
        w.writerow({"epoch": 4, "step": 40, "val_recall@1": 0.4, "val_map@r": 0.15})
    got = plots.read_history(str(log))
    assert got["epoch"] == [2.0, 4.0] and got["val_map@r"] == [0.1, 0.15]
    _png_size(plots.plot_training_curves({"loss": [1.0, 0.5, 0.4, 0.3]},
                                         str(tmp_path / "c2.png"), eval_log=str(log)))
    with pytest.raises(ValueError):
        plots.plot_training_curves({"accuracy": [0.1]}, str(tmp_path / "c3.png"))


@pytest.mark.manual
def test_import_leaves_the_matplotlib_backend_alone():
    """Notebooks keep inline figures: the plotting module must not switch backends."""
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg'); import hdml_tf.evaluation.plots, "
            "hdml_tf.serving_tools; print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**__import__("os").environ, "MPLBACKEND": ""})
    assert out.stdout.strip().splitlines()[-1] == "svg"


def _recording_figures(monkeypatch):
    """Keep every Figure the plotting module makes, to inspect panels and legends."""
    made = []

    class Recording(plots.Figure):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(plots, "Figure", Recording)
    return made


def _panels(fig):
    """{title: (legend texts, x label)} of the drawn panels (hidden axes left out)."""
    out = {}
    for ax in fig.axes:
        if not ax.axison or not ax.get_title():
            continue
        legend = ax.get_legend()
        texts = [t.get_text() for t in legend.get_texts()] if legend else []
        out[ax.get_title()] = (texts, ax.get_xlabel())
    return out


def test_training_curves_draw_the_schedule_from_a_per_step_log(tmp_path, monkeypatch):
    """A per-step CSV log with the schedule columns: lambda, w and the hardened fraction
    share a panel, J_avg and J_gen_avg another, on a step axis; the all-NA `val_*`
    columns (Keras CSVLogger writes them) draw no curve and no legend entry."""
    made = _recording_figures(monkeypatch)
    steps = np.arange(50, 550, 50)
    lam = np.linspace(0.9, 0.3, steps.size)
    log = tmp_path / "train_log.csv"
    columns = ["step", "j_metric", "j_gen", "lambda", "w", "j_avg", "j_gen_avg",
               "hardened_fraction", "val_j_metric", "val_lambda"]
    with open(log, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for i, step in enumerate(steps):
            writer.writerow([step, 2.0 / (i + 1), 900.0 - 10 * i, lam[i], 0.95 - 0.01 * i,
                             1.0 / (i + 1), 8000.0 - 100 * i, 0.2 + 0.05 * i, "NA", "NA"])
    _png_size(plots.plot_training_curves(str(log), str(tmp_path / "curves.png")))
    panels = _panels(made[-1])
    assert panels["hardness schedule"] == (
        ["λ (synthesis)", "w (J_m weight)", "hardened fraction (d- > d+)"], "step")
    assert panels["J_avg, J_gen_avg (drive λ and w)"] == (["j_avg", "j_gen_avg"], "step")
    assert panels["j_metric"] == (["j_metric"], "step")
    assert set(panels) == {"j_metric", "j_gen", "hardness schedule",
                           "J_avg, J_gen_avg (drive λ and w)"}
    schedule_ax = next(ax for ax in made[-1].axes if ax.get_title() == "hardness schedule")
    x, y = schedule_ax.get_lines()[0].get_data()
    np.testing.assert_allclose(x, steps)
    np.testing.assert_allclose(y, lam, rtol=1e-6)


def test_training_curves_without_schedule_columns_or_values(tmp_path, monkeypatch):
    """Older logs (no schedule columns) and baseline runs (schedule columns all NA)
    draw the loss terms only; a schedule column with values draws just that curve; a
    separate schedule log is read when given."""
    made = _recording_figures(monkeypatch)
    old = {"epoch": [0.0, 1.0, 2.0], "j_m": [3.0, 1.0, 0.8],
           "val_j_m": [math.nan] * 3, "nonfinite_steps": [0.0] * 3}
    plots.plot_training_curves(old, str(tmp_path / "old.png"))
    assert _panels(made[-1]) == {"j_m": (["j_m"], "epoch")}

    baseline = {**old, "lambda": [math.nan] * 3, "hardened_fraction": [math.nan] * 3,
                "j_avg": [math.nan] * 3}
    plots.plot_training_curves(baseline, str(tmp_path / "baseline.png"))
    assert _panels(made[-1]) == {"j_m": (["j_m"], "epoch")}

    partial = {**baseline, "w": [1.0, 0.9, 0.8]}
    plots.plot_training_curves(partial, str(tmp_path / "partial.png"))
    assert _panels(made[-1])["hardness schedule"] == (["w (J_m weight)"], "epoch")

    per_step = {"step": [10.0, 20.0], "lambda": [0.5, 0.4], "j_gen_avg": [9.0, 8.0]}
    plots.plot_training_curves(old, str(tmp_path / "sep.png"), schedule_log=per_step)
    panels = _panels(made[-1])
    assert panels["hardness schedule"] == (["λ (synthesis)"], "step")
    assert panels["J_avg, J_gen_avg (drive λ and w)"] == (["j_gen_avg"], "step")
    assert panels["j_m"] == (["j_m"], "epoch")


def test_training_curves_read_the_schedule_log_beside_a_workdir_log(tmp_path, monkeypatch):
    """A training workdir writes train_log.csv per epoch and schedule_log.csv per
    `train.log_every` steps; given the former, the schedule comes from the latter, and
    J_avg (which starts at its large initial value) is drawn on a log scale."""
    made = _recording_figures(monkeypatch)
    with open(tmp_path / "train_log.csv", "w", newline="") as f:
        f.write("epoch,j_m,lambda,val_j_m\n0,3.0,0.8,NA\n1,2.0,0.6,NA\n")
    with open(tmp_path / "schedule_log.csv", "w", newline="") as f:
        f.write("step,lambda,w,j_avg,j_gen_avg,hardened_fraction\n"
                "10,1.0,1.0,1000000.0,1000000.0,0.5\n20,0.7,0.95,2.0,9000.0,0.8\n")
    plots.plot_training_curves(str(tmp_path / "train_log.csv"), str(tmp_path / "c.png"))
    panels = _panels(made[-1])
    assert panels["j_m"] == (["j_m"], "epoch")
    assert panels["hardness schedule"][1] == "step"
    assert len(panels["hardness schedule"][0]) == 3
    stats_ax = next(ax for ax in made[-1].axes if ax.get_title().startswith("J_avg"))
    assert stats_ax.get_yscale() == "log"


def test_neighbour_caption_tells_close_neighbours_apart():
    """Unit vectors at cosine 0.999 are at distance sqrt(2 - 2 * 0.999) = 0.0447 and at
    0.9978 at 0.0663: two decimals of cosine showed both as 1.00."""
    from hdml_tf.evaluation.plots import neighbour_caption

    first = neighbour_caption(1, 0.999, True, "shirt")
    assert first == "✓ class shirt\n#1  d 0.045"
    assert neighbour_caption(2, 0.9978, False, 3) == "✗ class 3\n#2  d 0.066"
    assert neighbour_caption(1, 1.0000001, True, "x").endswith("d 0.000")  # rounding
