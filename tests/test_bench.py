"""``hdml-tf bench``: the table's columns, and its numbers consistent with each other.

The smoke run measures real (tiny) steps, so only relations between printed numbers
are checked, never timings.
"""

import re

import pytest

from hdml_tf import bench, cli
from hdml_tf.config import load_config

COLUMNS = ["measurement", "precision", "ms/step", "images/s", "HDML/baseline", "skipped",
           "expected full run"]


@pytest.fixture(scope="module")
def smoke_output():
    lines = []
    rows = bench.run_bench(load_config("cub200_npair", [
        "model.backbone=small_cnn", "model.lrn=caffe", "data.batch_size=8", "data.resize=36",
        "data.crop=32",
        "model.embedding_dim=16", "model.generator_hidden=32", "data.eval_batch_size=8"],
        smoke=True), smoke=True, warmup=1, repeats=2, steps=1, out=lines.append)
    return lines, rows


def table(lines):
    body = [line for line in lines if line.startswith("|")]
    header = [c.strip() for c in body[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in body[2:]]
    return header, [dict(zip(header, r)) for r in rows]


@pytest.mark.manual
def test_one_table_with_the_documented_columns(smoke_output):
    lines, _ = smoke_output
    header, rows = table(lines)
    memory = [c for c in header if c.endswith("GiB")]
    assert [c for c in header if c not in memory] == COLUMNS and len(memory) == 1
    assert memory[0] in ("peak RSS GiB", "GPU peak GiB")
    steps = [r for r in rows if r["measurement"].endswith(" step")]
    kinds = {(r["measurement"], r["precision"]) for r in steps}
    half = "mixed_bfloat16" if memory[0] == "peak RSS GiB" else "mixed_float16"
    assert kinds == {(m, p) for m in ("baseline step", "HDML step") for p in ("float32", half)}
    pipelines = [r["measurement"] for r in rows if r["measurement"].startswith("input")]
    assert pipelines == ["input pipeline, decode 64x48 JPEGs", "input pipeline, decoded cache"]
    assert sum(line.startswith("expected full run of cub200_npair") for line in lines) == 1
    assert any(re.search(r"load average [\d.]+ at start", line) for line in lines)


@pytest.mark.manual
def test_ratios_and_rates_follow_from_the_printed_ms(smoke_output):
    lines, _ = smoke_output
    _, rows = table(lines)
    batch = 8
    for r in rows:
        assert float(r["images/s"]) == pytest.approx(1e3 * batch / float(r["ms/step"]),
                                                     abs=0.051)
    for precision in {r["precision"] for r in rows if r["measurement"] == "HDML step"}:
        (h,) = [r for r in rows if r["measurement"] == "HDML step"
                and r["precision"] == precision]
        (b,) = [r for r in rows if r["measurement"] == "baseline step"
                and r["precision"] == precision]
        assert float(h["HDML/baseline"]) == pytest.approx(
            float(h["ms/step"]) / float(b["ms/step"]), abs=5e-4)
        assert b["HDML/baseline"] == "-"
        done, ran = h["skipped"].split("/")
        assert int(ran) == 3 and 0 <= int(done) <= 3  # 1 warm-up + 2 x 1 timed


def test_expected_run_time_golden():
    """100 steps of 0.5 s (the pipeline, 128 images / 1000 per s = 0.128 s, keeps up),
    no periodic evaluation, one test evaluation of 5,924 images at
    max(1 ms forward, 1 ms decode): 50 + 5.924 s."""
    config = load_config("cub200_npair", ["train.steps=100", "train.eval_every=0"])
    total, included = bench.expected_run_seconds(
        config, bench.DATASETS["cub200"], 0.5, 1e-3, jpeg_rate=1000.0, cached_rate=4000.0)
    assert total == pytest.approx(55.924)
    assert "100 steps x 500 ms" in included
    config.data.cache = True  # + decoding the 5,864 training images once
    total, _ = bench.expected_run_seconds(
        config, bench.DATASETS["cub200"], 0.5, 1e-3, jpeg_rate=1000.0, cached_rate=4000.0)
    assert total == pytest.approx(55.924 + 5.864)


def test_cli_lists_and_dispatches_bench(capsys):
    assert cli.main(["--help"]) == 0
    assert "bench" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "--help"])
    assert exit_.value.code == 0
    assert "--smoke" in capsys.readouterr().out
    assert cli.main(["bench", "--config", "no_such_preset"]) == 2


@pytest.mark.manual
def test_a_triplet_preset_is_timed_with_triplet_batches(capsys):
    """The step is timed on a batch of the preset's own layout (three groups for a
    triplet model), and --smoke picks a batch size the loss accepts."""
    assert cli.main(["bench", "--config", "cub200_triplet", "--smoke"]) == 0
    out = capsys.readouterr().out
    assert "batch 12 (4 triplets)" in out
    _, rows = table(out.splitlines())
    steps = [r for r in rows if r["measurement"] in ("baseline step", "HDML step")]
    assert len(steps) == 4 and all(r["skipped"].startswith("0/") for r in steps)
