"""hdml-tf train: config errors, kill -9 and resume, MirroredStrategy equivalence."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from hdml_tf import config as config_lib
from hdml_tf import training
from hdml_tf.training import loop
from hdml_tf import HDML, Embedder

DIGITS = {
    "name": "digits_test",
    "data": {"name": "digits", "resize": 12, "crop": 10, "batch_size": 10, "cache": True,
             "eval_batch_size": 300},
    "model": {"backbone": "small_cnn", "embedding_dim": 16, "window": 4, "alpha": 1.0,
              "beta": 1000.0, "weight_decay": 0.0005},
    "optim": {"lr_metric": 0.001, "lr_gen": 0.001, "lr_cls": 0.001},
    "train": {"steps": 30, "steps_per_epoch": 10, "export": False, "verbose": 0},
}


def write_config(tmp_path, **sections):
    payload = json.loads(json.dumps(DIGITS))
    for section, values in sections.items():
        payload[section].update(values)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(payload))
    return str(path)


# ---------------------------------------------------------------- config errors


@pytest.mark.parametrize("override, key", [
    ("model.embeding_dim=3", "model.embeding_dim"),
    ("data.batch_size=11", "data.batch_size"),
    ("train.steps=ten", "train.steps"),
    ("model.hdml=perhaps", "model.hdml"),
    ("train.strategy=horovod", "train.strategy"),
    ("data.crop=300", "data.crop"),
])
def test_config_errors_name_the_key(override, key):
    with pytest.raises(config_lib.ConfigError, match=key.replace(".", r"\.")):
        config_lib.load_config("cub200_npair", [override])


def test_a_configs_baseline_settings_apply_to_the_baseline_only(tmp_path):
    """A preset tuned per arm keeps the baseline's winners in ``baseline``: applied
    when model.hdml is false, under the user's own overrides."""
    path = tmp_path / "tuned.json"
    payload = json.loads(json.dumps(DIGITS))
    payload["baseline"] = {"optim.lr_metric": "0.002", "model.l2_reg": "0.01"}
    path.write_text(json.dumps(payload))
    hdml = config_lib.load_config(str(path))
    baseline = config_lib.load_config(str(path), ["model.hdml=false"])
    mine = config_lib.load_config(str(path), ["model.hdml=false", "optim.lr_metric=0.005"])
    assert (hdml.optim.lr_metric, hdml.model.l2_reg) == (0.001, 0.003)
    assert (baseline.optim.lr_metric, baseline.model.l2_reg) == (0.002, 0.01)
    assert (mine.optim.lr_metric, mine.model.l2_reg) == (0.005, 0.01)
    payload["baseline"] = {"optim.lr_metrik": "0.002"}
    path.write_text(json.dumps(payload))
    with pytest.raises(config_lib.ConfigError, match="optim.lr_metrik"):
        config_lib.load_config(str(path), ["model.hdml=false"])


def test_triplet_batch_must_divide_by_three():
    with pytest.raises(config_lib.ConfigError, match="divisible by 3"):
        config_lib.load_config("cub200_triplet", ["data.batch_size=128"])


def test_json_config_unknown_key(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"model": {"embedding_size": 64}}))
    with pytest.raises(config_lib.ConfigError, match="model.embedding_size"):
        config_lib.load_config(str(path))


def test_presets_state_their_command_and_are_valid():
    for name in config_lib.available_presets():
        config = config_lib.get_preset(name)
        config_lib.validate(config)
        doc = __import__(f"hdml_tf.configs.{name}", fromlist=["x"]).__doc__
        assert f"hdml-tf train --config {name}" in doc


def test_too_many_classes_per_batch_fails_before_training(tmp_path, capsys):
    """digits trains on 5 classes; batch_size 12 asks for P = 6."""
    workdir = tmp_path / "run"
    from hdml_tf import cli

    code = cli.main(["train", "--config", write_config(tmp_path),
                                "--set", "data.batch_size=12", "--workdir", str(workdir)])
    assert code == 2
    err = capsys.readouterr().err
    assert "data.batch_size" in err and "has 5" in err
    assert not (workdir / "checkpoints").exists()


@pytest.mark.manual
def test_changed_config_in_existing_workdir_is_refused(tmp_path):
    workdir = tmp_path / "run"
    config = config_lib.load_config(write_config(tmp_path, train={"steps": 10}))
    training.train(config, str(workdir), log=lambda *_: None)
    changed = config_lib.load_config(write_config(tmp_path, train={"steps": 10}),
                                     ["model.embedding_dim=8"])
    with pytest.raises(config_lib.ConfigError, match="model.embedding_dim"):
        training.train(changed, str(workdir), log=lambda *_: None)


# ------------------------------------------------------------- kill and resume


def _final_weights(workdir):
    model = keras.models.load_model(os.path.join(workdir, "model.keras"))
    return [w.numpy() for w in model.weights]


def _run_killed_and_resumed(tmp_path, config, kill_after_step):
    """The same `hdml-tf train` command run uninterrupted, and run, killed with SIGKILL
    once a checkpoint at or past ``kill_after_step`` exists, then run again."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "hdml_tf", "train", "--config", config]
    reference = tmp_path / "reference"
    subprocess.run(command + ["--workdir", str(reference)], env=env, check=True,
                   capture_output=True, timeout=600)

    workdir = tmp_path / "interrupted"
    process = subprocess.Popen(command + ["--workdir", str(workdir)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = workdir / "checkpoints"

    def latest_step():
        # CheckpointManager writes its state file after the checkpoint itself.
        latest = tf.train.latest_checkpoint(str(checkpoints))
        return int(latest.rsplit("-", 1)[1]) if latest else 0

    deadline = time.time() + 300
    try:
        while time.time() < deadline and process.poll() is None:
            if latest_step() >= kill_after_step:
                break
            time.sleep(0.02)
        assert process.poll() is None, "training ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    killed_at = latest_step()
    resumed = subprocess.run(command + ["--workdir", str(workdir)], env=env, check=True,
                             capture_output=True, text=True, timeout=600)
    assert "resumed from" in resumed.stdout
    return reference, workdir, killed_at


def _assert_same_run(reference, workdir, logs):
    for a, b in zip(_final_weights(reference), _final_weights(workdir), strict=True):
        np.testing.assert_array_equal(a, b)
    for name in logs:
        assert (reference / name).read_text() == (workdir / name).read_text(), name


@pytest.mark.manual
@pytest.mark.slow
def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path):
    """Killed with SIGKILL after its first checkpoint, the same command resumes and
    ends bit-identical to a run that was never interrupted (weights, optimizer-driven,
    and the per-epoch and schedule logs)."""
    config = write_config(tmp_path, train={"steps": 60, "steps_per_epoch": 10})
    reference, workdir, killed_at = _run_killed_and_resumed(tmp_path, config, 10)
    assert 10 <= killed_at < 60
    assert tf.train.latest_checkpoint(str(workdir / "checkpoints")).endswith("ckpt-60")
    _assert_same_run(reference, workdir, ["train_log.csv", "schedule_log.csv"])


@pytest.mark.manual
@pytest.mark.slow
def test_kill_9_after_an_evaluation_resumes_the_evaluation_state(tmp_path):
    """With periodic evaluation and best-weight selection on a validation split, a
    run killed after an evaluation resumes its best score, best weights and step
    counter: final weights and eval_log.csv equal the uninterrupted run's."""
    config = write_config(tmp_path, data={"val_fraction": 0.4, "batch_size": 6},
                          train={"steps": 60, "steps_per_epoch": 10, "eval_every": 20,
                                 "monitor": "recall@1"})
    reference, workdir, killed_at = _run_killed_and_resumed(tmp_path, config, 30)
    assert 30 <= killed_at < 60
    rows = (reference / "eval_log.csv").read_text().splitlines()
    assert [r.split(",")[1] for r in rows[1:]] == ["20", "40", "60"]
    _assert_same_run(reference, workdir, ["eval_log.csv", "train_log.csv"])


# ------------------------------------------------------ MirroredStrategy == 1 device


def _tiny_backbone():
    inputs = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(16)(x))


def _batches(count=3, pairs=4):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        labels = rng.choice(10, pairs, replace=False).astype(np.int32)
        images = tuple(rng.normal(size=(pairs, 10, 10, 3)).astype(np.float32) for _ in range(2))
        out.append((images, (labels, labels)))
    return out


def _train_under(strategy, batches):
    keras.utils.set_random_seed(0)
    sync = strategy.num_replicas_in_sync > 1
    with strategy.scope():
        model = HDML(Embedder(_tiny_backbone(), 8, synchronized_bn=sync), num_classes=10,
                     window=2, weight_decay=1e-3, synchronized_bn=sync)
        # SGD: Adam turns a zero gradient's round-off into a full +-lr step.
        model.compile(keras.optimizers.SGD(0.05), keras.optimizers.SGD(1e-4),
                      keras.optimizers.SGD(0.05))
        model.build((None, 10, 10, 3))  # and the optimizers (compiled first)
    spec = ((tf.TensorSpec((4, 10, 10, 3)),) * 2, (tf.TensorSpec((4,), tf.int32),) * 2)
    ds = tf.data.Dataset.from_generator(lambda: iter(batches), output_signature=spec)
    iterator = iter(strategy.experimental_distribute_dataset(ds))

    @tf.function
    def step(it):
        logs = strategy.run(model.train_step, args=(next(it),))
        return {k: strategy.experimental_local_results(v)[0] for k, v in logs.items()}

    logs = [{k: float(v) for k, v in step(iterator).items()} for _ in batches]
    return model, logs


@pytest.mark.manual
def test_mirrored_two_replicas_equal_one_device(two_replicas):
    """Global-batch N-pair negatives (all_gather), per-replica loss shares and
    synchronised BatchNorm make 2 replicas train like 1 device."""
    batches = _batches()
    single, single_logs = _train_under(tf.distribute.get_strategy(), batches)
    mirrored, mirrored_logs = _train_under(two_replicas, batches)
    for a, b in zip(single_logs, mirrored_logs):
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-4, err_msg=key)
    for a, b in zip(single.embedder.trainable_weights, mirrored.embedder.trainable_weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, err_msg=a.path)
    # The generator sees J_soft at scale 1e4: float32 summation order shows there.
    for a, b in zip(single.weights, mirrored.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-3, err_msg=a.path)


# ------------------------------------------------------------------ multi-worker


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.manual
@pytest.mark.slow
def test_two_worker_processes_train_together(tmp_path):
    """MultiWorkerMirroredStrategy from TF_CONFIG: two `hdml-tf train` processes on
    localhost ports, a few steps; both end, the chief writes the run."""
    config = write_config(tmp_path, data={"batch_size": 8},
                          train={"steps": 6, "steps_per_epoch": 3})
    workdir = tmp_path / "run"
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    processes = []
    try:
        for index in range(2):
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
                       TF_CONFIG=json.dumps({"cluster": cluster,
                                             "task": {"type": "worker", "index": index}}))
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "hdml_tf", "train", "--config", config,
                 "--workdir", str(workdir), "--strategy", "multiworker"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outputs = [p.communicate(timeout=420)[0] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in processes] == [0, 0], outputs
    for output in outputs:
        assert "2 replica(s)" in output
    assert (workdir / "metrics.json").exists() and (workdir / "model.keras").exists()
    assert tf.train.latest_checkpoint(str(workdir / "checkpoints")).endswith("ckpt-6")
    assert not (workdir / "_workers" / "worker_1").exists()


# ------------------------------------------------------------ steps per execution


@pytest.mark.manual
def test_steps_per_execution_keeps_steps_logs_and_checkpoints(tmp_path):
    """N steps in one tf.function call: the same checkpoints and schedule-log steps
    as one step per call (calls end at log rows and epoch ends), and bit-identical
    weights (every step runs in the same loop body whatever N is)."""
    runs = {}
    for n in (1, 7):
        config = config_lib.load_config(write_config(
            tmp_path, train={"steps": 20, "steps_per_epoch": 10, "log_every": 10,
                             "steps_per_execution": n}))
        workdir = tmp_path / f"n{n}"
        _, model = training.train(config, str(workdir), log=lambda *_: None,
                                  return_model=True)
        runs[n] = ([w.numpy() for w in model.weights],
                   (workdir / "schedule_log.csv").read_text())
        assert tf.train.latest_checkpoint(str(workdir / "checkpoints")).endswith("ckpt-20")
    for a, b in zip(runs[1][0], runs[7][0], strict=True):
        np.testing.assert_array_equal(a, b)
    steps = [[row.split(",")[0] for row in log.splitlines()] for _, log in runs.values()]
    assert steps[0] == steps[1] == ["step", "10", "20"]


def test_steps_to_boundary_stops_at_every_step_a_callback_acts_on():
    every_5 = [lambda s: s % 5 == 0]
    assert loop.steps_to_boundary(0, 10, 100, every_5) == 5
    assert loop.steps_to_boundary(5, 3, 100, every_5) == 3
    assert loop.steps_to_boundary(8, 10, 9, []) == 1  # the epoch ends at 9
    from hdml_tf.evaluation.callbacks import authors_schedule
    assert loop.steps_to_boundary(5050, 10, 6000, [authors_schedule]) == 6  # 5056


def test_paper_presets_run_the_authors_mode(capsys):
    """Every paper preset is in the authors' fidelity mode, and `hdml-tf presets`
    says so (docs/method.md's table)."""
    for name in config_lib.available_presets():
        config = config_lib.get_preset(name)
        paper = config.data.name in config_lib.AUTHORS_EVAL_EVERY
        expected = "authors" if paper else "custom"
        assert config_lib.fidelity(config) == expected, name
    changed = config_lib.load_config("cub200_npair", ["model.lrn=caffe"])
    assert config_lib.fidelity(changed) == "custom"
    from hdml_tf import cli

    cli.main(["presets"])
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("cub200_npair") and " authors " in line for line in lines)


# ------------------------------------------------- the head's BatchNorm statistics


def _metadata(version_dir):
    with open(os.path.join(version_dir, "assets.extra", "hdml_tf_metadata.json")) as f:
        return json.load(f)


def test_synthetic_head_statistics_are_reported_both_ways_and_not_exported(tmp_path):
    """A run whose synthetic pass moved the head's statistics ("sequential"): metrics.json
    holds the test metrics as trained and with the statistics re-estimated from the
    real training images; the export (auto) carries the re-estimated ones, and
    `hdml-tf export --head-statistics trained` the trained ones."""
    from hdml_tf import cli

    export_dir = tmp_path / "saved"
    config = config_lib.load_config(write_config(
        tmp_path, model={"head_bn_updates": "sequential"},
        train={"steps": 20, "export": True, "export_dir": str(export_dir)}))
    workdir = tmp_path / "run"
    results, model = training.train(config, str(workdir), log=lambda *_: None,
                                    return_model=True)
    metrics = json.loads((workdir / "metrics.json").read_text())
    train_images = len(training.load_splits(config)["train"])
    assert metrics["head_statistics"]["images"] == train_images
    assert metrics["head_statistics"]["variance_ratio"] > 0
    assert set(metrics["test_real_head_statistics"]) == set(metrics["test"])
    exported = _metadata(os.path.join(results["export"], "1"))["head_statistics"]
    assert exported == dict(metrics["head_statistics"], source="real training images")
    # model.keras keeps the statistics as trained; the in-memory model was re-estimated.
    saved = keras.models.load_model(str(workdir / "model.keras"))
    assert not np.allclose(saved.embedder.head.bn.moving_variance.numpy(),
                           model.embedder.head.bn.moving_variance.numpy())
    base = str(tmp_path / "cli")
    for mode, source in (("trained", "as trained"), ("auto", "real training images")):
        assert cli.main(["export", "--checkpoint", str(workdir), "--out", base,
                         "--head-statistics", mode, "--no-warmup", "--no-verify"]) == 0
    versions = sorted(os.listdir(base), key=lambda n: (not n.isdigit(), n))
    sources = [_metadata(os.path.join(base, v))["head_statistics"]["source"]
               for v in versions if v.isdigit()]
    assert sources == ["as trained", "real training images"]


def test_real_head_statistics_need_no_reestimation(tmp_path):
    """The default ("real"): nothing re-estimated, the export is the trained model."""
    export_dir = tmp_path / "saved"
    config = config_lib.load_config(write_config(
        tmp_path, train={"steps": 10, "export": True, "export_dir": str(export_dir)}))
    assert config.model.head_bn_updates == "real"
    results = training.train(config, str(tmp_path / "run"), log=lambda *_: None)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "test_real_head_statistics" not in metrics and "head_statistics" not in metrics
    exported = _metadata(os.path.join(results["export"], "1"))
    assert exported["head_statistics"] == {"source": "as trained"}
