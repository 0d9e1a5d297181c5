"""A backbone pretrained here by softmax classification, as users get one from ImageNet.

`pretrain` trains ``config.model.backbone`` with a linear softmax classifier on the
"pretrain" split of ``config.data`` (classes no fine-tuning or test split uses: the
glyph folder written with ``hdml-tf data glyphs --counts ...``), at the image size the
fine-tuning uses (``data.resize`` / ``data.crop``), and writes the backbone alone to a
``.weights.h5`` file, the format ``model.weights`` loads for any backbone. A JSON file
beside it records the file's SHA-256, the classification accuracy on images held out
of pretraining, the settings and the time.

The run is a pure function of the images, the settings and the seed: on one machine it
writes the same bytes again (TensorFlow's op determinism is switched on; BLAS kernels
differ between CPUs, so another machine may differ in the last bits).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from hdml_tf import data as data_lib
from hdml_tf.backbones import build_backbone, sha256_file
from hdml_tf.data import pipeline

SPLIT = "pretrain"


@dataclasses.dataclass
class PretrainSettings:
    """How the backbone is pretrained.

    Attributes:
        steps: optimizer steps.
        classes_per_batch, images_per_class: each batch holds this many classes (or
            every class, when fewer) with this many images each (class-balanced, as
            the metric batches are).
        lr: Adam's learning rate, cosine-decayed to 0 over ``steps``.
        held_out: share of each class's images kept out of training to measure the
            classifier's accuracy (at least one image of every class with two or more).
        seed: the batches, the held-out images and the initial weights.
    """

    steps: int = 3000
    classes_per_batch: int = 64
    images_per_class: int = 2
    lr: float = 2e-3
    held_out: float = 0.1
    seed: int = 0


class PretrainClassifier(keras.Model):
    """The backbone, then one Dense layer over the pretraining classes (logits)."""

    def __init__(self, backbone, num_classes, **kwargs):
        kwargs.setdefault("name", "pretrain_classifier")
        super().__init__(**kwargs)
        self.backbone = backbone
        self.classify = keras.layers.Dense(num_classes, name="classifier")

    def call(self, images, training=False):
        return self.classify(self.backbone(images, training=training))


def held_out_images(labels: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Boolean mask of the images kept out of pretraining: a seeded ``share`` of each
    class's images (rounded, at least one when the class has two or more, never all)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = min(len(members) - 1, max(1, int(round(share * len(members)))))
        if count > 0:
            mask[rng.choice(members, count, replace=False)] = True
    return mask


def _subset(split, keep):
    fields = {f: getattr(split, f)[keep] for f in ("paths", "encoded", "images")
              if getattr(split, f) is not None}
    return dataclasses.replace(split, labels=split.labels[keep], **fields)


def pretrain(config, out: str, settings: PretrainSettings, *, command: str = "",
             overwrite: bool = False, log=print) -> dict:
    """Pretrain ``config.model.backbone`` on the "pretrain" split; returns the record
    written beside ``out`` (`record_path`).

    Args:
        config: an ExperimentConfig: its data settings (dataset, root, image size,
            cache) and backbone name; ``model.weights`` is not loaded.
        out: the ``.weights.h5`` file to write.
        settings: `PretrainSettings`.
        command: the command line, recorded.
        overwrite: replace an existing ``out``; otherwise an existing file is an error
            raised before any training.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is False.
        ValueError: ``out`` does not end in ``.weights.h5``.
    """
    if not out.endswith(".weights.h5"):
        raise ValueError(f"pretrain: the output must end in .weights.h5, got {out!r}")
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"pretrain: {out} exists; pass --overwrite to replace it")
    d = config.data
    split = data_lib.load_dataset(d.name, SPLIT, d.root)
    held = held_out_images(split.labels, settings.held_out, settings.seed)
    train, check = _subset(split, ~held), _subset(split, held)
    log(f"pretraining {config.model.backbone} on {split.num_classes} {d.name} classes: "
        f"{len(train)} images, {len(check)} held out for the accuracy; "
        f"{settings.steps} steps of {settings.classes_per_batch} x "
        f"{settings.images_per_class}")
    keras.utils.set_random_seed(settings.seed)
    tf.config.experimental.enable_op_determinism()
    backbone = build_backbone(config.model.backbone, None)
    model = PretrainClassifier(backbone, split.num_classes)
    batches = pipeline.m_per_class_dataset(
        train, min(settings.classes_per_batch, train.num_classes),
        settings.images_per_class, seed=settings.seed,
        resize=d.resize, crop=d.crop, flip=d.flip, preprocessing=backbone.preprocessing,
        cache=d.cache)
    schedule = keras.optimizers.schedules.CosineDecay(settings.lr, settings.steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    started = time.time()
    per_epoch = min(500, settings.steps)
    history = model.fit(batches, epochs=-(-settings.steps // per_epoch), shuffle=False,
                        steps_per_epoch=per_epoch, verbose=2 if config.train.verbose else 0)
    seconds = time.time() - started
    evaluation = pipeline.eval_dataset(check, batch_size=d.eval_batch_size, resize=d.resize,
                                       crop=d.crop, preprocessing=backbone.preprocessing)
    correct = total = 0
    for images, labels in evaluation:
        predicted = tf.argmax(model(images, training=False), axis=-1, output_type=tf.int32)
        correct += int(tf.reduce_sum(tf.cast(predicted == labels, tf.int32)))
        total += int(tf.size(labels))
    accuracy = correct / max(total, 1)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    backbone.save_weights(out)
    record = {
        "weights": os.path.basename(out), "sha256": sha256_file(out),
        "backbone": config.model.backbone, "dataset": d.name, "split": SPLIT,
        "classes": int(split.num_classes), "train_images": len(train),
        "held_out_images": len(check), "held_out_accuracy": float(accuracy),
        "final_batch_accuracy": float(history.history["accuracy"][-1]),
        "seconds": round(seconds, 1), "settings": dataclasses.asdict(settings),
        "image_size": {"resize": d.resize, "crop": d.crop},
        "software": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "command": command,
    }
    with open(record_path(out), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.write("\n")
    log(f"wrote {out} (SHA-256 {record['sha256']}): held-out accuracy "
        f"{100 * accuracy:.2f}% over {len(check)} images, {seconds / 60:.1f} min")
    return record


def record_path(out: str) -> str:
    """The JSON record written beside a pretrained ``<name>.weights.h5``:
    ``<name>.pretrain.json``."""
    return out[: -len(".weights.h5")] + ".pretrain.json"
