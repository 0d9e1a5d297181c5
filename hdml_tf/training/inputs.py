"""A run's data: the splits, the training batches from a step on, the evaluation sets.

The batch stream is a pure function of ``train.seed`` and the batch number, so a run
resumed at step s reads exactly the batches an uninterrupted run reads from s on.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from hdml_tf import data as data_lib
from hdml_tf.config import classes_per_batch
from hdml_tf.data import pipeline


def load_splits(config):
    """The train split and the evaluation splits ("val" if held out, "test")."""
    d = config.data
    kwargs = {"val_fraction": d.val_fraction} if d.val_fraction else {}
    splits = {"train": data_lib.load_dataset(d.name, "train", d.root, **kwargs),
              "test": data_lib.load_dataset(d.name, "test", d.root, **kwargs)}
    if d.val_fraction:
        splits["val"] = data_lib.load_dataset(d.name, "val", d.root, **kwargs)
    return splits


def training_dataset(config, train_split, preprocessing, start_batch=0):
    d = config.data
    common = dict(seed=config.train.seed, resize=d.resize, crop=d.crop, flip=d.flip,
                  preprocessing=preprocessing, cache=d.cache, start_batch=start_batch,
                  sampler=d.sampler)
    build = {"npair": pipeline.npair_dataset, "triplet": pipeline.triplet_dataset}
    return build[config.model.loss](train_split, classes_per_batch(config),
                                    **common)


def evaluation_dataset(config, split, preprocessing):
    d = config.data
    if d.max_eval_images and len(split) > d.max_eval_images:
        split = subsample_split(split, d.max_eval_images, config.train.seed)
    return pipeline.eval_dataset(split, batch_size=d.eval_batch_size, resize=d.resize,
                                 crop=d.crop, preprocessing=preprocessing,
                                 crop_rounding=d.center_crop_rounding)


def subsample_split(split, count, seed):
    """A fixed random subset of ``count`` images of an ImageDataset (all if fewer)."""
    if count >= len(split):
        return split
    keep = np.sort(np.random.default_rng(seed).choice(len(split), count, replace=False))
    fields = {f: getattr(split, f)[keep] for f in ("paths", "encoded", "images")
              if getattr(split, f) is not None}
    return dataclasses.replace(split, labels=split.labels[keep], **fields)


def distributed_batches(config, strategy, train_split, preprocessing, start_step):
    """The training batches from ``start_step`` on, distributed over the replicas."""
    dataset = training_dataset(config, train_split, preprocessing, start_batch=start_step)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # Every worker draws the same seeded global batches; DATA sharding hands each
        # worker its slice of every batch (pairs stay aligned: the layout is nested).
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA)
        dataset = dataset.with_options(options)
    return iter(strategy.experimental_distribute_dataset(dataset))
