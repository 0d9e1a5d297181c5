"""The faults users meet (docs/reliability.md): two writers on one workdir, a damaged
newest checkpoint, a full disk while writing each kind of file."""

import errno
import glob
import json
import os
import signal
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from hdml_tf import checkpoints, serving_tools, workdir
from hdml_tf.workdir import WorkdirError, WorkdirLock, WriteError
from tests.integration.test_training import write_config
from tests.test_export import REPO, SUBPROCESS_ENV

TRAIN = [sys.executable, "-m", "hdml_tf_entry", "train", "--config"]


def _train(config, directory, **kwargs):
    return subprocess.run(TRAIN + [config, "--workdir", str(directory)], capture_output=True,
                          text=True, cwd=REPO, env=SUBPROCESS_ENV, timeout=600, **kwargs)


def _steps(path):
    with open(path) as f:
        return [int(line.split(",")[0]) for line in f.read().splitlines()[1:]]


# ------------------------------------------------------------------- two writers


def test_the_lock_names_its_holder_and_a_dead_holder_frees_it(tmp_path):
    with WorkdirLock(tmp_path, what="hdml-tf train --workdir x"):
        with pytest.raises(WorkdirError, match=rf"{tmp_path} is in use by process "
                                               rf"{os.getpid()} on .*hdml-tf train"):
            with WorkdirLock(tmp_path):
                pass
    with WorkdirLock(tmp_path):  # released: free again
        pass
    # The holder runs hdml_tf/workdir.py (standard library only) as a module of its
    # own: the same WorkdirLock, without importing the package (and TensorFlow).
    holder = subprocess.Popen([sys.executable, "-c", (
        "import importlib.util, sys, time;"
        "spec = importlib.util.spec_from_file_location('workdir', sys.argv[1]);"
        "workdir = importlib.util.module_from_spec(spec); spec.loader.exec_module(workdir);"
        "lock = workdir.WorkdirLock(sys.argv[2]).__enter__(); print('held', flush=True);"
        "time.sleep(600)"),
        os.path.join(REPO, "hdml_tf", "workdir.py"), str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirError, match=f"process {holder.pid} "):
            with WorkdirLock(tmp_path):
                pass
        holder.kill()  # kill -9: the kernel releases the lock
        holder.wait()
        with WorkdirLock(tmp_path):
            pass
    finally:
        holder.kill()


@pytest.mark.manual
@pytest.mark.slow
def test_a_second_trainer_on_a_workdir_fails_at_once_and_the_first_finishes(tmp_path):
    """Two `hdml-tf train` on one workdir, the second started while the first trains:
    the second exits 2 with one line naming the workdir and the first's process; the
    first finishes, its schedule log with strictly increasing steps.

    The first is paused (SIGSTOP) after its first checkpoint while the second is tried,
    so on a loaded machine it cannot finish (and free the workdir) before the second
    starts; it holds the lock all the while, then resumes (SIGCONT)."""
    config = write_config(tmp_path, train={"steps": 300, "steps_per_epoch": 10,
                                           "log_every": 10})
    run = tmp_path / "run"
    first = subprocess.Popen(TRAIN + [config, "--workdir", str(run)], cwd=REPO,
                             env=SUBPROCESS_ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not glob.glob(str(run / "checkpoints" / "ckpt-*.index")):
            assert first.poll() is None and time.time() < deadline, first.stderr.read()
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGSTOP)
        try:
            started = time.time()
            second = _train(config, run)
            elapsed = time.time() - started
            assert first.poll() is None, "the first run ended before the second was tried"
        finally:
            os.kill(first.pid, signal.SIGCONT)
        assert first.wait(timeout=600) == 0, first.stderr.read()
    finally:
        first.kill()
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert str(run) in lines[0] and f"process {first.pid} " in lines[0], lines
    print(f"second trainer refused after {elapsed:.1f} s")
    steps = _steps(run / "schedule_log.csv")
    assert steps == list(range(10, 301, 10))


# ------------------------------------------------------- a damaged newest checkpoint


@pytest.mark.manual
@pytest.mark.slow
def test_a_truncated_newest_checkpoint_is_stepped_over_and_the_run_ends_identical(tmp_path):
    """ckpt-60's data truncated to 1000 bytes: resuming says so in one line, sets it
    aside in checkpoints/damaged/, resumes from ckpt-50, re-runs the steps, and ends
    bit-identical to an uninterrupted run (weights and logs)."""
    config = write_config(tmp_path, train={"steps": 60, "steps_per_epoch": 10})
    reference, run = tmp_path / "reference", tmp_path / "run"
    for directory in (reference, run):
        assert _train(config, directory).returncode == 0
    data = glob.glob(str(run / "checkpoints" / "ckpt-60.data-*"))
    with open(data[0], "r+b") as f:
        f.truncate(1000)
    resumed = _train(config, run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    damaged = [l for l in resumed.stdout.splitlines() if "does not restore" in l]
    assert len(damaged) == 1 and "ckpt-60" in damaged[0], resumed.stdout
    assert "resumed from" in resumed.stdout and "ckpt-50 at step 50" in resumed.stdout
    assert sorted(os.listdir(run / "checkpoints" / "damaged")) == sorted(
        os.path.basename(p) for p in glob.glob(str(reference / "checkpoints" / "ckpt-60.*")))
    assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith("ckpt-60")
    from tests.integration.test_training import _assert_same_run
    _assert_same_run(reference, run, ["train_log.csv", "schedule_log.csv"])


@pytest.mark.manual
@pytest.mark.slow
def test_no_checkpoint_restores_is_one_line_and_exit_2(tmp_path):
    config = write_config(tmp_path, train={"steps": 20, "steps_per_epoch": 10})
    run = tmp_path / "run"
    assert _train(config, run).returncode == 0
    for data in glob.glob(str(run / "checkpoints" / "ckpt-*.data-*")):
        with open(data, "r+b") as f:
            f.truncate(100)
    result = _train(config, run)
    errors = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert f"{run}/checkpoints: no checkpoint restores (tried ckpt-20, ckpt-10" in errors[0]
    assert len(os.listdir(run / "checkpoints" / "damaged")) == 4  # kept, never deleted


# ------------------------------------------------------------------ a full disk


class _FullDisk:
    """``open``/``os.fdopen`` whose files take ``room`` bytes, then raise ENOSPC."""

    def __init__(self, real, room=10):
        self.real, self.room = real, room

    def __call__(self, *args, **kwargs):
        handle = self.real(*args, **kwargs)
        room, write = [self.room], handle.write

        def partial(data):
            if len(data) > room[0]:
                write(data[:room[0]])
                handle.flush()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            room[0] -= len(data)
            return write(data)

        handle.write = partial
        return handle


def _assert_kept(path, before, error):
    assert "\n" not in str(error) and str(path) in str(error), error
    assert "No space left on device" in str(error)
    with open(path, "rb") as f:
        assert f.read() == before
    assert not [n for n in os.listdir(os.path.dirname(path)) if n.endswith(".tmp")]


def test_full_disk_while_writing_a_log_row(tmp_path, monkeypatch):
    path = tmp_path / "schedule_log.csv"
    workdir.append_row(str(path), ["step", "x"], {"step": 10, "x": 0.5})
    before = path.read_bytes()
    monkeypatch.setattr(workdir, "open", _FullDisk(open, room=3), raising=False)
    with pytest.raises(WriteError) as error:
        workdir.append_row(str(path), ["step", "x"], {"step": 20, "x": 0.25})
    _assert_kept(path, before, error.value)


def test_full_disk_while_writing_metrics_json(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    workdir.write_json(str(path), {"test": {"recall@1": 0.5}})
    before = path.read_bytes()
    monkeypatch.setattr(workdir.os, "fdopen", _FullDisk(os.fdopen))
    with pytest.raises(WriteError) as error:
        workdir.write_json(str(path), {"test": {"recall@1": 0.75}, "more": list(range(99))})
    monkeypatch.undo()
    _assert_kept(path, before, error.value)
    assert json.loads(before) == {"test": {"recall@1": 0.5}}


def test_full_disk_while_writing_a_gallery(tmp_path, monkeypatch):
    path = tmp_path / "gallery.npz"
    serving_tools.save_embeddings(str(path), np.ones((2, 4)), ["a", "b"])
    before = path.read_bytes()
    monkeypatch.setattr(workdir.os, "fdopen", _FullDisk(os.fdopen, room=100))
    with pytest.raises(WriteError) as error:
        serving_tools.save_embeddings(str(path), np.zeros((50, 4)), [str(i) for i in range(50)])
    monkeypatch.undo()
    _assert_kept(path, before, error.value)
    assert serving_tools.load_embeddings(str(path))[1] == ["a", "b"]


def test_full_disk_while_writing_a_checkpoint(tmp_path, monkeypatch):
    """TensorFlow writes ckpt-<step>_temp and renames it when complete; a failure there
    leaves the previous checkpoint the latest, restorable, and no partial files."""
    from hdml_tf.training.callbacks import Checkpointer

    step = tf.Variable(10, dtype=tf.int64)
    model = type("M", (), {"metric_optimizer": type("O", (), {"iterations": step})()})()
    checkpoint = tf.train.Checkpoint(step=step, weights=tf.Variable([1.0, 2.0]))
    manager = tf.train.CheckpointManager(checkpoint, str(tmp_path), max_to_keep=3)
    saver = Checkpointer(manager)
    saver.set_model(model)
    saver.on_epoch_end(0)
    real_save = tf.train.CheckpointManager.save

    def full(self, checkpoint_number=None, **kwargs):
        partial = os.path.join(self.directory, f"ckpt-{checkpoint_number}_temp")
        os.makedirs(partial)
        with open(os.path.join(partial, "part-00000-of-00001.data"), "wb") as f:
            f.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tf.train.CheckpointManager, "save", full)
    step.assign(20)
    checkpoint.weights.assign([3.0, 4.0])
    with pytest.raises(WriteError, match=rf"could not write {tmp_path}/ckpt-20: No space"):
        saver.on_epoch_end(1)
    monkeypatch.setattr(tf.train.CheckpointManager, "save", real_save)
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-10")
    assert not glob.glob(str(tmp_path / "ckpt-20*"))
    checkpoints.restore(checkpoint, tf.train.latest_checkpoint(str(tmp_path)))
    assert checkpoint.weights.numpy().tolist() == [1.0, 2.0]


def test_full_disk_while_writing_a_savedmodel_version(tmp_path, monkeypatch):
    from hdml_tf import export
    from hdml_tf.export import publish
    from tests.test_export import CROP, RESIZE, tiny_embedder

    base = str(tmp_path / "tiny")
    export.export_embedder(tiny_embedder(seed=1), base, resize=RESIZE, crop=CROP,
                           warmup="skip", verify=False)
    real_dump = json.dump

    def full(obj, f, **kwargs):  # the metadata file, written last: the disk fills there
        f.write("{")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(publish.json, "dump", full)
    with pytest.raises(export.ExportError, match=rf"could not write a version of {base}: "
                                                 "No space left on device"):
        export.export_embedder(tiny_embedder(seed=2), base, resize=RESIZE, crop=CROP,
                               warmup="skip", verify=False)
    monkeypatch.setattr(publish.json, "dump", real_dump)
    assert sorted(os.listdir(base)) == [".lock", "1"]  # no version 2, no temp directory
    assert os.path.exists(os.path.join(base, "1", "saved_model.pb"))


def test_full_disk_while_saving_model_keras(tmp_path, monkeypatch):
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    path = tmp_path / "model.keras"
    checkpoints.atomic_save(model, str(path))
    before = path.read_bytes()

    def full(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"PK")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(keras.Model, "save", full)
    with pytest.raises(WriteError, match=rf"could not write {path}: No space"):
        checkpoints.atomic_save(model, str(path))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]
    shutil.rmtree(tmp_path, ignore_errors=True)
