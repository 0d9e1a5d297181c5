"""Typed experiment configs, presets and dotted command-line overrides.

One `ExperimentConfig` describes a run: data, model, optimisation, training. Presets
live in ``hdml_tf/configs/<name>.py``, each with the command that runs it and the
numbers the paper reports at its top. Overrides use dotted keys and are type-checked:

  hdml-tf train --config cub200_npair --set model.hdml=false --set train.steps=100

Every error names the key (unknown key, wrong type, impossible batch) and is raised
before any data is read or any training starts.
"""

import dataclasses
import importlib
import json
import os
import pkgutil
import typing

from hdml_tf import params as params_lib


class ConfigError(ValueError):
    """A configuration problem; the message names the key."""


@dataclasses.dataclass
class DataConfig:
    """Dataset and input pipeline.

    ``batch_size`` counts images: N-pair batches hold 2P images (P classes), triplet
    batches 3T. ``val_fraction`` holds out that fraction of the training classes as a
    validation split for checkpoint selection (never the test set).
    """

    name: str = "fashion_mnist"
    root: typing.Optional[str] = None
    batch_size: int = 128
    resize: int = 256
    crop: int = 227
    flip: bool = True
    cache: bool = False
    val_fraction: float = 0.0
    eval_batch_size: int = 128
    max_eval_images: int = 0  # 0: all; a smaller number subsamples the evaluated split
    # "queue": classes drawn from a shuffled queue, negatives of any other class;
    # "authors": the authors' data_provider (N-pair: P classes drawn without
    # replacement for each batch independently; triplet: 2T distinct classes a batch,
    # so no negative shares a class with any anchor of the batch).
    sampler: str = "queue"
    # Where the evaluation's centre crop starts when (resize - crop) is odd: "floor"
    # ((256 - 227) // 2 = 14) or "ceil" (15: the authors' random_fixed_size_crop_mod.py,
    # which crops [15:-14]).
    center_crop_rounding: str = "floor"


@dataclasses.dataclass
class ModelConfig(params_lib.HDMLParams):
    """Backbone and embedding, plus the HDML objective: every field of
    `hdml_tf.params.HDMLParams` (its names and defaults; see docs/method.md).

    ``lrn`` (inception_v1 only; other backbones have no LRN and ignore it): "caffe"
    (BVLC's LRN) or "authors" (the HDML authors' TF1 LRN, what produced the paper's
    numbers).
    """

    backbone: str = "inception_v1"
    weights: typing.Optional[str] = None
    lrn: str = "caffe"
    embedding_dim: int = 128


@dataclasses.dataclass
class OptimConfig:
    """Three Adam optimizers; the metric learning rate is halved at ``lr_decay_steps``.

    ``lr_decay_steps``: global steps (batches trained, skipped steps included) after
    which the metric learning rate is multiplied by ``lr_decay_factor``
    (``hdml_tf.schedules.GlobalStepDecay``). ``lr_decay_rule``: "global_step" (every
    one of them) or "authors" (only those that are steps of the authors' evaluation
    schedule, ``train.authors_eval_every*``: ``main_npair.py`` halves its rate inside
    the evaluation block, so with CUB's interval of 46 neither 5632 nor 6848 halves it).
    ``adam_epsilon``: Keras' default 1e-7, or the authors' (TF1) 1e-8.
    """

    lr_metric: float = params_lib.DEFAULT_LEARNING_RATES["metric"]
    lr_gen: float = params_lib.DEFAULT_LEARNING_RATES["generator"]
    lr_cls: float = params_lib.DEFAULT_LEARNING_RATES["classifier"]
    lr_decay_steps: typing.Tuple[int, ...] = ()
    lr_decay_factor: float = 0.5
    lr_decay_rule: str = "global_step"
    adam_epsilon: float = 1e-7


@dataclasses.dataclass
class TrainConfig:
    """Length, logging, checkpoints, evaluation, distribution and export."""

    steps: int = 8000
    steps_per_epoch: int = 100  # progress/log/checkpoint interval
    log_every: int = 10  # steps between rows of schedule_log.csv (λ, w, J_avg, ...)
    # At most this many steps run in one tf.function call, so the host fetches logs
    # and runs the callbacks once per call instead of after every step. A call also
    # ends at every checkpoint (epoch end), log row (log_every) and evaluation step,
    # so checkpoints, resume and evaluations happen at the same steps for every value,
    # and every value trains bit-identical weights (each step runs in the same loop
    # body; tested). The progress bar moves once per call.
    steps_per_execution: int = 50
    eval_every: int = 0  # steps; 0: only at the end
    eval_split: str = "val"  # "val" (needs data.val_fraction > 0) or "test"
    select_on_test: bool = False  # the authors' flaw: opt-in only
    monitor: str = "recall@1"
    # The authors' protocol, reported beside the final checkpoint's numbers and
    # labelled as selected on the test set: evaluate on test every
    # authors_eval_every_initial steps (their init_batch_per_epoch, 500), from the
    # first evaluation at or after step 5000 on every authors_eval_every steps (their
    # batch_per_epoch: 64 Cars196, 46 CUB) and keep the best NMI. It changes nothing
    # in training (but optim.lr_decay_rule="authors" reads the same schedule).
    authors_selection: bool = False
    authors_eval_every_initial: int = 500
    authors_eval_every: int = 64
    kmeans_restarts: int = 1  # k-means runs for NMI/F1 (the authors: scikit-learn, 10)
    kmeans_seed: int = 0  # of every NMI/F1 k-means (the authors: random_state=1)
    ks: typing.Tuple[int, ...] = (1, 2, 4, 8)
    keep_checkpoints: int = 3
    seed: int = 0
    strategy: str = "auto"
    # "float32", "mixed_float16" (GPUs; the metric loss is loss-scaled) or
    # "mixed_bfloat16" (TPUs, recent GPUs, CPUs with AVX512-BF16; no loss scaling).
    # Only the backbone computes in half precision: the embedding head, the generator,
    # the classifier and every loss stay float32 (J_soft's scale of 1e4 overflows
    # float16 gradients; bfloat16 embeddings cost NMI/F1).
    precision: str = "float32"
    xla: bool = False
    export: bool = True
    export_dir: str = "saved_models"
    export_name: str = ""
    verbose: int = 1


@dataclasses.dataclass
class ExperimentConfig:
    name: str = "experiment"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    # What the paper reports for this setting (informational, printed beside results).
    paper: typing.Dict[str, float] = dataclasses.field(default_factory=dict)
    # The baseline's own settings ("section.key" -> value), used when model.hdml is
    # false: a preset whose search tuned each arm on its own holds the baseline's
    # winners here (load_config applies them; the user's overrides still win).
    baseline: typing.Dict[str, str] = dataclasses.field(default_factory=dict)

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


#: The authors' evaluation intervals per dataset, (init_batch_per_epoch,
#: batch_per_epoch): FLAGS.py defaults (Cars196), its help text at 6071626 (CUB) and at
#: e6dfab3 (SOP, removed the next day by 7838f97).
AUTHORS_EVAL_EVERY = {"cars196": (500, 64), "cub200": (500, 46), "sop": (4650, 465)}
#: What a non-finite J_syn does in the authors' main_npair.py / main_triplet.py.
AUTHORS_NONFINITE_SYN = {"npair": "fallback", "triplet": "zero_metric"}
LR_DECAY_RULES = ("global_step", "authors")
CENTER_CROP_ROUNDINGS = ("floor", "ceil")

_SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig,
             "train": TrainConfig}
STRATEGIES = ("auto", "none", "mirrored", "multiworker", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


# --------------------------------------------------------------------- parsing


def _field_types(cls):
    return {f.name: typing.get_type_hints(cls)[f.name] for f in dataclasses.fields(cls)}


def _parse_value(key, text, annotation):
    """Convert the string ``text`` to ``annotation`` or raise ConfigError naming key."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union and type(None) in args:  # Optional[X]
        if text.strip().lower() in ("none", "null", ""):
            return None
        return _parse_value(key, text, next(a for a in args if a is not type(None)))
    if origin in (tuple, typing.Tuple):
        items = [t for t in text.replace("(", "").replace(")", "").split(",") if t.strip()]
        return tuple(_parse_value(key, t.strip(), args[0]) for t in items)
    if annotation is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {text!r}")
    if annotation in (int, float):
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {text!r}") from None
        if annotation is int:
            if value != int(value):
                raise ConfigError(f"{key}: expected an integer, got {text!r}")
            return int(value)
        return value
    if annotation is str:
        return text
    raise ConfigError(f"{key}: cannot be set from the command line")


def _check_type(key, value, annotation):
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union and type(None) in args:
        if value is None:
            return None
        return _check_type(key, value, next(a for a in args if a is not type(None)))
    if origin in (tuple, typing.Tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_check_type(key, v, args[0]) for v in value)
    if origin in (dict, typing.Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value == int(value):
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def apply_override(config, assignment):
    """Apply one ``section.key=value`` string to ``config`` in place."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r}: expected section.key=value")
    key, text = assignment.split("=", 1)
    key = key.strip()
    if key == "name":
        config.name = text
        return config
    section, _, field = key.partition(".")
    if section not in _SECTIONS or not field:
        raise ConfigError(f"unknown config key {key!r}; sections are "
                          f"{', '.join(_SECTIONS)} (e.g. model.embedding_dim=64)")
    types = _field_types(_SECTIONS[section])
    if field not in types:
        raise ConfigError(f"unknown config key {key!r}; {section} has: "
                          f"{', '.join(sorted(types))}")
    setattr(getattr(config, section), field, _parse_value(key, text, types[field]))
    return config


def from_dict(data):
    """An ExperimentConfig from a (JSON) mapping; unknown keys and wrong types raise."""
    config = ExperimentConfig()
    for key, value in data.items():
        if key in ("name",):
            config.name = _check_type(key, value, str)
        elif key == "paper":
            config.paper = _check_type(key, value, typing.Dict[str, float])
        elif key == "baseline":
            config.baseline = _check_type(key, value, typing.Dict[str, str])
        elif key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a mapping of settings")
            types = _field_types(_SECTIONS[key])
            section = getattr(config, key)
            for field, item in value.items():
                if field not in types:
                    raise ConfigError(f"unknown config key '{key}.{field}'; {key} has: "
                                      f"{', '.join(sorted(types))}")
                setattr(section, field, _check_type(f"{key}.{field}", item, types[field]))
        else:
            raise ConfigError(f"unknown config key {key!r}")
    return config


# --------------------------------------------------------------------- presets


def available_presets():
    from hdml_tf import configs

    return sorted(m.name for m in pkgutil.iter_modules(configs.__path__)
                  if not m.name.startswith("_"))


def get_preset(name):
    if name not in available_presets():
        raise ConfigError(f"unknown preset {name!r}; available: "
                          f"{', '.join(available_presets())}")
    return importlib.import_module(f"hdml_tf.configs.{name}").get_config()


def get_provenance(name):
    """``config key -> source`` of a preset: for a paper preset, where each setting
    that changes what it computes comes from (``hdml_tf.configs._common.Source``: the
    authors' commit and file, or ours and why); {} for the others."""
    get_preset(name)  # an unknown name raises ConfigError
    module = importlib.import_module(f"hdml_tf.configs.{name}")
    return module.get_provenance() if hasattr(module, "get_provenance") else {}


def load_config(spec, overrides=(), smoke=False):
    """A preset name or a JSON file path, then overrides (and, for a baseline run,
    the config's ``baseline`` settings under them), then validation."""
    if os.path.isfile(spec):
        try:
            with open(spec) as f:
                data = json.load(f)
        except json.JSONDecodeError as error:
            raise ConfigError(f"config file {spec}: not valid JSON ({error})") from None
        config = from_dict(data)
    elif spec.endswith(".json"):
        raise ConfigError(f"config file {spec} does not exist")
    else:
        config = get_preset(spec)
    if smoke:
        shrink_for_smoke(config)
    for assignment in overrides:
        apply_override(config, assignment)
    if not config.model.hdml and config.baseline:
        for key, value in config.baseline.items():
            apply_override(config, f"{key}={value}")
        for assignment in overrides:  # the user's word wins over the preset's
            apply_override(config, assignment)
    _check_given_constants(config, overrides)
    validate(config)
    return config


def _check_given_constants(config, overrides):
    """``model.alpha`` (``beta``) given while λ (w) is fitted from ``lambda_start``
    (``w_start``) would be overwritten at the first window: a one-line error instead."""
    given = {a.split("=", 1)[0].strip() for a in overrides}
    for constant, start in (("alpha", "lambda_start"), ("beta", "w_start")):
        fitted = getattr(config.model, start)
        if f"model.{constant}" in given and fitted is not None:
            raise ConfigError(
                f"model.{constant} has no effect while model.{start}={fitted} fits it "
                f"at the first window; add --set model.{start}=none to use it")


def shrink_for_smoke(config):
    """Seconds instead of hours: for CI and notebook smoke runs."""
    config.train.steps = min(config.train.steps, 6)
    config.train.steps_per_epoch = 3
    config.train.eval_every = 0
    config.data.max_eval_images = 300
    config.model.window = min(config.model.window, 2)
    return config


def classes_per_batch(config):
    """P (N-pair: batch_size / 2 pairs) or T (triplet: batch_size / 3 triplets): the
    tuples of one batch, whose anchors are of distinct classes."""
    return config.data.batch_size // params_lib.tuple_size(config.model.loss)


def _validate_batch(config):
    d, loss = config.data, config.model.loss
    if loss not in params_lib.LOSSES:
        raise ConfigError(f"model.loss: expected 'npair' or 'triplet', got {loss!r}")
    if d.batch_size < 2:
        raise ConfigError(f"data.batch_size: must be at least 2, got {d.batch_size}")
    if d.batch_size % params_lib.tuple_size(loss):
        rule = ("an N-pair batch holds 2P images, so it must be even" if loss == "npair"
                else "a triplet batch holds 3T images, so it must be divisible by 3")
        raise ConfigError(f"data.batch_size: {rule}; got {d.batch_size}")


def _validate_choices(config):
    """Every key with a fixed set of values holds one of them."""
    d, m, o, t = config.data, config.model, config.optim, config.train
    for key, value, allowed in (("data.sampler", d.sampler, ("queue", "authors")),
                                ("data.center_crop_rounding", d.center_crop_rounding,
                                 CENTER_CROP_ROUNDINGS),
                                ("train.precision", t.precision, PRECISIONS),
                                ("model.lrn", m.lrn, ("caffe", "authors")),
                                ("optim.lr_decay_rule", o.lr_decay_rule, LR_DECAY_RULES)):
        if value not in allowed:
            raise ConfigError(f"{key}: expected one of {', '.join(allowed)}, got {value!r}")
    try:
        m.check()  # the method's own fields (hdml_tf.params)
    except ValueError as error:
        raise ConfigError(f"model.{error}") from None


def validate(config):
    """Checks that need no data. Raises ConfigError naming the key."""
    d, m, o, t = config.data, config.model, config.optim, config.train
    _validate_batch(config)
    for key, value in (("data.crop", d.crop), ("data.resize", d.resize),
                       ("train.authors_eval_every", t.authors_eval_every),
                       ("train.authors_eval_every_initial", t.authors_eval_every_initial),
                       ("model.embedding_dim", m.embedding_dim), ("model.window", m.window),
                       ("train.steps", t.steps), ("train.steps_per_epoch", t.steps_per_epoch),
                       ("train.log_every", t.log_every),
                       ("train.steps_per_execution", t.steps_per_execution),
                       ("data.eval_batch_size", d.eval_batch_size)):
        if value < 1:
            raise ConfigError(f"{key}: must be positive, got {value}")
    if d.crop > d.resize:
        raise ConfigError(f"data.crop: {d.crop} is larger than data.resize {d.resize}")
    if not 0.0 <= d.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction: must be in [0, 1), got {d.val_fraction}")
    if t.strategy not in STRATEGIES:
        raise ConfigError(f"train.strategy: expected one of {', '.join(STRATEGIES)}, "
                          f"got {t.strategy!r}")
    if t.eval_split not in ("val", "test"):
        raise ConfigError(f"train.eval_split: expected 'val' or 'test', got {t.eval_split!r}")
    if t.eval_split == "val" and t.eval_every and d.val_fraction == 0:
        raise ConfigError("train.eval_every: periodic evaluation on 'val' needs "
                          "data.val_fraction > 0 (or train.eval_split=test with "
                          "train.select_on_test=true, the authors' flawed protocol)")
    if t.eval_split == "test" and t.eval_every and not t.select_on_test:
        raise ConfigError("train.eval_split: selecting checkpoints on the test split "
                          "needs train.select_on_test=true (the authors' code did this; "
                          "it inflates results)")
    _validate_choices(config)
    for key, value in (("model.j_avg_init", m.j_avg_init),
                       ("model.j_gen_avg_init", m.j_gen_avg_init),
                       ("optim.adam_epsilon", o.adam_epsilon),
                       ("train.kmeans_restarts", t.kmeans_restarts)):
        if not value > 0:
            raise ConfigError(f"{key}: must be positive, got {value}")
    if any(s < 1 for s in o.lr_decay_steps):
        raise ConfigError(f"optim.lr_decay_steps: steps must be positive, "
                          f"got {o.lr_decay_steps}")
    if list(o.lr_decay_steps) != sorted(set(o.lr_decay_steps)):
        raise ConfigError(f"optim.lr_decay_steps: must be increasing, got {o.lr_decay_steps}")
    if not 0 <= t.kmeans_seed < 2**32:
        raise ConfigError(f"train.kmeans_seed: must be in [0, 2**32), got {t.kmeans_seed}")
    for key, value in (("optim.lr_metric", o.lr_metric), ("optim.lr_gen", o.lr_gen),
                       ("optim.lr_cls", o.lr_cls)):
        if value < 0:
            raise ConfigError(f"{key}: must be >= 0, got {value}")
    from hdml_tf.backbones import available_backbones

    import hdml_tf.backbones.small_cnn  # noqa: F401  (registers "small_cnn")

    if m.backbone.lower() not in available_backbones():
        raise ConfigError(f"model.backbone: unknown {m.backbone!r}; available: "
                          f"{', '.join(available_backbones())}")
    return config


def check_against_dataset(config, num_train_classes):
    """Checks that need the dataset's size, run before training starts."""
    per_batch = classes_per_batch(config)
    if per_batch > num_train_classes:
        what = "P = batch_size / 2" if config.model.loss == "npair" else "T = batch_size / 3"
        raise ConfigError(f"data.batch_size: {config.data.batch_size} needs {what} = "
                          f"{per_batch} distinct classes per batch, but the training split "
                          f"of {config.data.name!r} has {num_train_classes}")


def fidelity(config):
    """"authors" when a config runs every behaviour of the authors' code that
    docs/method.md lists (LRN, decay scope, Adam epsilon, samplers, k-means restarts
    and seed, all training classes, the classifier's extra class, the centre crop, the
    learning-rate rule, the head's BatchNorm updates, α and β as given (no fitted
    schedule), the non-finite J_syn rule and,
    for the datasets they name, their evaluation intervals), else "custom"."""
    d, m, o, t = config.data, config.model, config.optim, config.train
    checks = [
        m.lrn == "authors", m.weight_decay_scope == "authors", o.adam_epsilon == 1e-8,
        d.sampler == "authors", t.kmeans_restarts == 10, t.kmeans_seed == 1,
        d.val_fraction == 0, m.classifier_extra_class, d.center_crop_rounding == "ceil",
        o.lr_decay_rule == "authors", m.head_bn_updates == "prestep",
        m.lambda_start is None and m.w_start is None,
        m.nonfinite_syn == AUTHORS_NONFINITE_SYN.get(m.loss),
    ]
    if d.name in AUTHORS_EVAL_EVERY:
        every = (t.authors_eval_every_initial, t.authors_eval_every)
        checks.append(every == AUTHORS_EVAL_EVERY[d.name])
    return "authors" if all(checks) else "custom"

