"""The HDML model: embedder (backbone + head), generator, classifier and train_step.

Names follow the paper and ``docs/method.md``: y (backbone features), z (embeddings),
``y_prime`` (reconstructions y' of the real rows), ``y_tilde`` / ``z_tilde`` (the
synthetic tuple mapped back to feature space and re-embedded), ``j_avg`` /
``j_gen_avg`` (the running statistics that drive λ and w).

Batches are nested so that ``tf.distribute`` splits them pair-wise:
  N-pair:  ``((anchors, positives), (anchor_labels, positive_labels))``
  triplet: ``((anchors, positives, negatives), (anchor_labels, positive_labels,
  negative_labels))``
(``hdml_tf.data.pipeline`` produces exactly these).

Under a distribution strategy each replica embeds its share of the batch; N-pair
embeddings and labels are gathered across replicas (``all_gather``) so the in-batch
negatives are those of the global batch, each replica's loss is its contribution to the
global loss, and gradients summed over replicas equal the single-device gradients.

Reference: Zheng et al., "Hardness-Aware Deep Metric Learning", CVPR 2019, Sec. 3;
the authors' TF1 code (``main_npair.py``, ``lib/HDML.py``).
"""

import keras
import tensorflow as tf

import hdml_tf.backbones  # noqa: F401  (registers the serialisable backbones for loading)
from hdml_tf import objectives
from hdml_tf import synthesis
from hdml_tf.params import DEFAULT_LEARNING_RATES, WEIGHT_DECAY_SCOPES, HDMLParams

_KERNEL_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel")
_NORM_NAMES = ("gamma", "beta")
OBJECTIVES = ("metric", "generator", "classifier")


# ------------------------------------------------------------------- sub-networks


@keras.saving.register_keras_serializable(package="hdml_tf")
class EmbeddingHead(keras.layers.Layer):
    """H: BatchNorm over the backbone features, then Dense(embedding_dim), no activation.

    Args:
      embedding_dim: d (spec: 128 Cars196, 256 CUB, 512 SOP).
      synchronized_bn: synchronise BatchNorm statistics across replicas.
    """

    def __init__(self, embedding_dim, synchronized_bn=False, **kwargs):
        super().__init__(**kwargs)
        self.embedding_dim = int(embedding_dim)
        self.synchronized_bn = bool(synchronized_bn)
        # Sub-layers follow this layer's dtype policy, so a mixed-precision model
        # reloads as one.
        policy = self.dtype_policy
        self.bn = keras.layers.BatchNormalization(synchronized=synchronized_bn, name="bn",
                                                  dtype=policy)
        self.fc = keras.layers.Dense(self.embedding_dim, name="fc", dtype=policy)

    def build(self, input_shape):
        if not self.bn.built:
            self.bn.build(input_shape)
        if not self.fc.built:
            self.fc.build(input_shape)

    def call(self, features, training=None):
        return self.fc(self.bn(features, training=training))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.embedding_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(embedding_dim=self.embedding_dim, synchronized_bn=self.synchronized_bn)
        return config


@keras.saving.register_keras_serializable(package="hdml_tf")
class Generator(keras.layers.Layer):
    """G: Dense(hidden) -> ReLU -> BatchNorm -> Dense(feature_dim), from R^d to R^1024.

    Args:
      feature_dim: output size, the backbone's feature size (1024 for GoogLeNet).
      hidden_units: 512 in the paper.
    """

    def __init__(self, feature_dim=1024, hidden_units=512, synchronized_bn=False, **kwargs):
        super().__init__(**kwargs)
        self.feature_dim = int(feature_dim)
        self.hidden_units = int(hidden_units)
        self.synchronized_bn = bool(synchronized_bn)
        policy = self.dtype_policy
        self.fc1 = keras.layers.Dense(self.hidden_units, activation="relu", name="fc1",
                                      dtype=policy)
        self.bn = keras.layers.BatchNormalization(synchronized=synchronized_bn, name="bn",
                                                  dtype=policy)
        self.fc2 = keras.layers.Dense(self.feature_dim, name="fc2", dtype=policy)

    def build(self, input_shape):
        hidden_shape = tuple(input_shape[:-1]) + (self.hidden_units,)
        for layer, shape in ((self.fc1, input_shape), (self.bn, hidden_shape),
                             (self.fc2, hidden_shape)):
            if not layer.built:
                layer.build(shape)

    def call(self, z, training=None):
        return self.fc2(self.bn(self.fc1(z), training=training))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.feature_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(feature_dim=self.feature_dim, hidden_units=self.hidden_units,
                      synchronized_bn=self.synchronized_bn)
        return config


def _feature_dim(backbone):
    dim = getattr(backbone, "feature_dim", None)
    if dim is None:
        dim = backbone.output_shape[-1]
    return int(dim)


@keras.saving.register_keras_serializable(package="hdml_tf")
class Embedder(keras.Model):
    """F then H: images -> embeddings, L2-normalised unless ``normalize=False``.

    This is the model that is evaluated and exported. Training uses the raw z
    (``embed_raw``); evaluation and serving use the normalised output of ``call``.
    Under a mixed dtype policy only the backbone computes in half precision; the head
    computes in float32 (its variables are float32 under every policy, so weights move
    between policies unchanged).

    Args:
      backbone: a keras.Model from preprocessed images (batch, H, W, 3) to pooled
        features (batch, feature_dim), e.g. ``hdml_tf.backbones.build_backbone(...)``.
      embedding_dim: d.
      normalize: L2-normalise the output of ``call``.
      synchronized_bn: synchronise the head's BatchNorm across replicas.
      preprocessing: the input normalisation the backbone expects (a
        ``hdml_tf.data.preprocess.normalize`` mode); defaults to
        ``backbone.preprocessing``.
    """

    def __init__(self, backbone, embedding_dim=128, normalize=True, synchronized_bn=False,
                 preprocessing=None, **kwargs):
        kwargs.setdefault("name", "embedder")
        super().__init__(**kwargs)
        self.backbone = backbone
        self.embedding_dim = int(embedding_dim)
        self.normalize = bool(normalize)
        self.feature_dim = _feature_dim(backbone)
        # Kept in the config: a keras.applications backbone loses its Python
        # attributes when saved and loaded.
        self.preprocessing = preprocessing or getattr(backbone, "preprocessing", "none")
        # H computes in float32 whatever F computes in: its output is the embedding the
        # losses, the synthesis and retrieval compare (Keras' mixed-precision advice for
        # output layers). bfloat16 embeddings cost NMI/F1 (benchmarks/precision.py).
        self.head = EmbeddingHead(self.embedding_dim, synchronized_bn=synchronized_bn,
                                  name="head", dtype="float32")

    def build(self, input_shape):
        if not self.backbone.built:
            self.backbone.build(input_shape)
        if not self.head.built:
            self.head.build((None, self.feature_dim))
        self.built = True

    def features(self, images, training=False):
        """y = F(x) as float32 (mixed-precision backbones compute in float16)."""
        return tf.cast(self.backbone(images, training=training), tf.float32)

    def embed_raw(self, images, training=False):
        """z = H(F(x)), not normalised: what the metric losses see."""
        return tf.cast(self.head(self.features(images, training), training=training),
                       tf.float32)

    def call(self, images, training=False):
        z = self.embed_raw(images, training=training)
        return tf.math.l2_normalize(z, axis=-1) if self.normalize else z

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.embedding_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            backbone=keras.saving.serialize_keras_object(self.backbone),
            embedding_dim=self.embedding_dim,
            normalize=self.normalize,
            synchronized_bn=self.head.synchronized_bn,
            preprocessing=self.preprocessing,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


class NonFiniteTrainingError(RuntimeError):
    """The metric step was skipped for a whole window: training cannot go on."""


# Attribute names of the HDMLParams fields that differ (keras.Model has ``loss``).
_ATTRIBUTES = {"loss": "loss_type"}


def _check(params, num_classes):
    if int(params.window) < 1:
        raise ValueError(f"window={params.window!r}: must be a positive number of steps")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes={num_classes!r}: need at least 2 classes")
    if params.weight_decay_scope not in WEIGHT_DECAY_SCOPES:
        raise ValueError(f"weight_decay_scope={params.weight_decay_scope!r}: expected one "
                         f"of {WEIGHT_DECAY_SCOPES}")


# --------------------------------------------------------------------------- HDML


@keras.saving.register_keras_serializable(package="hdml_tf")
class HDML(keras.Model):
    """Hardness-Aware Deep Metric Learning around an `Embedder`.

    One forward pass computes every term (``_forward``, a straight line through the
    parts in :mod:`hdml_tf.objectives`); ``train_step`` takes the three objectives'
    gradients before applying any, then applies each optimizer to its own variables:

      ====================  ==============  ==============================
      objective             optimizer       variables
      ====================  ==============  ==============================
      J_metric (``metric``)  metric          embedder (backbone F, head H)
      J_gen (``generator``)  generator       generator G
      J_cls (``classifier``) classifier      classifier C
      ====================  ==============  ==============================

    Non-finite values are handled per objective (``docs/method.md``): a non-finite
    J_syn falls back to J_metric = w J_m for that step; a non-finite J_gen or J_cls (or
    gradient) skips only that optimizer and restores the BatchNorm statistics its part
    moved; a non-finite J_m or metric gradient skips the metric step. Each kind is
    counted (``skipped_steps``); a metric step skipped for ``window`` steps in a row
    makes :meth:`check_progress` raise :class:`NonFiniteTrainingError`.

    Args:
      embedder: the `Embedder` (F and H); ``model.embedder`` is what gets exported.
      num_classes: number of training classes (the softmax classifier C).
      synchronized_bn: synchronise G's BatchNorm across replicas.
      **kwargs: the fields of `hdml_tf.params.HDMLParams` (``loss``, ``hdml``,
        ``alpha``, ``beta``, ...: the method's hyper-parameters, documented and
        defaulted there; ``HDML(embedder, num_classes, **dataclasses.asdict(params))``),
        and ``keras.Model``'s own (``name``, ``dtype``).
    """

    def __init__(self, embedder, num_classes, synchronized_bn=False, **kwargs):
        params = HDMLParams(**{k: kwargs.pop(k) for k in HDMLParams.names() if k in kwargs})
        kwargs.setdefault("name", "hdml")
        super().__init__(**kwargs)
        self.parts = objectives.variant(params.loss, l2_reg=params.l2_reg,
                                        margin=params.margin)
        _check(params, num_classes)
        for name, value in params.hdml_kwargs().items():
            setattr(self, _ATTRIBUTES.get(name, name), value)
        self.embedder = embedder
        self.num_classes = int(num_classes)
        self.synchronized_bn = bool(synchronized_bn)
        self.generator = Generator(embedder.feature_dim, self.generator_hidden,
                                   synchronized_bn=self.synchronized_bn, name="generator",
                                   dtype=self.dtype_policy)
        self.classifier = keras.layers.Dense(self.num_classes, name="classifier",
                                             dtype=self.dtype_policy)
        # Set by `compile`; one per objective, each over its own variables.
        self.metric_optimizer = self.generator_optimizer = self.classifier_optimizer = None
        self._add_statistics()
        names = ["j_m", "weight_decay"]
        if self.hdml:
            names += ["j_syn", "j_metric", "j_recon", "j_soft", "j_gen", "j_cls",
                      "lambda", "w", "hardened_fraction"]
        self._trackers = {n: keras.metrics.Mean(name=n) for n in names}

    @property
    def params(self):
        """The model's `HDMLParams` (``HDML(embedder, num_classes, **asdict(params))``
        builds the same model)."""
        return HDMLParams(**{name: getattr(self, _ATTRIBUTES.get(name, name))
                             for name in HDMLParams.names()})

    def _add_statistics(self):
        """Running statistics (spec step 11) and non-finite bookkeeping, as weights:
        saved and restored with the model."""

        def stat(name, value):
            return self.add_weight(shape=(), initializer=keras.initializers.Constant(value),
                                   trainable=False, aggregation="mean", dtype="float32",
                                   name=name)

        self.j_avg = stat("j_avg", self.j_avg_init)
        self.j_gen_avg = stat("j_gen_avg", self.j_gen_avg_init)
        self._j_m_sum = stat("j_m_window_sum", 0.0)
        self._j_m_count = stat("j_m_window_count", 0.0)
        self._j_gen_sum = stat("j_gen_window_sum", 0.0)
        self._j_gen_count = stat("j_gen_window_count", 0.0)
        # Steps with any skip or fallback, each kind, the current run of skipped
        # metric steps and the last finite J_m before it.
        self.nonfinite_steps = stat("nonfinite_steps", 0.0)
        self.skipped_steps = {name: stat(f"{name}_skipped_steps", 0.0)
                              for name in OBJECTIVES}
        self.syn_fallback_steps = stat("syn_fallback_steps", 0.0)
        self.metric_skip_run = stat("metric_skip_run", 0.0)
        self.last_finite = {name: stat(f"last_finite_{name}", float("nan"))
                            for name in ("j_m", "j_metric", "step")}
        self.steps_taken = stat("steps_taken", 0.0)
        self.last_hardened_fraction = stat("last_hardened_fraction", 0.0)

    # ----------------------------------------------------------------- building

    def build(self, input_shape):
        """Build F, H, G and C for image batches of ``input_shape`` (or a tuple of
        them, as in a training batch); once compiled, the optimizers too."""
        image_shape = input_shape
        while isinstance(image_shape, (list, tuple)) and image_shape and isinstance(
            image_shape[0], (list, tuple)
        ):
            image_shape = image_shape[0]
        image_shape = (None,) + tuple(image_shape[1:])
        if not self.embedder.built:
            self.embedder.build(image_shape)
        if not self.generator.built:
            self.generator.build((None, self.embedder.embedding_dim))
        if not self.classifier.built:
            self.classifier.build((None, self.embedder.feature_dim))
        self._image_shape = tuple(image_shape)
        self.built = True
        self.build_optimizers()

    @property
    def image_shape(self):
        """``(None, height, width, channels)`` of the images the model was built for
        (None before it is built)."""
        return getattr(self, "_image_shape", None)

    def build_optimizers(self):
        """Build each optimizer over its own variables, from the one map `objectives`.

        A no-op until the model is both built and compiled: `build` and `compile` both
        call it, so whichever comes second builds the optimizers, before any state is
        loaded into them (``load_model``, a checkpoint restore) and outside the train
        step's ``tf.cond``. Optimizers already built are left as they are.
        """
        if not self.built or not self.compiled:
            return
        for optimizer, variables, _ in self.objectives().values():
            if not optimizer.built:
                optimizer.build(variables)

    def build_from_data(self, data):
        """Build the model (and the optimizers, if compiled) from a batch or dataset.

        ``train_step`` and ``test_step`` call this, so ``fit``, ``evaluate`` and
        ``train_on_batch`` need no explicit build; call it (or `build`) before restoring
        a checkpoint into a fresh model.
        """
        if self.built:
            return
        if isinstance(data, tf.data.Dataset):
            shape = tf.nest.flatten(data.element_spec[0])[0].shape
        else:
            shape = tf.nest.flatten(data[0] if isinstance(data, (list, tuple)) else data)[0].shape
        self.build((None,) + tuple(shape[1:]))

    def compile(self, metric_optimizer=None, generator_optimizer=None,
                classifier_optimizer=None, **kwargs):
        """Three optimizers, each over its own variables only (`objectives`).

        As in the Keras guide's GAN: Keras is compiled without an optimizer (so neither
        ``fit`` nor loading builds one over every variable) and the three optimizers
        are attributes, built by `build_optimizers`.

        Args:
          metric_optimizer: J_metric over F and H (default Adam(7e-5), the authors').
          generator_optimizer: J_gen over G (default Adam(1e-2)).
          classifier_optimizer: J_cls over C (default Adam(1e-3)).
          **kwargs: passed to ``keras.Model.compile`` (e.g. ``jit_compile``,
            ``steps_per_execution``); ``loss``/``optimizer`` are not accepted.
        """
        for key in ("loss", "optimizer"):
            if key in kwargs:
                raise ValueError(f"HDML.compile() does not take {key!r}: the losses are "
                                 "fixed by the method; pass the three optimizers")
        given = {"metric": metric_optimizer, "generator": generator_optimizer,
                 "classifier": classifier_optimizer}
        for name, optimizer in given.items():
            setattr(self, f"{name}_optimizer", keras.optimizers.get(
                optimizer or keras.optimizers.Adam(DEFAULT_LEARNING_RATES[name])))
        super().compile(optimizer=None, **kwargs)
        self._compile_kwargs = {k: v for k, v in kwargs.items()
                                if k in ("jit_compile", "steps_per_execution", "run_eagerly")}
        self.build_optimizers()

    def get_compile_config(self):
        if not self.compiled:
            return {}
        config = {f"{name}_optimizer": keras.saving.serialize_keras_object(
            getattr(self, f"{name}_optimizer")) for name in OBJECTIVES}
        config.update(getattr(self, "_compile_kwargs", {}))
        return config

    def compile_from_config(self, config):
        config = dict(config)
        for name in OBJECTIVES:
            key = f"{name}_optimizer"
            config[key] = keras.saving.deserialize_keras_object(config[key])
        self.compile(**config)

    @property
    def metrics(self):
        # Listed here so Keras resets them at the start of every epoch.
        return list(self._trackers.values())

    # ------------------------------------------------------------------ forward

    def call(self, inputs, training=False):
        """Normalised embeddings of an image batch (or of a training tuple's images)."""
        if isinstance(inputs, (list, tuple)):
            inputs = tf.concat(list(inputs), axis=0)
        return self.embedder(inputs, training=training)

    def _unpack(self, data):
        # train_on_batch(x=batch) and fit on (x, y) datasets both arrive here: Keras
        # packs the former as (batch, None, None).
        if (isinstance(data, (list, tuple)) and len(data) >= 2 and data[1] is None
                and isinstance(data[0], (list, tuple)) and len(data[0]) == 2):
            data = data[0]
        expected = self.parts.groups
        images, labels = (data[0], data[1]) if (
            isinstance(data, (list, tuple)) and len(data) >= 2) else (None, None)
        if (not isinstance(images, (list, tuple)) or len(images) != expected
                or not isinstance(labels, (list, tuple)) or len(labels) != expected):
            layout = ("((anchors, positives), (anchor_labels, positive_labels))"
                      if expected == 2 else
                      "((anchors, positives, negatives), (anchor_labels, positive_labels,"
                      " negative_labels))")
            raise ValueError(f"loss={self.loss_type!r} expects batches laid out as "
                             f"{layout}; see hdml_tf.data.pipeline")
        labels = [tf.cast(tf.reshape(l, [-1]), tf.int32) for l in labels]
        return list(images), labels

    def decayed_variables(self):
        """The embedder variables weight decay applies to (``weight_decay_scope``)."""
        names = [(v, v.name.split("/")[-1].split(":")[0])
                 for v in self.embedder.trainable_variables]
        if self.weight_decay_scope == "kernels":
            return [v for v, name in names if name in _KERNEL_NAMES]
        # The authors' exclude_batch_norm: everything but the normalisation layers'
        # scale and offset (gamma, beta), biases included.
        return [v for v, name in names if name not in _NORM_NAMES]

    def _weight_decay(self):
        if not self.weight_decay:
            return tf.constant(0.0)
        return self.weight_decay * tf.add_n(
            [tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in self.decayed_variables()])

    def schedule(self):
        """(λ, w) the next step uses, from the running statistics."""
        return (synthesis.hardness_lambda(self.j_avg, self.alpha),
                synthesis.metric_weight(self.j_gen_avg, self.beta))

    def _forward(self, data, training):
        """One forward pass: every loss term, as this replica's contribution.

        Returns (contributions, extras): ``contributions[k]`` summed over replicas is
        the global value of term k; ``extras`` holds λ, w and (HDML on, training) the
        head's BatchNorm statistics as they were after the real pass.
        """
        images, labels = self._unpack(data)
        replicas = objectives.Replicas.current()
        # [embed] one backbone pass over every image of the tuple.
        y = self.embedder.features(tf.concat(images, axis=0), training=training)
        z = tf.cast(self.embedder.head(y, training=training), tf.float32)
        real = self.parts.real_tuple(tf.split(z, [tf.shape(x)[0] for x in images]),
                                     labels, replicas)
        # [J_m] the metric loss on the real tuple, with weight decay.
        out = {"weight_decay": replicas.share(self._weight_decay())}
        out["j_m"] = self.parts.metric_loss(real, replicas) + out["weight_decay"]
        if not self.hdml:
            out["j_metric"] = out["j_m"]
            return out, {}
        extras = {"features": y,
                  "head_statistics": [tf.identity(v) for v in
                                      self.embedder.head.non_trainable_variables]}
        lam, w = self.schedule()
        extras.update(lam=lam, w=w)
        # [synthesis] hardness-aware negatives in embedding space.
        synthetic = self.parts.synthesize(real, lam)
        out["hardened_fraction"] = replicas.share(synthetic.hardened)
        # [generator] one pass over real and synthetic rows (shared BN statistics).
        num_real = tf.shape(z)[0]
        y_gen = tf.cast(self.generator(tf.concat([z, synthetic.rows], axis=0),
                                       training=training), tf.float32)
        y_prime, y_tilde = y_gen[:num_real], y_gen[num_real:]
        # [J_syn] the synthetic tuple re-embedded by the SAME head.
        z_tilde = tf.cast(self.embedder.head(y_tilde, training=training), tf.float32)
        out["j_syn"] = self.parts.synthetic_loss(z_tilde, synthetic, replicas)
        out["j_metric"] = w * out["j_m"] + (1.0 - w) * out["j_syn"]
        # [J_gen] reconstruction (a sum) plus label preservation of the synthetic rows.
        out["j_recon"] = (1.0 - self.lambda_gen) * tf.reduce_sum(tf.square(y_prime - y))
        ce_soft = self.parts.label_ce(self.classifier(y_tilde), synthetic, replicas)
        out["j_soft"] = self.softmax_factor * self.lambda_gen * ce_soft
        out["j_gen"] = out["j_recon"] + out["j_soft"]
        # [J_cls] the classifier on real features.
        logits_real = tf.cast(self.classifier(y), tf.float32)
        out["j_cls"] = replicas.share(tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=tf.concat(labels, axis=0), logits=logits_real)))
        return out, extras

    # ------------------------------------------------------------ objectives

    def objectives(self):
        """name -> (optimizer, variables, loss term): the one map of spec step 10."""
        result = {"metric": (self.metric_optimizer, self.embedder.trainable_variables,
                             "j_metric")}
        if self.hdml:
            result["generator"] = (self.generator_optimizer,
                                   self.generator.trainable_variables, "j_gen")
            result["classifier"] = (self.classifier_optimizer,
                                    self.classifier.trainable_variables, "j_cls")
        return result

    def _moving_statistics(self):
        """name -> the BatchNorm statistics each objective's part moves in a step."""
        moving = {"metric": list(self.embedder.non_trainable_variables)}
        if self.hdml:
            moving["generator"] = list(self.generator.non_trainable_variables)
            moving["classifier"] = []
        return moving

    def _gradients(self, data):
        """(totals, extras, grads, syn_ok): every objective's gradient before any update.

        With HDML on, the metric gradient is assembled from parts so that a non-finite
        J_syn can be left out by value (a NaN never enters the backward pass of the
        backbone, and no synchronisation point sits inside a ``tf.cond``): the
        gradients of w·J_m and of (1 - w)·J_syn with respect to the features y and the
        head, the J_syn part zeroed when J_syn (summed over replicas) is non-finite,
        then one backward pass through the backbone, plus the weight decay's own
        gradient. A non-finite J_syn thus gives the gradient of J_metric = w·J_m.
        """
        replicas = objectives.Replicas.current()
        with tf.GradientTape(persistent=True) as tape:
            contrib, extras = self._forward(data, training=True)
            scaled = {name: _scale(opt, contrib[key])
                      for name, (opt, _, key) in self.objectives().items()}
            if self.hdml:
                w = extras["w"]
                metric = self.metric_optimizer
                via_y = {"j_m": _scale(metric, w * (contrib["j_m"] - contrib["weight_decay"])),
                         "j_syn": _scale(metric, (1.0 - w) * contrib["j_syn"])}
                decay = _scale(metric, w * contrib["weight_decay"])
        totals = {k: replicas.sum(v) for k, v in contrib.items()}
        grads = {}
        for name, (_, variables, _) in self.objectives().items():
            if name != "metric" or not self.hdml:
                grads[name] = _dense(tape.gradient(scaled[name], variables), variables)
        syn_ok = tf.constant(True)
        if self.hdml:
            syn_ok = tf.math.is_finite(totals["j_syn"])
            y, head = extras["features"], self.embedder.head.trainable_variables
            parts = {k: _dense(tape.gradient(loss, [y] + head), [y] + head)
                     for k, loss in via_y.items()}
            parts["j_syn"] = [tf.where(syn_ok, g, tf.zeros_like(g)) for g in parts["j_syn"]]
            d_y = parts["j_m"][0] + parts["j_syn"][0]
            backbone = self.embedder.backbone.trainable_variables
            total = {id(v): g for v, g in zip(backbone, _dense(
                tape.gradient(y, backbone, output_gradients=d_y), backbone))}
            for v, g_m, g_s in zip(head, parts["j_m"][1:], parts["j_syn"][1:]):
                total[id(v)] = g_m + g_s
            variables = self.embedder.trainable_variables
            grads["metric"] = [total[id(v)] + g for v, g in
                               zip(variables, _dense(tape.gradient(decay, variables),
                                                     variables))]
            totals["j_metric"] = tf.where(syn_ok, totals["j_metric"], w * totals["j_m"])
        del tape
        return totals, extras, grads, syn_ok

    def _finite_flags(self, totals, grads, syn_ok):
        """name -> a boolean, the same on every replica: may this optimizer step?"""
        replicas = objectives.Replicas.current()
        terms = {"metric": ["j_m"] + (["j_metric"] if self.hdml else []),
                 "generator": ["j_gen"], "classifier": ["j_cls"]}
        flags = {}
        for name, (opt, _, _) in self.objectives().items():
            checks = [tf.math.is_finite(totals[k]) for k in terms[name]]
            # A NaN input can give finite losses and NaN gradients (a fused Conv+ReLU
            # maps NaN to 0 forward, not backward). LossScaleOptimizers check their own
            # gradients: they must see an overflow to lower the loss scale.
            if not isinstance(opt, keras.optimizers.LossScaleOptimizer):
                local = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g))
                                       for g in grads[name]])
                bad = replicas.sum(1.0 - tf.cast(local, tf.float32))
                checks.append(tf.equal(bad, 0.0))
            flags[name] = tf.reduce_all(checks)
        return flags

    def _apply(self, flags, syn_ok, grads, saved, head_after_real):
        """Apply each optimizer whose flag is set; otherwise put its statistics back.

        With several replicas the optimizers' gradient all-reduce is a synchronisation
        point, which tf.distribute does not allow inside a replica-context ``tf.cond``;
        as Keras' LossScaleOptimizer does, the decisions are then taken in cross-replica
        context (``merge_call``) and the updates run per replica.
        """
        objectives_ = self.objectives()
        moving = self._moving_statistics()
        head_stats = list(self.embedder.head.non_trainable_variables)

        def apply(name, grads):
            optimizer, variables, _ = objectives_[name]
            optimizer.apply(grads, variables)

        def restore(variables, values):
            for variable, value in zip(variables, values):
                variable.assign(value)

        def decide(run_each, flags, syn_ok, grads, saved, head_after_real):
            for name in objectives_:
                tf.cond(flags[name],
                        lambda name=name: _true(run_each(apply, name, grads[name])),
                        lambda name=name: _true(run_each(restore, moving[name],
                                                         saved[name])))
            if self.hdml:
                # The synthetic pass also moved the head's BatchNorm statistics; a
                # non-finite synthetic tuple must not leave them non-finite.
                tf.cond(tf.logical_and(flags["metric"], tf.logical_not(syn_ok)),
                        lambda: _true(run_each(restore, head_stats, head_after_real)),
                        lambda: tf.constant(True))

        args = (flags, syn_ok, grads, saved, head_after_real)
        replicas = objectives.Replicas.current()
        if replicas.count == 1:
            decide(lambda fn, *a: fn(*a), *args)
            return

        def cross_replica(distribution, flags, syn_ok, *rest):
            # The flags are all-reduced, so every replica holds the same value.
            first = lambda v: distribution.experimental_local_results(v)[0]  # noqa: E731
            flags = {k: first(v) for k, v in flags.items()}

            def run_each(fn, *a):
                distribution.extended.call_for_each_replica(fn, args=a)

            decide(run_each, flags, first(syn_ok), *rest)

        replicas.ctx.merge_call(cross_replica, args=args)

    def _count(self, flags, syn_ok, totals):
        """Update the non-finite counters and the last finite values."""
        ok = [flags[name] for name in self.objectives()]
        any_bad = tf.logical_not(tf.logical_and(tf.reduce_all(ok), syn_ok))
        self.nonfinite_steps.assign_add(tf.cast(any_bad, tf.float32))
        for name, flag in flags.items():
            self.skipped_steps[name].assign_add(1.0 - tf.cast(flag, tf.float32))
        if self.hdml:
            self.syn_fallback_steps.assign_add(1.0 - tf.cast(syn_ok, tf.float32))
        metric_ok = flags["metric"]
        self.metric_skip_run.assign(tf.where(metric_ok, 0.0, self.metric_skip_run + 1.0))
        for key in ("j_m", "j_metric"):
            self.last_finite[key].assign(tf.where(metric_ok, totals[key],
                                                  self.last_finite[key]))
        self.last_finite["step"].assign(tf.where(metric_ok, self.steps_taken,
                                                 self.last_finite["step"]))
        self.steps_taken.assign_add(1.0)

    # ------------------------------------------------------------ running stats

    def _record(self, value, applied, sum_var, count_var, avg_var):
        """Add the value of an applied step to the window; at W values, publish the mean."""
        keep = tf.logical_and(applied, tf.math.is_finite(value))
        new_sum = sum_var + tf.where(keep, value, 0.0)
        new_count = count_var + tf.cast(keep, tf.float32)
        full = new_count >= float(self.window)
        avg_var.assign(tf.where(full, new_sum / tf.maximum(new_count, 1.0), avg_var))
        sum_var.assign(tf.where(full, 0.0, new_sum))
        count_var.assign(tf.where(full, 0.0, new_count))

    def _update_statistics(self, totals, extras, flags):
        """Spec step 11: only the steps whose update was applied are recorded."""
        if not self.hdml:
            return
        j_m = totals["j_m"] * extras["w"] if self.record_weighted_jm else totals["j_m"]
        self._record(j_m, flags["metric"], self._j_m_sum, self._j_m_count, self.j_avg)
        self._record(totals["j_gen"], flags["generator"], self._j_gen_sum,
                     self._j_gen_count, self.j_gen_avg)

    def _update_trackers(self, totals, extras):
        """Epoch means of the finite values (one bad step does not make them NaN)."""
        values = dict(totals)
        if self.hdml:
            values.update({"lambda": extras["lam"], "w": extras["w"]})
        for name, tracker in self._trackers.items():
            if name in values:
                value = tf.cast(values[name], tf.float32)
                finite = tf.math.is_finite(value)
                tracker.update_state(tf.where(finite, value, 0.0),
                                     sample_weight=tf.cast(finite, tf.float32))
        return self.logs()

    def logs(self):
        """What `train_step` returns, read from the model's state: the trackers'
        means, the running statistics and the non-finite counters."""
        logs = {name: t.result() for name, t in self._trackers.items()}
        logs["nonfinite_steps"] = tf.identity(self.nonfinite_steps)
        if self.hdml:
            logs.update(j_avg=tf.identity(self.j_avg), j_gen_avg=tf.identity(self.j_gen_avg))
            logs.update({f"{name}_skipped_steps": tf.identity(v)
                         for name, v in self.skipped_steps.items()})
            logs["syn_fallback_steps"] = tf.identity(self.syn_fallback_steps)
        return logs

    # -------------------------------------------------------------- train/test

    def train_step(self, data):
        self.build_from_data(data)  # fit on an unbuilt model: before any tf.cond
        # BatchNorm statistics move during the forward pass; keep their values so a
        # skipped objective can put back the ones its part moved.
        saved = {name: [tf.identity(v) for v in variables]
                 for name, variables in self._moving_statistics().items()}
        totals, extras, grads, syn_ok = self._gradients(data)
        flags = self._finite_flags(totals, grads, syn_ok)
        self._apply(flags, syn_ok, grads, saved, extras.get("head_statistics", []))
        self._count(flags, syn_ok, totals)
        if self.hdml:
            self.last_hardened_fraction.assign(totals["hardened_fraction"])
        self._update_statistics(totals, extras, flags)
        return self._update_trackers(totals, extras)

    def test_step(self, data):
        self.build_from_data(data)
        replicas = objectives.Replicas.current()
        contrib, extras = self._forward(data, training=False)
        totals = {k: replicas.sum(v) for k, v in contrib.items()}
        return self._update_trackers(totals, extras)

    # ---------------------------------------------------- inspection (public API)

    def _keep_statistics(self, fn):
        """Run ``fn`` in training mode and put every BatchNorm statistic back after."""
        variables = [v for v in self.variables if not v.trainable]
        saved = [tf.identity(v) for v in variables]
        try:
            return fn()
        finally:
            for variable, value in zip(variables, saved):
                variable.assign(value)

    def loss_terms(self, batch, training=True):
        """Every loss term of ``batch`` as Python floats, without taking a step.

        Computed as a training step would (batch statistics when ``training``, the
        current λ and w) but no weight, optimizer state, running statistic or
        BatchNorm statistic changes. Keys: ``j_m`` (J_m with weight decay),
        ``weight_decay``, and with HDML ``j_syn``, ``j_metric``, ``j_recon``,
        ``j_soft``, ``j_gen``, ``j_cls``, ``hardened_fraction``, ``lambda``, ``w``.
        """
        self.build_from_data(batch)

        def run():
            contrib, extras = self._forward(batch, training=training)
            values = {k: float(v) for k, v in contrib.items()}
            if self.hdml:
                values.update({"lambda": float(extras["lam"]), "w": float(extras["w"])})
            return values

        return self._keep_statistics(run)

    def objective_gradients(self, batch):
        """The three objectives' gradients at the current weights, without a step.

        Returns a dict ``{"metric" | "generator" | "classifier": [(gradient,
        variable), ...]}`` (unscaled; the J_syn fallback applies as in a step). No
        weight, optimizer state or statistic changes.
        """
        self.build_from_data(batch)

        def run():
            _, _, grads, _ = self._gradients(batch)
            return {name: list(zip(grads[name], variables))
                    for name, (_, variables, _) in self.objectives().items()}

        return self._keep_statistics(run)

    def check_progress(self):
        """Raise `NonFiniteTrainingError` once the metric step was skipped for a window.

        Called by ``hdml-tf train`` after each step (or group of steps); with
        ``fit``, add `NonFiniteGuard` to the callbacks.
        """
        run = int(self.metric_skip_run.numpy())
        if run < self.window:
            return
        last = {k: float(v.numpy()) for k, v in self.last_finite.items()}
        raise NonFiniteTrainingError(
            f"the metric step (J_m / J_metric or its gradient) was non-finite for {run} "
            f"steps in a row, up to step {int(self.steps_taken.numpy())}; last finite "
            f"values at step {last['step']:.0f}: J_m={last['j_m']:.6g}, "
            f"J_metric={last['j_metric']:.6g}")

    def statistics(self):
        """Current running statistics and counters as Python numbers (logs and tests)."""
        lam, w = self.schedule()
        stats = {
            "j_avg": float(self.j_avg.numpy()),
            "j_gen_avg": float(self.j_gen_avg.numpy()),
            "lambda": float(lam),
            "w": float(w),
            "nonfinite_steps": int(self.nonfinite_steps.numpy()),
            "syn_fallback_steps": int(self.syn_fallback_steps.numpy()),
            "hardened_fraction": float(self.last_hardened_fraction.numpy()),
        }
        stats.update({f"{k}_skipped_steps": int(v.numpy())
                      for k, v in self.skipped_steps.items()})
        # A LossScaleOptimizer skips a step on its own when its scaled gradients
        # overflow (lowering the scale); its iterations count only applied steps.
        for name, (optimizer, _, _) in self.objectives().items():
            if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
                applied = int(optimizer.iterations.numpy())
                ours = int(self.skipped_steps[name].numpy()) if name in self.skipped_steps else 0
                stats[f"{name}_loss_scale_skips"] = max(
                    int(self.steps_taken.numpy()) - ours - applied, 0)
        return stats

    def get_config(self):
        config = super().get_config()
        config.update(embedder=keras.saving.serialize_keras_object(self.embedder),
                      num_classes=self.num_classes, synchronized_bn=self.synchronized_bn,
                      **self.params.hdml_kwargs())
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["embedder"] = keras.saving.deserialize_keras_object(config["embedder"])
        return cls(**config)

    def get_build_config(self):
        shape = self.image_shape
        return {"input_shape": list(shape)} if shape is not None else {}

    def build_from_config(self, config):
        if config.get("input_shape"):
            self.build(tuple(config["input_shape"]))


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops ``fit`` with `NonFiniteTrainingError` when HDML's metric step stalls."""

    def on_train_batch_end(self, batch, logs=None):
        self.model.check_progress()


def _scale(optimizer, loss):
    return optimizer.scale_loss(loss) if hasattr(optimizer, "scale_loss") else loss


def _dense(grads, variables):
    """Zeros for variables a loss does not reach (tf.cond needs tensors)."""
    return [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
            for g, v in zip(grads, variables)]


def _true(_):
    return tf.constant(True)
