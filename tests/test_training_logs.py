"""schedule_log.csv on its own: the skip columns."""

import csv

from hdml_tf import training

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
