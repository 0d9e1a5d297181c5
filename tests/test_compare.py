"""`hdml-tf compare`: the statistics on known numbers, then a 2-seed smoke comparison on
generated Fashion-MNIST IDX files whose table is recomputed with numpy/scipy from the
runs' own metrics.json files, and a rerun that must reuse every finished run."""

import json
import math
import os
import re

import numpy as np
import pytest
from scipy import stats

from hdml_tf import cli
from hdml_tf import compare as compare_lib
from hdml_tf import config as config_lib
from tests.data.helpers_data import write_idx_gz


def test_paired_interval_golden_values():
    """Differences d = HDML − baseline = (2, 3, 4): mean 3, sample std 1 (squared
    deviations 1 + 0 + 1 over n − 1 = 2), standard error 1 / sqrt(3) = 0.577350;
    t(0.975, 2 dof) = 4.302653, so the half-width is 4.302653 * 0.577350 = 2.484138 and
    the 95% interval [0.515862, 5.484138] lies above 0: "HDML better". Shifting d to
    (1, 2, 3) gives [-0.484138, 4.484138], which holds 0; negating gives the mirror."""
    got = compare_lib.paired_interval([12.0, 13.0, 14.0], [10.0, 10.0, 10.0])
    assert got["n"] == 3 and got["mean_diff"] == pytest.approx(3.0)
    assert got["std_diff"] == pytest.approx(1.0)
    assert got["t"] == pytest.approx(4.302653, abs=1e-6)
    assert got["low"] == pytest.approx(0.515862, abs=1e-6)
    assert got["high"] == pytest.approx(5.484138, abs=1e-6)
    assert compare_lib.verdict(got) == "HDML better"

    overlap = compare_lib.paired_interval([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert (overlap["low"], overlap["high"]) == pytest.approx((-0.484138, 4.484138), abs=1e-6)
    assert compare_lib.verdict(overlap) == "no difference detected at 3 seeds"

    worse = compare_lib.paired_interval([10.0, 10.0, 10.0], [12.0, 13.0, 14.0])
    assert (worse["low"], worse["high"]) == pytest.approx((-5.484138, -0.515862), abs=1e-6)
    assert compare_lib.verdict(worse) == "baseline better"


def test_paired_interval_edge_cases():
    one = compare_lib.paired_interval([0.5], [0.4])
    assert one["mean_diff"] == pytest.approx(0.1)
    assert math.isnan(one["low"]) and math.isnan(one["high"])
    assert compare_lib.verdict(one) == "no difference detected at 1 seed"
    # Identical differences: zero spread, a point interval at the difference.
    flat = compare_lib.paired_interval([0.5, 0.6], [0.4, 0.5])
    assert flat["low"] == pytest.approx(0.1) and flat["high"] == pytest.approx(0.1)
    assert compare_lib.verdict(flat) == (
        "HDML better (all 2 differences equal: zero-width interval)")
    with pytest.raises(ValueError):
        compare_lib.paired_interval([0.5, 0.6], [0.4])


def test_compare_refuses_to_override_the_arm_or_seed():
    for assignment in ("model.hdml=false", "train.seed=3"):
        with pytest.raises(config_lib.ConfigError, match=assignment.split("=")[0]):
            compare_lib.run_config("fashion_mnist_npair", "hdml", 0, [assignment], smoke=True)
    config = compare_lib.run_config("fashion_mnist_npair", "baseline", 4, smoke=True)
    assert config.model.hdml is False and config.train.seed == 4
    assert config.train.export is False


def _noisy_fashion_idx(root, per_class_train=12, per_class_test=12):
    """Fashion-MNIST IDX files whose images are a fixed random template per class plus
    strong noise: unlike solid images, retrieval is imperfect, so the metrics differ
    between seeds and arms and the statistics are not all zero."""
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(0)
    templates = rng.uniform(0, 255, (10, 28, 28))
    for part, n in (("train", per_class_train), ("t10k", per_class_test)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), n)
        images = 0.35 * templates[labels] + 0.65 * rng.uniform(0, 255, (labels.size, 28, 28))
        write_idx_gz(os.path.join(root, f"{part}-images-idx3-ubyte.gz"), images.round())
        write_idx_gz(os.path.join(root, f"{part}-labels-idx1-ubyte.gz"), labels)
    return root


def _table_rows(markdown):
    """{metric: [cells]} from compare.md's Markdown table."""
    rows = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] not in ("metric",) and len(cells) == 6:
            rows[cells[0]] = cells
    return rows


def _numbers(text):
    return [float(x) for x in re.findall(r"[-+]?\d+\.\d+", text)]


@pytest.mark.manual
@pytest.mark.slow
def test_compare_smoke_two_seeds_arithmetic_and_reuse(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HDML_FASHION_MNIST_DIR", _noisy_fashion_idx(str(tmp_path / "fm")))
    workdir = tmp_path / "cmp"
    argv = ["--config", "fashion_mnist_npair", "--seeds", "2", "--workdir", str(workdir),
            "--smoke"]
    assert cli.main(["compare", *argv]) == 0
    printed = capsys.readouterr().out

    markdown = (workdir / "compare.md").read_text()
    assert "hdml-tf compare " + " ".join(argv) in markdown
    assert "Seeds: 0, 1" in markdown and "Student t" in markdown
    assert (workdir / "compare.png").stat().st_size > 10_000
    rows = _table_rows(markdown)
    assert rows and set(rows) == set(_table_rows(printed))  # the same table printed

    # Recompute every statistic from the runs' metrics.json with numpy and scipy.
    runs = {arm: [json.loads((workdir / f"seed{s}" / arm / "metrics.json").read_text())
                  ["test"] for s in (0, 1)] for arm in ("hdml", "baseline")}
    saved = json.loads((workdir / "compare.json").read_text())
    t975 = stats.t.ppf(0.975, 1)
    some_spread = False
    for metric, cells in rows.items():
        h = 100 * np.array([r[metric] for r in runs["hdml"]])
        b = 100 * np.array([r[metric] for r in runs["baseline"]])
        d = h - b
        half = t975 * d.std(ddof=1) / np.sqrt(2)
        expected = [h.mean(), h.std(ddof=1), b.mean(), b.std(ddof=1), d.mean(),
                    d.mean() - half, d.mean() + half]
        shown = _numbers(cells[1]) + _numbers(cells[2]) + _numbers(cells[3]) + \
            _numbers(cells[4])
        np.testing.assert_allclose(shown, expected, atol=0.0051, err_msg=metric)
        unrounded = saved["metrics"][metric]
        np.testing.assert_allclose(
            100 * np.array([unrounded["hdml"]["mean"], unrounded["baseline"]["std"],
                            unrounded["mean_diff"], unrounded["low"], unrounded["high"]]),
            [h.mean(), b.std(ddof=1), d.mean(), d.mean() - half, d.mean() + half],
            rtol=1e-9, atol=1e-9, err_msg=metric)
        low, high = d.mean() - half, d.mean() + half
        want = ("HDML better" if low > 0 else "baseline better" if high < 0
                else "no difference detected at 2 seeds")
        assert cells[5].startswith(want), metric
        some_spread |= bool(np.ptp(d) > 0 or h.std() > 0 or b.std() > 0)
    assert some_spread, "generated data gave identical metrics everywhere: a vacuous check"

    # Rerun: every finished run is reused, none retrained.
    metric_files = [workdir / f"seed{s}" / arm / "metrics.json"
                    for s in (0, 1) for arm in ("hdml", "baseline")]
    before = [os.stat(p).st_mtime_ns for p in metric_files]
    again = compare_lib.compare("fashion_mnist_npair", 2, str(workdir), smoke=True,
                                log=lambda *a: None)
    assert [os.stat(p).st_mtime_ns for p in metric_files] == before
    assert sorted(again["reused"]) == sorted(str(p.parent) for p in metric_files)
    assert again["metrics"]["recall@1"]["mean_diff"] == pytest.approx(
        saved["metrics"]["recall@1"]["mean_diff"])
    # A different config in the same workdir is refused, not silently mixed in.
    with pytest.raises(config_lib.ConfigError, match="different config"):
        compare_lib.compare("fashion_mnist_npair", 2, str(workdir), smoke=True,
                            overrides=["model.embedding_dim=32"], log=lambda *a: None)
