"""`hdml-tf demo --smoke` end to end on generated Fashion-MNIST IDX files."""

import json
import os
import subprocess
import sys

import pytest

from tests.data.helpers_data import make_fashion_idx
from tests.test_export import REPO


@pytest.mark.slow
def test_demo_smoke_trains_both_evaluates_plots_and_exports(tmp_path):
    """What a user runs (`hdml-tf demo`: hdml_tf_entry.main), in a fresh process with the
    user's environment: every line it prints (stdout and stderr) fits 100 columns,
    there is one short progress line per epoch and no TensorFlow start-up line."""
    data_dir = make_fashion_idx(str(tmp_path / "fmnist"), per_class_train=12, per_class_test=12)
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES", "HDML_TF_VERBOSE")}
    env.update(HDML_FASHION_MNIST_DIR=data_dir, PYTHONPATH=REPO)
    out, exports = tmp_path / "demo", tmp_path / "saved_models"
    # Run from the output folder with the README's short relative paths, as a user does.
    result = subprocess.run(
        [sys.executable, "-m", "hdml_tf_entry", "demo", "--smoke", "--out", "demo",
         "--export-dir", "saved_models"], capture_output=True, text=True, cwd=tmp_path,
        env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout
    lines = (result.stdout + result.stderr).splitlines()
    assert max(len(line) for line in lines) <= 100, max(lines, key=len)
    assert not [l for l in lines if "cuInit" in l or "oneDNN" in l or "e+00" in l], lines
    assert "HDML" in printed and "baseline" in printed
    # Smoke: 6 steps in epochs of 3, one line each, per arm; HDML's shows λ and w.
    progress = [l for l in lines if l.startswith("step ")]
    assert [l.split()[1] for l in progress] == ["3/6", "6/6"] * 2, progress
    assert "λ" in progress[0] and "w" in progress[0] and "λ" not in progress[2]
    table = (out / "results.md").read_text()
    for key in ("recall@1", "recall@8", "nmi", "f1", "map@r"):
        assert key in table
    lines = table.split("```")[1].strip().splitlines()
    header, rows = lines[0].split(), {l.split()[0]: l.split() for l in lines[2:]}
    for run, name in (("hdml", "HDML"), ("baseline", "baseline")):
        metrics = json.loads((out / run / "metrics.json").read_text())["test"]
        # The table shows each run's own metrics.json, in %.
        for key in ("recall@1", "recall@8", "nmi"):
            assert rows[key][header.index(name)] == f"{100 * metrics[key]:.2f}", (key, table)
        # Recall@K counts a query as a hit when one of its K nearest neighbours
        # matches, so it cannot fall as K grows.
        ks = sorted(int(k.split("@")[1]) for k in metrics if k.startswith("recall@"))
        assert len(ks) >= 2
        recalls = [metrics[f"recall@{k}"] for k in ks]
        assert recalls == sorted(recalls), dict(zip(ks, recalls))
        for picture in (f"embedding_map_{run}.png", f"retrieval_{run}.png",
                        f"training_curves_{run}.png"):
            assert (out / picture).stat().st_size > 10_000, picture
    # Only the HDML run is exported, as version 1 of fashion_mnist_hdml.
    versions = sorted(n for n in os.listdir(exports / "fashion_mnist_hdml") if n != ".lock")
    assert versions == ["1"]
    assert (exports / "fashion_mnist_hdml" / "1" / "saved_model.pb").exists()


def test_demo_without_data_explains_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HDML_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    import hdml_tf.data.fashion_mnist as fm

    monkeypatch.setattr(fm, "DEBIAN_DIR", str(tmp_path / "no-debian"))
    from hdml_tf import cli

    code = cli.main(["demo", "--smoke", "--out", str(tmp_path / "demo")])
    err = capsys.readouterr().err
    assert code == 1
    assert "dataset-fashion-mnist" in err and "HDML_FASHION_MNIST_DIR" in err
