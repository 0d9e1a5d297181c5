"""schedule_log.csv on its own: the skip columns and a log started by an older version.

A run resumed with this version in a workdir whose schedule_log.csv has the old
six-column header must not append eight-value rows under it (the CSV would no longer
parse): the header is widened once, the old rows keep their values with empty cells
for the new columns.
"""

import csv

from hdml_tf import training

OLD_FIELDS = ("step", "lambda", "w", "j_avg", "j_gen_avg", "hardened_fraction")


class _FakeHDML:
    hdml = True

    def __init__(self, **stats):
        self.stats = {"lambda": 0.5, "w": 0.9, "j_avg": 1.0, "j_gen_avg": 2.0,
                      "hardened_fraction": 0.25, **stats}

    def statistics(self):
        return dict(self.stats)


def _log(path, model, start_step, batches):
    callback = training._ScheduleLog(str(path), every=10, start_step=start_step)
    callback.set_model(model)
    callback.on_epoch_begin(0)
    for batch in batches:
        callback.on_train_batch_end(batch)


def _rows(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_skip_columns_sum_every_optimizer(tmp_path):
    path = tmp_path / "schedule_log.csv"
    model = _FakeHDML(metric_skipped_steps=1, generator_skipped_steps=2,
                      classifier_skipped_steps=0, metric_loss_scale_skips=4)
    _log(path, model, 0, [9, 19])  # batch indices: steps 10 and 20
    fields, rows = _rows(path)
    assert fields == list(training._ScheduleLog.FIELDS)
    assert [r["step"] for r in rows] == ["10", "20"]
    assert {r["skipped_steps"] for r in rows} == {"3"}
    assert {r["loss_scale_skips"] for r in rows} == {"4"}


def test_an_old_log_is_widened_not_corrupted(tmp_path):
    path = tmp_path / "schedule_log.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(OLD_FIELDS)
        writer.writerow([10, 1.0, 1.0, 1e6, 1e6, 0.5])
    _log(path, _FakeHDML(metric_skipped_steps=0), 10, [9])  # resumed at step 10
    fields, rows = _rows(path)
    assert fields == list(training._ScheduleLog.FIELDS)
    assert [r["step"] for r in rows] == ["10", "20"]
    assert rows[0]["lambda"] == "1.0" and rows[0]["skipped_steps"] == ""
    assert rows[1]["skipped_steps"] == "0" and rows[1]["loss_scale_skips"] == "0"
    assert all(None not in r for r in rows)  # no row longer than the header
