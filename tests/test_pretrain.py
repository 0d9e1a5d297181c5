"""hdml-tf pretrain: a backbone pretrained on a folder's "pretrain" classes, written as
the weights file a fine-tuning preset loads (model.weights), with its SHA-256."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from hdml_tf import cli
from hdml_tf import config as config_lib
from hdml_tf.backbones import build_backbone, sha256_file
from hdml_tf.experiment import build_model
from hdml_tf.training import pretrain

SPLITS = {"pretrain": 10, "train": 4, "val": 2, "test": 3}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A glyph-like folder: 16 x 16 grey PNGs, each class its own pattern plus noise,
    four images a class, and a splits.txt naming the four splits."""
    root = tmp_path_factory.mktemp("ft")
    rng = np.random.default_rng(0)
    lines = []
    for split, count in SPLITS.items():
        for c in range(count):
            name = f"{split}{c}"
            pattern = rng.integers(0, 256, (16, 16))
            os.makedirs(root / name)
            for i in range(4):
                noisy = np.clip(pattern + rng.normal(0, 20, (16, 16)), 0, 255)
                Image.fromarray(noisy.astype(np.uint8), "L").save(root / name / f"f{i}.png")
            lines.append(f"{split} {name}\n")
    (root / "splits.txt").write_text("".join(lines))
    return str(root)


def _pretrain(folder, out, *extra):
    return cli.run_command("pretrain", ["--config", "glyphs_finetune_npair", "--set",
                                        f"data.root={folder}", "--out", str(out),
                                        "--steps", "4", *extra])


def test_writes_the_weights_and_a_record_of_them(folder, tmp_path, capsys):
    out = tmp_path / "pre" / "cnn.weights.h5"
    assert _pretrain(folder, out) == 0
    record = json.loads((tmp_path / "pre" / "cnn.pretrain.json").read_text())
    assert record["sha256"] == sha256_file(str(out))
    assert record["classes"] == SPLITS["pretrain"]
    # one image of each class held out for the accuracy, three trained on
    assert record["held_out_images"] == 10 and record["train_images"] == 30
    assert 0.0 <= record["held_out_accuracy"] <= 1.0 and record["settings"]["steps"] == 4
    assert record["settings"]["objective"] == "npair" and np.isfinite(record["final_loss"])
    assert record["command"].startswith("hdml-tf pretrain --config glyphs_finetune_npair")
    # The same command writes the same bytes (same machine).
    again = tmp_path / "again.weights.h5"
    assert _pretrain(folder, again) == 0
    assert sha256_file(str(again)) == record["sha256"]
    # An existing file is kept: one line, exit 1, nothing trained.
    capsys.readouterr()
    assert _pretrain(folder, out, "--seed", "1") == 1
    err = capsys.readouterr().err
    assert "exists" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert sha256_file(str(out)) == record["sha256"]
    # A weights file the backbone cannot load under that name is refused before training.
    assert _pretrain(folder, tmp_path / "cnn.npz") == 2
    assert ".weights.h5" in capsys.readouterr().err
    # The fine-tuning preset loads exactly these weights into its backbone.
    config = config_lib.load_config("glyphs_finetune_npair", [
        f"data.root={folder}", f"model.weights={out}", "data.batch_size=8"])
    model = build_model(config, SPLITS["train"])
    loaded = build_backbone("small_cnn", str(out), input_shape=(16, 16, 3))
    fresh = build_backbone("small_cnn", None, input_shape=(16, 16, 3))
    mine = [w.numpy() for w in model.embedder.backbone.weights]
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(mine, loaded.weights))
    assert not all(np.array_equal(a, b.numpy()) for a, b in zip(mine, fresh.weights))


def test_the_softmax_objective_trains_a_classifier_over_every_class(folder, tmp_path):
    out = tmp_path / "softmax.weights.h5"
    assert _pretrain(folder, out, "--objective", "softmax") == 0
    record = json.loads((tmp_path / "softmax.pretrain.json").read_text())
    assert record["settings"]["objective"] == "softmax"
    assert _pretrain(folder, tmp_path / "five.weights.h5", "--classes", "5") == 0
    five = json.loads((tmp_path / "five.pretrain.json").read_text())
    assert five["classes"] == 5 and five["held_out_images"] == 5 and five["train_images"] == 15
    fresh = build_backbone("small_cnn", None, input_shape=(16, 16, 3))
    trained = build_backbone("small_cnn", str(out), input_shape=(16, 16, 3))
    assert not all(np.array_equal(a.numpy(), b.numpy())
                   for a, b in zip(fresh.weights, trained.weights))


def test_nearest_mean_accuracy_counts_the_images_nearest_their_own_class():
    import types

    import tensorflow as tf

    from hdml_tf.data.base import ImageDataset

    class Identity:
        preprocessing = "tf"

        def __call__(self, x):
            return tf.reshape(x, (tf.shape(x)[0], -1))

    images = np.zeros((6, 2, 2, 3), np.uint8)
    images[[0, 1, 4], 0, 0, 0] = 255  # class 0: red top-left
    images[[2, 3, 5], 1, 1, 1] = 255  # class 1: green bottom-right
    labels = np.array([0, 0, 1, 1, 1, 0])  # images 4 and 5 sit with the other class
    split = ImageDataset(name="t", split="pretrain", labels=labels, class_ids=np.arange(2),
                         class_names=["a", "b"], images=images)
    train = pretrain._subset(split, np.array([1, 1, 1, 1, 0, 0], bool))
    check = pretrain._subset(split, np.array([0, 0, 0, 0, 1, 1], bool))
    config = types.SimpleNamespace(eval_batch_size=4, resize=None, crop=None)
    assert pretrain.nearest_mean_accuracy(Identity(), train, check, config) == 0.0
    check = pretrain._subset(split, np.array([1, 0, 1, 0, 0, 0], bool))
    assert pretrain.nearest_mean_accuracy(Identity(), train, check, config) == 1.0


def test_a_missing_pretrained_file_is_one_line(folder, tmp_path, capsys):
    argv = ["--config", "glyphs_finetune_npair", "--workdir", str(tmp_path / "run"),
            "--smoke", "--set", f"data.root={folder}", "--set", "data.batch_size=8",
            "--set", f"model.weights={tmp_path / 'none.weights.h5'}"]
    assert cli.run_command("train", argv) == 2
    err = capsys.readouterr().err
    assert "none.weights.h5" in err and len(err.strip().splitlines()) == 1


def test_held_out_images_keep_one_of_each_class_to_train_on():
    labels = np.array([0] * 10 + [1] * 2 + [2])
    mask = pretrain.held_out_images(labels, 0.1, seed=0)
    assert mask[:10].sum() == 1 and mask[10:12].sum() == 1 and not mask[12]
    assert np.array_equal(mask, pretrain.held_out_images(labels, 0.1, seed=0))
    assert pretrain.held_out_images(labels, 0.5, seed=0)[:10].sum() == 5
