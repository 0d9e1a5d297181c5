"""A backbone pretrained here on other classes, as users get one from ImageNet.

`pretrain` trains ``config.model.backbone`` on the "pretrain" split of ``config.data``
(classes no fine-tuning or test split uses: the glyph folder written with ``hdml-tf
data glyphs --counts ...``), at the image size the fine-tuning uses (``data.resize`` /
``data.crop``), and writes the backbone alone to a ``.weights.h5`` file, the format
``model.weights`` loads for any backbone. A JSON file beside it (`record_path`) records
the file's SHA-256, the accuracy on images held out of pretraining, the settings and
the time.

Two objectives, both a softmax cross-entropy over classes of L2-normalised features
times ``scale``:

* ``"softmax"``: classification over every pretraining class, a cosine classifier
  (NormFace: Wang et al., ACM MM 2017), as ImageNet backbones are trained;
* ``"npair"``: over the classes of the batch, each image's class represented by the
  other image of its class (the N-pair loss, Sohn, NeurIPS 2016), so no class needs
  weights of its own.

On the glyph folder (5,049 classes of about eleven images) the first sat at chance for
its first thousand steps (docs/results.md, "Glyphs, fine-tuned"); the second is the
default. The accuracy reported for both is the same: each held-out image is given the
class whose mean training feature is nearest (cosine).

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
from hdml_tf.data import base, pipeline
from hdml_tf.evaluation import embed

SPLIT = "pretrain"
OBJECTIVES = ("npair", "softmax")


@dataclasses.dataclass
class PretrainSettings:
    """How the backbone is pretrained.

    Attributes:
        objective: "npair" or "softmax" (module docstring).
        steps: optimizer steps.
        classes_per_batch: each batch holds this many classes (or every class, when
            fewer), two images each.
        lr: Adam's learning rate, cosine-decayed to 0 over ``steps``.
        scale: the logit scale (module docstring).
        held_out: share of each class's images kept out of training to measure the
            accuracy (at least one image of every class with two or more).
        seed: the batches, the held-out images, the classes kept and the initial
            weights.
        classes: pretrain on a seeded choice of this many of the split's classes; 0:
            all of them.
    """

    objective: str = "npair"
    steps: int = 1000
    classes_per_batch: int = 64
    lr: float = 2e-3
    scale: float = 16.0
    held_out: float = 0.1
    seed: int = 0
    classes: int = 0


def _loss(features, labels, classifier, scale):
    """The objective's mean cross-entropy on a batch whose rows 2k, 2k + 1 are two
    images of one class; ``classifier`` None: "npair", else "softmax"."""
    features = tf.math.l2_normalize(features, -1)
    if classifier is None:  # each anchor against the other image of every batch class
        anchors, positives = features[0::2], features[1::2]
        logits = scale * tf.matmul(anchors, positives, transpose_b=True)
        labels = tf.range(tf.shape(logits)[0])
    else:
        logits = scale * tf.matmul(features, tf.math.l2_normalize(classifier, 0))
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))


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
    if settings.objective not in OBJECTIVES:
        raise ValueError(f"pretrain: objective must be one of {OBJECTIVES}, got "
                         f"{settings.objective!r}")
    d = config.data
    train, check = pretraining_images(config, settings)
    log(f"pretraining {config.model.backbone} on {train.num_classes} {d.name} classes: "
        f"{len(train)} images, {len(check)} held out for the accuracy; "
        f"{settings.steps} {settings.objective} steps of {settings.classes_per_batch} "
        "classes x 2 images")
    keras.utils.set_random_seed(settings.seed)
    tf.config.experimental.enable_op_determinism()
    backbone = build_backbone(config.model.backbone, None, input_shape=(d.crop, d.crop, 3))
    step = _step_function(backbone, train.num_classes, settings)
    batches = pipeline.m_per_class_dataset(
        train, min(settings.classes_per_batch, train.num_classes), 2, seed=settings.seed,
        resize=d.resize, crop=d.crop, flip=d.flip, preprocessing=backbone.preprocessing,
        cache=d.cache)
    started, losses = time.time(), []
    for number, (images, labels) in enumerate(batches.take(settings.steps), 1):
        losses.append(float(step(images, labels)))
        if number % 500 == 0 or number == settings.steps:
            log(f"step {number}/{settings.steps}  loss {np.mean(losses[-500:]):.4f}  "
                f"{time.time() - started:.0f}s")
    seconds = time.time() - started
    accuracy = nearest_mean_accuracy(backbone, train, check, d)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    backbone.save_weights(out)
    record = _record(out, config, settings, train, check, accuracy, losses, seconds, command)
    log(f"wrote {out} (SHA-256 {record['sha256']}): held-out accuracy "
        f"{100 * accuracy:.2f}% over {len(check)} images, {seconds / 60:.1f} min")
    return record


def _step_function(backbone, num_classes, settings):
    """A compiled step (images, labels) -> loss: Adam on the backbone (and, for the
    "softmax" objective, on a cosine classifier over ``num_classes``)."""
    classifier = None
    if settings.objective == "softmax":
        classifier = tf.Variable(keras.initializers.GlorotUniform(settings.seed)(
            (backbone.feature_dim, num_classes)), name="classifier")
    variables = backbone.trainable_variables + ([classifier] if classifier is not None else [])
    optimizer = keras.optimizers.Adam(
        keras.optimizers.schedules.CosineDecay(settings.lr, settings.steps))
    optimizer.build(variables)

    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            loss = _loss(backbone(images, training=True), labels, classifier,
                         settings.scale)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return step


def pretraining_images(config, settings):
    """(train, held out) ImageDatasets of the "pretrain" split: ``settings.classes`` of
    its classes (a seeded choice; all when 0), each class's `held_out_images` apart."""
    d = config.data
    split = data_lib.load_dataset(d.name, SPLIT, d.root)
    if settings.classes and settings.classes < split.num_classes:
        kept = np.random.default_rng(settings.seed).choice(
            split.num_classes, settings.classes, replace=False)
        split = base.build(split.name, split.split, split.labels, np.sort(kept),
                           dict(enumerate(split.class_names)), paths=split.paths,
                           encoded=split.encoded, images=split.images, root=split.root)
    held = held_out_images(split.labels, settings.held_out, settings.seed)
    return _subset(split, ~held), _subset(split, held)


def _record(out, config, settings, train, check, accuracy, losses, seconds, command):
    """The JSON record of a pretraining, written to `record_path` of ``out``."""
    d = config.data
    record = {
        "weights": os.path.basename(out), "sha256": sha256_file(out),
        "backbone": config.model.backbone, "dataset": d.name, "split": SPLIT,
        "classes": int(train.num_classes), "train_images": len(train),
        "held_out_images": len(check), "held_out_accuracy": float(accuracy),
        "final_loss": float(np.mean(losses[-500:])),
        "seconds": round(seconds, 1), "settings": dataclasses.asdict(settings),
        "image_size": {"resize": d.resize, "crop": d.crop},
        "software": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "command": command,
    }
    with open(record_path(out), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.write("\n")
    return record


def nearest_mean_accuracy(backbone, train, check, data_config) -> float:
    """Share of the ``check`` images whose nearest class mean of the ``train`` images'
    L2-normalised features (cosine) is their own class's."""
    def features(split):
        ds = pipeline.eval_dataset(split, batch_size=data_config.eval_batch_size,
                                   resize=data_config.resize, crop=data_config.crop,
                                   preprocessing=backbone.preprocessing)
        values, labels = embed(backbone, ds)
        return values / np.linalg.norm(values, axis=1, keepdims=True).clip(1e-12), labels

    train_features, train_labels = features(train)
    means = np.zeros((train.num_classes, train_features.shape[1]), np.float64)
    np.add.at(means, train_labels, train_features)
    means /= np.linalg.norm(means, axis=1, keepdims=True).clip(1e-12)
    check_features, check_labels = features(check)
    return float(np.mean(np.argmax(check_features @ means.T, axis=1) == check_labels))


def record_path(out: str) -> str:
    """The JSON record written beside a pretrained ``<name>.weights.h5``:
    ``<name>.pretrain.json``."""
    return out[: -len(".weights.h5")] + ".pretrain.json"
