"""The training callbacks on their own: steps from the model's one step counter."""

import csv
import types

from hdml_tf.training import callbacks


class _FakeHDML:
    """What the callbacks read of a model: params.hdml, statistics(), the step."""

    def __init__(self, params=None, **stats):
        self.params = types.SimpleNamespace(**{
            "hdml": True, "alpha": 1.0, "beta": 1.0, "lambda_start": None,
            "w_start": None, **(params or {})})
        self.stats = {"lambda": 0.5, "w": 0.9, "j_avg": 1.0, "j_gen_avg": 2.0,
                      "alpha": 1.0, "beta": 1.0, "j_avg_windows": 1,
                      "j_gen_avg_windows": 1, "hardened_fraction": 0.25, **stats}
        self.metric_optimizer = types.SimpleNamespace(
            iterations=types.SimpleNamespace(numpy=lambda: self.step))
        self.step = 0

    def statistics(self):
        return dict(self.stats)


def _rows(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_schedule_log_rows_at_every_step_of_the_counter_and_skip_sums(tmp_path):
    """Calls after steps 7, 10, 14 and 20 (executions of several steps): rows at the
    steps that are multiples of 10, whatever the batch index Keras passes."""
    path = tmp_path / "schedule_log.csv"
    model = _FakeHDML(metric_skipped_steps=1, generator_skipped_steps=2,
                      classifier_skipped_steps=0, metric_loss_scale_skips=4)
    log = callbacks.ScheduleLog(str(path), every=10)
    log.set_model(model)
    for step in (7, 10, 14, 20):
        model.step = step
        log.on_train_batch_end(0)
    fields, rows = _rows(path)
    assert fields == list(callbacks.ScheduleLog.FIELDS)
    assert [r["step"] for r in rows] == ["10", "20"]
    assert {r["skipped_steps"] for r in rows} == {"3"}
    assert {r["loss_scale_skips"] for r in rows} == {"4"}


def _pinned_lines(model, steps, window=64, every=10):
    lines = []
    check = callbacks.PinnedScheduleWarning(window, every, print_fn=lines.append)
    check.set_model(model)
    for step in steps:
        model.step = step
        if callable(model.stats.get("at")):
            model.stats.update(model.stats["at"](step))
        check.on_train_batch_end(0)
    return lines


def test_pinned_lambda_is_one_line_naming_the_constant_and_the_loss():
    """α = 90 against J_avg = 2.1: λ = 0 from the first window on; one line, once."""
    model = _FakeHDML(params={"alpha": 90.0}, **{"lambda": 0.0, "alpha": 90.0,
                                                  "j_avg": 2.1})
    lines = _pinned_lines(model, range(70, 400, 10))
    assert len(lines) == 1
    assert "λ stayed at 0 from step 70 to 140" in lines[0]
    assert "α = 90, J_avg = 2.1" in lines[0] and "model.lambda_start" in lines[0]
    assert "\n" not in lines[0]


def test_pinned_w_near_one_is_said_too_and_a_moving_lambda_is_not():
    model = _FakeHDML(**{"lambda": 0.5, "w": 0.9999, "beta": 1e3, "j_gen_avg": 1e7})
    lines = _pinned_lines(model, range(70, 400, 10))
    assert len(lines) == 1 and lines[0].startswith("warning: w stayed at 1")
    assert "β = 1000, J_gen_avg = 1e+07" in lines[0]


def test_no_warning_in_the_first_window_for_a_short_pin_or_when_asked():
    # The first window (J_avg still its initial value): λ ~ 1 by construction.
    first = _FakeHDML(**{"lambda": 1.0, "j_avg_windows": 0, "j_gen_avg_windows": 0})
    assert _pinned_lines(first, range(10, 400, 10)) == []
    # Pinned for less than a window, then free: nothing.
    short = _FakeHDML(at=lambda step: {"lambda": 0.0 if step < 120 else 0.3})
    assert _pinned_lines(short, range(70, 400, 10)) == []
    # A fitted schedule (λ from 0.5 at the first window, then toward 0 as the loss
    # falls): the user's.
    asked = _FakeHDML(params={"lambda_start": 0.5}, **{"lambda": 0.0})
    assert _pinned_lines(asked, range(70, 400, 10)) == []


def test_keep_rows_drops_what_a_resumed_run_rewrites(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("step,x\n10,a\n20,b\n30,c\n")
    callbacks.keep_rows(str(path), lambda row: int(row["step"]) <= 20)
    assert path.read_text().splitlines() == ["step,x", "10,a", "20,b"]
    callbacks.keep_rows(str(tmp_path / "missing.csv"), lambda row: False)  # no file: fine


def test_progress_line_fits_100_columns_and_names_skips_only_when_nonzero(monkeypatch):
    clock = iter([0.0, 6.0])  # 250 steps of 10 images in 6 s: 417 img/s, ETA 30 s
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: next(clock))
    lines = []
    model = _FakeHDML(metric_skipped_steps=0, generator_skipped_steps=2)
    line = callbacks.ProgressLine(total_steps=1500, batch_size=10, print_fn=lines.append)
    line.set_model(model)
    line.on_epoch_begin(0)
    model.step = 250
    line.on_epoch_end(0, {"j_m": 1.40625, "j_metric": 1.388})
    assert lines[0].startswith("step  250/1500  417 img/s") and "J_m 1.406" in lines[0]
    assert "417 img/s" in lines[0] and "ETA 30s" in lines[0]
    assert "λ 0.500" in lines[0] and "w 0.900" in lines[0]
    assert "skipped generator 2" in lines[0] and "metric" not in lines[0].split("skipped")[1]
    assert len(lines[0]) <= 100
